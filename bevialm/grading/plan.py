"""Plan a grading: which checks run, from the rubric and the command line's choices.

A check is ``SUBJECT.KIND``: ``SUBJECT`` a pair of the registry or ``model``, ``KIND``
one of :data:`~bevialm.grading.rubric.KINDS`; its points and visibility come from the rubric.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from bevialm.grading.rubric import KIND_TITLES, MODEL_KINDS, PAIR_KINDS, Rubric, Rule
from bevialm.registry import PAIRS

MODEL = "model"

GIVEN_MODULES = ("bevialm.model",)
"""Reference modules the assignment hands out filled in (not graded, but the checks need them:
the model's glue composes the student's pairs). They reach the child as given code written into
its copy of the submission, from the reference's source, never by importing the reference."""


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
    return [*((spec.name, PAIR_KINDS) for spec in PAIRS), (MODEL, MODEL_KINDS)]


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
        and (not visible_only or c.rule.visibility == "visible")
        and (not only or any(_matches(c, p) for p in only))
    ]
