"""Grade a whole class: ``bevialm grade-all SUBMISSIONS --csv grades.csv``.

``SUBMISSIONS`` is a folder (or a zip of one) holding one entry per student, a
folder or a zip, as Gradescope's "Export Submissions" (``submission_123/``
folders) and learning-management systems (one zip per student) give them. The
entry's name is the student's name in the gradebook.

Each student is graded by its own ``bevialm grade`` process with a wall-time
limit, so a broken or hostile submission (a hang, a crash, a fork bomb, a
flood) costs its own row and nothing else, and every protection of
``bevialm grade`` applies unchanged. Students run in parallel over the cores.

Written: one ``results.json``-style file per student in the results folder
(with the fingerprint of what was graded, so a later run skips students whose
submission and rubric have not changed; ``--regrade`` grades everyone again),
and the CSV gradebook, rebuilt from those files on every run: student, score,
max, one column per graded task, flags.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import bevialm

MAX_ZIP_BYTES = 64 * 2**20
"""Largest total uncompressed size of a student's zip (a zip bomb is refused, not extracted)."""

MAX_ZIP_MEMBERS = 5000

DEFAULT_STUDENT_TIME = 900.0
"""Wall time for one student's whole grading (every check has its own, shorter limit inside)."""

IGNORED = frozenset({"__MACOSX", ".DS_Store"})

META = "bevialm_grade_all"
"""Key of the grade-all metadata (fingerprint, flags) in each student's results file."""

SANDBOX_WORDS = {
    "timed out": "timed out",
    "crashed": "crashed",
    "ended without a result": "exited early",
    "output flood": "output flood",
}
"""Beginnings of a failed check's hint that are worth a flag in the gradebook."""


class BatchError(Exception):
    """The batch cannot run (bad options or inputs); the message is one line."""


@dataclass(frozen=True)
class Student:
    name: str
    entry: Path
    """The student's folder or zip inside SUBMISSIONS."""


@dataclass(frozen=True)
class Row:
    student: str
    score: float
    max_score: float
    per_task: dict[str, float]
    flags: list[str]
    graded_now: bool = True


# --- finding the students ------------------------------------------------------------------


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in IGNORED


def find_students(folder: Path) -> list[Student]:
    """One student per folder or ``.zip`` in ``folder`` (other files, such as Gradescope's
    ``submission_metadata.yml``, are not students)."""
    students = []
    for entry in sorted(folder.iterdir()):
        if not _visible(entry):
            continue
        if entry.is_dir():
            students.append(Student(entry.name, entry))
        elif entry.is_file() and entry.suffix.lower() == ".zip":
            students.append(Student(entry.stem, entry))
    names = [s.name for s in students]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BatchError(f"{folder}: {twice[0]!r} is both a folder and a zip; keep one of them")
    return students


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``, refusing absolute paths, ``..``, and more than
    :data:`MAX_ZIP_BYTES` or :data:`MAX_ZIP_MEMBERS` (raises :class:`BatchError`)."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = z.infolist()
            if len(members) > MAX_ZIP_MEMBERS:
                raise BatchError(f"{archive.name} holds {len(members)} files (at most {MAX_ZIP_MEMBERS})")
            if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                raise BatchError(f"{archive.name} unpacks to more than {MAX_ZIP_BYTES // 2**20} MiB")
            for m in members:
                path = PurePosixPath(m.filename.replace("\\", "/"))
                if path.is_absolute() or ".." in path.parts:
                    raise BatchError(f"{archive.name} has a file outside its folder: {m.filename!r}")
            written = 0
            for m in members:
                target = dest.joinpath(*PurePosixPath(m.filename.replace("\\", "/")).parts)
                if m.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src, target.open("wb") as out:  # sizes in the header may lie
                    while chunk := src.read(2**20):
                        written += len(chunk)
                        if written > MAX_ZIP_BYTES:
                            raise BatchError(f"{archive.name} unpacks to more than {MAX_ZIP_BYTES // 2**20} MiB")
                        out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError) as exc:
        raise BatchError(f"{archive.name} is not a readable zip ({exc})") from None


def _single_folder(folder: Path) -> Path:
    """The one visible folder inside ``folder`` when that is all it holds (a zipped export)."""
    entries = [e for e in folder.iterdir() if _visible(e)]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


# --- fingerprints: what was graded --------------------------------------------------------------


def fingerprint(entry: Path, rubric_text: str) -> str:
    """A hash of the student's files (or zip), the rubric and the grader's version."""
    digest = hashlib.sha256(f"{bevialm.__version__}\0{rubric_text}\0".encode())
    files = [entry] if entry.is_file() else sorted(p for p in entry.rglob("*") if p.is_file())
    for path in files:
        digest.update(path.relative_to(entry).as_posix().encode() + b"\0" if path != entry else b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()


# --- grading one student ---------------------------------------------------------------------


STOP_GRACE = 10.0
"""Seconds a stopped ``bevialm grade`` gets to end its checks (and their processes) itself."""


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM first, so the grader can end its checks' processes (as root they run under a
    uid of their own, outside this process group), then SIGKILL whatever is left of the group."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.communicate(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process, signal.SIGKILL)
    process.communicate()


def _cannot_grade(message: str) -> dict[str, Any]:
    return {"score": 0, "output": message, "tests": [], META: {"flags": [f"not graded: {message}"]}}


def grade_one(
    student: Student, rubric: Path | None, time_limit: float, extra_args: Sequence[str] = ()
) -> dict[str, Any]:
    """Grade ``student`` in its own ``bevialm grade`` process; always returns a results dict."""
    with tempfile.TemporaryDirectory(prefix="bevialm-grade-all-") as work:
        folder = student.entry
        if student.entry.is_file():
            folder = Path(work) / "submission"
            folder.mkdir()
            try:
                safe_extract(student.entry, folder)
            except BatchError as exc:
                return _cannot_grade(str(exc))
        results = Path(work) / "results.json"
        command = [sys.executable, "-m", "bevialm.cli", "grade", str(folder), "--results", str(results), "--jobs", "1"]
        if rubric is not None:
            command += ["--rubric", str(rubric)]
        command += list(extra_args)
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        try:
            _, err = process.communicate(timeout=time_limit)
        except subprocess.TimeoutExpired:
            _stop(process)
            return _cannot_grade(f"grading took longer than {time_limit:g} s and was stopped")
        finally:
            _signal_group(process, signal.SIGKILL)  # nothing of this student's outlives its grading
        message = err.decode("utf-8", errors="replace").strip().splitlines()
        if process.returncode != 0 or not results.is_file():
            return _cannot_grade(message[-1][:500] if message else f"bevialm grade exited with code {process.returncode}")
        try:
            data: dict[str, Any] = json.loads(results.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return _cannot_grade(f"unreadable results ({exc})")
        data[META] = {"flags": flags(data)}
        return data


def flags(data: dict[str, Any]) -> list[str]:
    """What the instructor should look at in one student's results."""
    found: list[str] = []
    if "FLAGGED" in str(data.get("output", "")):
        found.append("uses the reference")
    extra = data.get("flags")
    if isinstance(extra, list):  # the grader's own flags: reference uses, import attempts
        found += [str(f)[:120] for f in extra[:3]] + ([f"... ({len(extra) - 3} more flags)"] if len(extra) > 3 else [])
    counts: dict[str, int] = {}
    for test in data.get("tests", []):
        hint = str(test.get("output", "")).split("\n", 1)[0]
        for words, flag in SANDBOX_WORDS.items():
            if test.get("status") == "failed" and hint.startswith(words):
                counts[flag] = counts.get(flag, 0) + 1
    found += [f"{n} check{'s' if n > 1 else ''} {flag}" for flag, n in counts.items()]
    return found


# --- the gradebook --------------------------------------------------------------------------


def row(student: str, data: dict[str, Any], max_score: float, graded_now: bool) -> Row:
    per_task: dict[str, float] = {}
    for test in data.get("tests", []):
        tags = test.get("tags") or ["?"]
        per_task[str(tags[0])] = per_task.get(str(tags[0]), 0.0) + float(test.get("score", 0.0))
    meta = data.get(META, {})
    found = list(meta.get("flags", [])) if isinstance(meta, dict) else []
    return Row(student, float(data.get("score", 0.0)), max_score, per_task, found, graded_now)


def write_csv(path: Path, rows: list[Row], tasks: list[str]) -> None:
    """The gradebook, written to a temporary file and moved into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".grades-", suffix=".csv", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["student", "score", "max", *tasks, "flags"])
        for r in rows:
            cells = [f"{r.per_task.get(t, 0.0):g}" for t in tasks]
            out.writerow([r.student, f"{r.score:g}", f"{r.max_score:g}", *cells, "; ".join(r.flags)])
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".student-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def _done(path: Path, print_: str) -> dict[str, Any] | None:
    """The stored results of a student graded before, when they are for the same fingerprint."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    meta = data.get(META) if isinstance(data, dict) else None
    return data if isinstance(meta, dict) and meta.get("fingerprint") == print_ else None


@dataclass(frozen=True)
class BatchOptions:
    csv: Path
    results_dir: Path
    rubric: Path | None = None
    rubric_text: str = ""
    tasks: tuple[str, ...] = ()
    """Gradebook columns (the graded tasks, in the registry's order)."""
    max_score: float = 0.0
    jobs: int = 1
    regrade: bool = False
    time_limit: float = DEFAULT_STUDENT_TIME
    extra_args: tuple[str, ...] = ()


def grade_all(
    submissions: Path, options: BatchOptions, progress: Callable[[int, int, Row], None] | None = None
) -> list[Row]:
    """Grade every student in ``submissions`` (see the module docstring); returns the rows."""
    if not submissions.exists():
        raise BatchError(f"{submissions} does not exist")
    with tempfile.TemporaryDirectory(prefix="bevialm-export-") as unpacked:
        if submissions.is_file():
            if submissions.suffix.lower() != ".zip":
                raise BatchError(f"{submissions} is neither a folder nor a .zip")
            safe_extract(submissions, Path(unpacked))
            folder = _single_folder(Path(unpacked))
        else:
            folder = submissions
        students = find_students(folder)
        if not students:
            raise BatchError(f"no submissions in {submissions}: expected one folder or .zip per student")
        options.results_dir.mkdir(parents=True, exist_ok=True)
        return _grade_students(students, options, progress)


def _grade_students(
    students: list[Student], options: BatchOptions, progress: Callable[[int, int, Row], None] | None
) -> list[Row]:
    rows: dict[str, Row] = {}
    todo: list[tuple[Student, str]] = []
    for s in students:
        print_ = fingerprint(s.entry, options.rubric_text)
        stored = None if options.regrade else _done(options.results_dir / f"{s.name}.json", print_)
        if stored is None:
            todo.append((s, print_))
        else:
            rows[s.name] = row(s.name, stored, options.max_score, graded_now=False)
    finished = len(rows)

    def run(item: tuple[Student, str]) -> Row:
        student, print_ = item
        data = grade_one(student, options.rubric, options.time_limit, options.extra_args)
        data.setdefault(META, {})["fingerprint"] = print_
        _write_json(options.results_dir / f"{student.name}.json", data)
        return row(student.name, data, options.max_score, graded_now=True)

    with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        for future in as_completed([pool.submit(run, item) for item in todo]):
            r = future.result()
            rows[r.student] = r
            finished += 1
            if progress is not None:
                progress(finished, len(students), r)
    ordered = [rows[s.name] for s in students]
    write_csv(options.csv, ordered, list(options.tasks))
    return ordered


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
