"""The canary: the reference's own solution of one small check, graded through the real sandbox.

Before a grading (and again when every remaining check of one fails for the same reason), the
grader runs the reference's ``linear`` forward in a sandbox of its own, with the grading's
limits and, as root, a uid of the same kind. It must get full marks. When it does not, no
submission could: the environment is broken (the check's uid cannot read NumPy, the child
cannot start), and grading stops with :class:`GradingFailure`, one line naming the cause and
the fix, instead of writing scores of 0 that look like grades. ``bevialm grade`` exits
with :data:`EXIT_GRADING_FAILED` then, and ``grade-all`` stops the whole run on it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bevialm.grading import folders
from bevialm.grading.kinds import CHECK_KINDS, PairAnswer, References
from bevialm.grading.plan import GradeError
from bevialm.grading.rubric import Settings
from bevialm.grading.sandbox import Limits, Outcome, Sandbox
from bevialm.grading.session import routed
from bevialm.registry import BY_NAME, PAIRS

EXIT_GRADING_FAILED = 3
"""``bevialm grade``'s exit code when the environment, not the submission, failed."""

PAIR = "linear"
"""The canary's pair: the smallest, with an ``import numpy.typing`` (through ``bevialm.types``)
like every pair's module."""

CHECK = CHECK_KINDS[(PAIR, "forward")]

FIX = "install where other users can read, as the autograder's setup.sh does (or grade as a user, not root)"


class GradingFailure(GradeError):
    """Grading cannot give trustworthy scores in this environment; the message is one line
    with the cause and the fix."""


def run_canary(limits: Limits, settings: Settings, as_root: bool | None, *, again: bool = False) -> None:
    """Grade the reference's own ``linear`` forward in a fresh sandbox; raise
    :class:`GradingFailure` unless it passes. ``again``: the canary of a grading that went
    wrong midway (the message says so)."""
    spec = BY_NAME[PAIR]
    answer = CHECK.answer(References(settings), PAIR)
    task = CHECK.task(f"{PAIR}.forward", PAIR, answer, settings)
    folder = Path(tempfile.mkdtemp(prefix="bevialm-canary-"))
    try:
        (folder / "__init__.py").write_text("")
        try:
            sandbox = Sandbox(folder, "bevialm_canary", (spec.module.__name__,), limits, as_root=as_root)
        except (OSError, RuntimeError) as exc:
            raise GradingFailure(_prefix(again) + f"the sandbox could not start ({exc})") from None
        try:
            with routed({s.module: s.functions for s in PAIRS}):
                outcome = next(iter(sandbox.run([task])))
        finally:
            uid = sandbox.users[0].uid if sandbox.users else None
            sandbox.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    cause = diagnose(outcome, answer, uid)
    if cause is not None:
        raise GradingFailure(_prefix(again) + cause)


def _prefix(again: bool) -> str:
    when = "midway: " if again else ""
    return f"grading cannot run ({when}the reference's own {PAIR}.forward fails in the sandbox): "


def diagnose(outcome: Outcome, answer: PairAnswer, uid: int | None) -> str | None:
    """None when the canary passed; otherwise its cause and fix, in words an instructor can act on."""
    who = f"the check user (uid {uid})" if uid is not None else "the checks"
    if outcome.status != "ok" or outcome.observation is None:
        return f"its child {outcome.status} ({outcome.detail or 'no detail'}); {outcome.output.strip()[:200]}".rstrip("; ")
    error = outcome.observation.error
    if error is not None:
        message = f"{error.type}: {error.message}"
        if error.type in ("ModuleNotFoundError", "ImportError") and "numpy" in error.message:
            where = folders.numpy_folders()[0]
            return f"{who} cannot read NumPy at {where} ({message}); {FIX}"
        return f"{message}{' at ' + error.where if error.where else ''} ({who} may lack access to Python or NumPy; {FIX})"
    verdict = CHECK.judge(answer, outcome.observation)
    return None if verdict.passed else f"wrong numbers: {verdict.hint}"


def main() -> int:
    """``python -m bevialm.grading.canary``: the canary with the built-in rubric's limits (the
    autograder's ``setup.sh`` runs it while it builds the image); 0 and one ``ok`` line, or
    :data:`EXIT_GRADING_FAILED` and the cause."""
    import sys

    settings = Settings()
    try:
        run_canary(Limits(settings.time_limit, settings.memory_limit_mb, settings.output_limit_kb), settings, None)
    except GradingFailure as exc:
        print(f"bevialm canary: error: {exc}", file=sys.stderr)
        return EXIT_GRADING_FAILED
    print("bevialm canary: ok (the reference's own solution gets full marks in the sandbox)")
    return 0


if __name__ == "__main__":  # pragma: no cover - run by setup.sh
    raise SystemExit(main())
