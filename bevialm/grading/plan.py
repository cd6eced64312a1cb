"""Plan a grading: which checks run, from the rubric and the command line's choices.

A check is ``SUBJECT.KIND``: ``SUBJECT`` a task of the registry (a pair, ``model``, ``adamw``,
``schedule``, ``clipping``), ``KIND`` one of its kinds (:data:`~bevialm.grading.rubric.TASK_KINDS`);
its points and visibility come from the rubric, and the rubric's assignment says which tasks
are graded.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from bevialm.grading.rubric import KIND_TITLES, TASK_KINDS, Rubric, Rule
from bevialm.grading.task_list import TASKS

MODEL = "model"


def given_modules(written: Collection[str]) -> tuple[str, ...]:
    """The reference modules an assignment hands out filled in: those that hold no task the
    students write (``bevialm.model`` when they write only pairs). The checks still need them
    (the model's glue composes the student's pairs); they reach the child as given code written
    into its copy of the submission, from the reference's source, never by importing the
    reference, so a student cannot change them."""
    holders: dict[str, bool] = {}
    for task in TASKS:
        name = task.module.__name__
        holders[name] = holders.get(name, False) or task.name in written
    return tuple(name for name, writes in holders.items() if not writes)


class GradeError(Exception):
    """Grading cannot run (bad options); the message is one line."""


@dataclass(frozen=True)
class Check:
    id: str
    subject: str
    kind: str
    number: str
    rule: Rule

    @property
    def title(self) -> str:
        return f"{self.id}: {KIND_TITLES[self.kind]}"


def subjects() -> list[tuple[str, tuple[str, ...]]]:
    return list(TASK_KINDS.items())


def all_checks(rubric: Rubric) -> list[Check]:
    return [
        Check(f"{subject}.{kind}", subject, kind, f"{i + 1}.{j + 1}", rubric.rule(f"{subject}.{kind}"))
        for i, (subject, kinds) in enumerate(subjects())
        for j, kind in enumerate(kinds)
    ]


def _matches(check: Check, pattern: str) -> bool:
    return pattern in (check.id, check.subject, check.kind) or fnmatch.fnmatchcase(check.id, pattern)


def plan_checks(rubric: Rubric, *, visible_only: bool = False, only: Sequence[str] = ()) -> list[Check]:
    """The checks to run: enabled in the rubric, visible if asked, and matching ``only``
    (check ids, pair names, kinds or glob patterns such as ``*.backward``)."""
    checks = all_checks(rubric)
    rubric.validate_checks({c.id for c in checks})
    for pattern in only:
        if not any(_matches(c, pattern) for c in checks):
            raise GradeError(f"--only {pattern!r} matches no check (try a pair name such as 'linear', or a kind such as 'backward')")
    return [
        c
        for c in checks
        if c.rule.enabled
        and rubric.graded(c.subject, c.kind)
        and (not visible_only or c.rule.visibility == "visible")
        and (not only or any(_matches(c, p) for p in only))
    ]
