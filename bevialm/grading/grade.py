"""Grade a student's package against the reference: plan the checks, run them, judge them, report.

The pieces: :mod:`~bevialm.grading.plan` (which checks); :mod:`~bevialm.grading.kinds`, one
table with a row per kind of check: the reference's answer, the task that runs the student's
code (in the :mod:`~bevialm.grading.sandbox`, through :mod:`~bevialm.grading.tasks`) and the
judge; :mod:`~bevialm.grading.judge` (a result from each outcome, hints that cross-reference
the results) and :mod:`~bevialm.grading.report` (the table). :func:`grade` is one loop over
the plan.

For every pair of the registry (see :mod:`bevialm.grading.cases` for the cases):

- ``forward``: the output matches the reference's;
- ``backward``: fed the student's *own* cache, ``dx`` and every gradient match the reference's;
- ``gradcheck``: the student's pair is consistent with itself under finite differences
  (:func:`bevialm.gradcheck.vjp_check`), which tells "your forward is right, your
  ``dW`` is not" apart from a wrong forward;
- ``purity``: inputs, params, cotangent and cache unchanged, repeated calls agree, grads
  with the keys, shapes and dtypes of the params, float32 stays float32, ``init`` right.

Then the whole model: the student's pairs composed into the student's model (or the
handed-out one, when the assignment leaves the model out) give the reference's loss and
gradients, and a few gradient steps lower the loss exactly as the reference's do. Beyond
the pairs (:mod:`bevialm.grading.training`): the model's own forward and backward, AdamW,
the learning-rate schedule and clipping. The rubric's assignment says which tasks are
graded; the others reach the child as given code.

Every comparison uses the tolerances of :class:`bevialm.gradcheck.Tolerances`
(``|yours - reference| <= atol + rtol |reference|``); the student's and the
reference's float64 results differ only by rounding, far inside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import bevialm
from bevialm.grading.canary import GradingFailure, run_canary
from bevialm.grading.compare import Comparison, compare, tensor_name
from bevialm.grading.judge import CheckResult, cross_reference, judge_outcome, pair_dependencies
from bevialm.grading.kinds import CHECK_KINDS, References
from bevialm.grading.plan import Check, GradeError, given_modules, plan_checks
from bevialm.grading.report import GradeReport, format_rel, format_report
from bevialm.grading.rubric import Rubric, default_rubric
from bevialm.grading.sandbox import InProcess, Limits, Sandbox, readable_by_others
from bevialm.grading.session import routed
from bevialm.grading.student import PACKAGE, find_package_root, missing_files, reference_imports
from bevialm.registry import PAIRS

DEFAULT_TOTAL_TIME = 600.0
"""Seconds one grading may take in all (``--total-time-limit``): ten times a whole grading of the
reference on a loaded machine, and less than ``grade-all``'s limit for one student (900 s), so a
stalled submission still gets a result for every check."""

__all__ = [
    "Check",
    "CheckResult",
    "Comparison",
    "GradeError",
    "GradeReport",
    "GradingFailure",
    "Options",
    "compare",
    "format_rel",
    "format_report",
    "grade",
    "pair_dependencies",
    "plan_checks",
    "tensor_name",
]


@dataclass(frozen=True)
class Options:
    rubric: Rubric = field(default_factory=default_rubric)
    seed: int | None = None
    visible_only: bool = False
    only: tuple[str, ...] = ()
    sandbox: bool = True
    jobs: int = 1
    time_limit: float | None = None
    total_time_limit: float = DEFAULT_TOTAL_TIME
    """Seconds for the whole grading (see :attr:`Limits.total_time`)."""
    package: str = PACKAGE
    as_root: bool | None = None
    """Run the checks with root's protections (a uid of their own); None: when the grader is root."""
    display_name: str | None = None
    """The submission's name in the report (default: its folder's name)."""


def grade(submission: Path, options: Options = Options(), progress: Callable[[CheckResult], None] | None = None) -> GradeReport:
    """Grade the package in ``submission``. Raises :class:`GradeError`,
    :class:`~bevialm.grading.student.SubmissionError` or
    :class:`~bevialm.grading.rubric.RubricError` only when grading cannot run."""
    start = time.monotonic()
    rubric = options.rubric
    settings = rubric.settings if options.seed is None else replace(rubric.settings, seed=options.seed)
    root = find_package_root(submission)
    checks = plan_checks(rubric, visible_only=options.visible_only, only=options.only)
    limits = Limits(
        options.time_limit if options.time_limit is not None else settings.time_limit,
        settings.memory_limit_mb,
        settings.output_limit_kb,
        options.total_time_limit,
    )

    # The reference runs first, before any student code, so nothing the student does can change it.
    references = References(settings)
    rows = [CHECK_KINDS[(c.subject, c.kind)] for c in checks]
    answers = [row.answer(references, c.subject) for c, row in zip(checks, rows, strict=True)]
    tasks = [row.task(c.id, c.subject, answer, settings) for c, row, answer in zip(checks, rows, answers, strict=True)]

    # Read the submission's source before any of it runs: a check could rewrite its own files
    # (to hide an import of the reference) before a later scan.
    reference_uses, missing = reference_imports(root), missing_files(root)
    given = given_modules(rubric.tasks)
    if options.sandbox:  # the environment first: a broken one stops here, with no scores at all
        run_canary(limits, settings, options.as_root)
    runner = Sandbox(root, options.package, given, limits, as_root=options.as_root, jobs=options.jobs) if options.sandbox else InProcess(root, options.package, given)
    results = []
    attempts: list[str] = []
    try:
        # Within this block the reference functions a student writes call the check's child.
        with routed({spec.module: spec.functions for spec in PAIRS}):
            for c, row, answer, outcome in zip(checks, rows, answers, runner.run(tasks), strict=True):
                result = judge_outcome(c, outcome, partial(row.judge, answer), partial(row.case_label, answer))
                results.append(result)
                attempts += [f"{c.id}: tried to import {name}" for name in outcome.blocked]
                if progress is not None:
                    progress(result)
    finally:
        runner.close()  # every process of every check is gone before anything is reported
    if options.sandbox and _same_failure_to_the_end(results):
        run_canary(limits, settings, options.as_root, again=True)
    return GradeReport(
        submission,
        root,
        cross_reference(results),
        rubric,
        reference_uses,
        missing,
        time.monotonic() - start,
        options.visible_only,
        options.sandbox,
        attempts,
        _protections(runner, rubric),
        options.display_name or "",
    )


def _same_failure_to_the_end(results: list[CheckResult]) -> bool:
    """Whether the last checks (two or more) all failed the same way without a wrong number:
    the mark of an environment that broke midway, or of a submission that breaks every
    check alike. The canary, run again, tells the two apart."""
    tail = [r for r in results[-2:] if not r.passed and r.reason != "mismatch"]
    return len(tail) == 2 and tail[0].cause == tail[1].cause


def _protections(runner: Sandbox | InProcess, rubric: Rubric) -> list[str]:
    """The instructor's notes on what isolation this run lacked (never shown to students)."""
    if isinstance(runner, InProcess):
        return []
    notes = []
    if not runner.network_closed:
        notes.append(
            "note: the checks could use the network (this system allows no network namespace here): "
            "student code could send out what it is given; grade as root, as on Gradescope, to close it"
        )
    if not runner.as_root:
        return notes + [
            "note: not running as root, so each check runs as you: time, memory, output and process "
            "limits apply, but a separate uid (which also keeps your files, the rubric and the grader "
            "out of the checks' reach) applies only when grading as root, as on Gradescope"
        ]
    exposed = [Path(bevialm.__file__).parent, *([Path(rubric.source)] if Path(rubric.source).is_file() else [])]
    return notes + [
        f"note: {path} is readable by every user, so the checks could read it: install as the autograder's setup.sh does"
        for path in exposed
        if readable_by_others(path)
    ]
