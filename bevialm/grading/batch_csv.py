"""grade-all's gradebook: one row per student, safe to open in a spreadsheet, written so that
a failure is found before grading starts and leaves nothing behind."""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

GRADED, TIMED_OUT, NOT_RUN = "graded", "timed out", "could not run"
"""A row's status. Only a graded row has a score: the others leave it empty, never 0."""

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A cell starting with one of these is a formula to a spreadsheet (OWASP's CSV injection list)."""


@dataclass(frozen=True)
class Row:
    student: str
    """The submission's folder or zip name in the export (unique)."""
    status: str
    score: float
    max_score: float
    per_task: dict[str, float]
    flags: list[str]
    graded_now: bool = True
    name: str = ""
    email: str = ""
    checks: str = "all"
    """Which checks ``max`` counts: all, or the visible ones only (``--visible-only``)."""


def cell(value: str) -> str:
    """``value`` as a spreadsheet shows it, never runs it: a leading ``'`` before a formula start."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def header(tasks: list[str]) -> list[str]:
    return ["student", "name", "email", "status", "score", "max", "checks", *tasks, "flags"]


def cells(r: Row, tasks: list[str]) -> list[str]:
    graded = r.status == GRADED
    per_task = [f"{r.per_task.get(t, 0.0):g}" if graded else "" for t in tasks]
    score = f"{r.score:g}" if graded else ""
    values = [r.student, r.name, r.email, r.status, score, f"{r.max_score:g}", r.checks, *per_task, "; ".join(r.flags)]
    return [cell(v) for v in values]


def check_writable(path: Path) -> None:
    """Raise OSError (one clear line) now, before any grading, if the gradebook could not be
    written at ``path``: a folder there, a parent that is not a folder, no write permission."""
    if path.is_dir():
        raise IsADirectoryError(f"the gradebook {path} is a folder: give a file name")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"cannot write the gradebook {path}: {parent} is not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".grades-", suffix=".probe", dir=parent)
    except OSError as exc:
        raise OSError(f"cannot write the gradebook {path}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def write_csv(path: Path, rows: list[Row], tasks: list[str]) -> None:
    """The gradebook, written to a temporary file beside ``path`` and moved into place; on
    any failure the temporary file is removed and ``path`` is left as it was."""
    fd, tmp = tempfile.mkstemp(prefix=".grades-", suffix=".csv", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            out = csv.writer(f)
            out.writerow(header(tasks))
            out.writerows(cells(r, tasks) for r in rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
