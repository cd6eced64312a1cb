"""Report a grading: the report object and the terminal table."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bevialm.grading.judge import CheckResult
from bevialm.grading.rubric import Rubric


@dataclass(frozen=True)
class GradeReport:
    submission: Path
    root: Path
    results: list[CheckResult]
    rubric: Rubric
    reference_uses: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0
    visible_only: bool = False
    sandboxed: bool = True
    import_attempts: list[str] = field(default_factory=list)
    """Imports of the reference (or the grader) that the student's code tried while it ran, and that failed."""
    notes: list[str] = field(default_factory=list)
    """Lines about the run itself (which protections applied): for the instructor, never in
    what a student sees (:func:`format_report` leaves them out unless asked)."""
    display_name: str = ""
    """The submission's name in the report's header (``--display-name``; default: its folder's
    name, never the path, which may be a grader's temporary folder)."""

    @property
    def name(self) -> str:
        return self.display_name or self.submission.resolve().name or str(self.submission)

    @property
    def scope(self) -> str:
        """Which total :attr:`max_score` is: of every check, or of the visible ones only."""
        return "visible checks only" if self.visible_only else "all checks"

    @property
    def score(self) -> float:
        return sum(r.score for r in self.results)

    @property
    def max_score(self) -> float:
        return sum(r.check.rule.points for r in self.results)


def _points(value: float) -> str:
    return f"{value:g}"


def format_rel(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "shape"  # a tensor missing, not an array, or of the wrong shape: no number to show
    return "nan" if math.isnan(value) else f"{value:.1e}"


WHEN_SHOWN = {
    "after_due_date": "shown after the due date",
    "after_published": "shown once grades are published",
    "hidden": "never shown to students",
}
"""What a student is told about the checks left out of their table, by visibility."""


def _not_shown(results: Iterable[CheckResult]) -> list[str]:
    """One line per visibility of the checks left out: "2 more checks are shown after the due
    date". A hidden check is never announced as shown later."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.check.rule.visibility] = counts.get(r.check.rule.visibility, 0) + 1
    return [
        f"{n} more {'check is' if n == 1 else 'checks are'} {WHEN_SHOWN[vis]}"
        for vis, n in sorted(counts.items(), key=lambda item: list(WHEN_SHOWN).index(item[0]))
    ]


def format_report(report: GradeReport, width: int = 140, *, visible_rows_only: bool = False, notes: bool = False) -> str:
    """The terminal table. ``visible_rows_only`` leaves out checks the rubric does not make
    ``visible`` (and their points), for output students see before grades are published;
    ``notes`` adds the instructor's notes on the run (never in what students see)."""
    shown = [r for r in report.results if not visible_rows_only or r.check.rule.visibility == "visible"]
    lines = [f"BeviaLLM grading of {report.name}" + ("" if report.sandboxed else " (in-process: no sandbox)")]
    if report.missing:
        lines.append(f"note: the package lacks {', '.join(report.missing)}")
    id_width = max([len(r.check.id) for r in shown] + [5])
    header = f"{'check':<{id_width}}  {'points':>7}  {'rel err':>7}  hint"
    lines += [header, "-" * min(width, len(header) + 40)]
    indent = " " * (id_width + 20)
    for r in shown:
        pts = f"{_points(r.score)}/{_points(r.check.rule.points)}"
        row = f"{r.check.id:<{id_width}}  {pts:>7}  {format_rel(r.worst_rel):>7}  {r.hint}"
        # Wrapped, never cut: the end of a hint ("[it uses linear, which fails ...]") matters most.
        lines += textwrap.wrap(row, max(width, len(indent) + 40), subsequent_indent=indent, break_on_hyphens=False)
    lines.append("-" * min(width, len(header) + 40))
    scope = " (visible checks only)" if report.visible_only or len(shown) < len(report.results) else ""
    passed = sum(r.passed for r in shown)
    score = sum(r.score for r in shown)
    total = sum(r.check.rule.points for r in shown)
    lines.append(
        f"score {_points(score)}/{_points(total)}{scope}: {passed} of {len(shown)} checks passed in {report.seconds:.1f} s"
    )
    lines += _not_shown(r for r in report.results if r not in shown)
    if report.reference_uses:
        lines.append("FLAGGED: this package uses the reference implementation instead of its own:")
        lines += [f"  {u}" for u in report.reference_uses]
    if report.import_attempts:
        lines.append("FLAGGED: while it ran, this package tried to import the reference implementation (the imports failed):")
        lines += [f"  {u}" for u in report.import_attempts[:20]]
    if notes:
        lines += report.notes
    return "\n".join(lines)
