"""Grade a whole class: ``bevialm grade-all SUBMISSIONS --csv grades.csv``.

``SUBMISSIONS`` is a folder (or a zip of one) holding one entry per student, a
folder or a zip, as Gradescope's "Export Submissions" (``submission_123/``
folders, named by its ``submission_metadata``: :mod:`bevialm.grading.batch_students`)
and learning-management systems (one zip per student) give them.

Each student is graded by its own ``bevialm grade`` process with a wall-time
limit, on a private copy of the plain files the scan accepted
(:mod:`bevialm.grading.batch_scan`: links are not followed, FIFOs and devices
are not opened, nothing is read whole), so a broken or hostile submission (a
hang, a crash, a fork bomb, a flood, a link to the solution, an 8 GB file)
costs its own row and nothing else, and every protection of ``bevialm grade``
applies unchanged. Students run in parallel over the cores.

Stopping: Ctrl-C or SIGTERM stops the queue at once and asks every running
``bevialm grade`` to end its checks (SIGTERM); a second Ctrl-C, or a grader
still running after the grace time, is killed with its whole process group.
Each grader's temporary folders live in grade-all's own working folder, which
is removed on the way out. Students graded before the stop keep their results;
the next run grades the rest.

A broken grading environment (``bevialm grade`` exits with
:data:`~bevialm.grading.canary.EXIT_GRADING_FAILED`: its canary, the reference's own solution, did not get
full marks) stops the whole run at once: its one line is printed, and no row
is written for the student it happened to, nor the gradebook rewritten.

Written: one ``results.json``-style file per student in the results folder
(with the fingerprint of what was graded, so a later run skips students whose
submission and rubric have not changed; ``--regrade`` grades everyone again),
and the CSV gradebook (:mod:`bevialm.grading.batch_csv`), rebuilt from those
files on every run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bevialm.grading.batch_csv import GRADED, NOT_RUN, TIMED_OUT, Row, check_writable, write_csv
from bevialm.grading.batch_scan import Scan, SubmissionRefused, fingerprint, safe_extract, scan, stage
from bevialm.grading.batch_students import ExportError, Student, find_students
from bevialm.grading.canary import EXIT_GRADING_FAILED

DEFAULT_STUDENT_TIME = 900.0
"""Wall time for one student's whole grading (every check has its own, shorter limit inside)."""

GRADE_COMMAND: tuple[str, ...] = (sys.executable, "-m", "bevialm.cli", "grade")
"""How one student is graded (the tests put a fake grader here)."""


STOP_GRACE = 10.0
"""Seconds a stopped ``bevialm grade`` gets to end its checks (and their processes) itself."""

KILL_GRACE = 2.0
"""The same after a second Ctrl-C or a SIGTERM: then its process group is killed."""

META = "bevialm_grade_all"
"""Key of the grade-all metadata (fingerprint, status, flags) in each student's results file."""

SANDBOX_WORDS = {
    "timed out": "timed out",
    "crashed": "crashed",
    "ended without a result": "exited early",
    "output flood": "output flood",
}
"""Beginnings of a failed check's hint that are worth a flag in the gradebook."""


class BatchError(Exception):
    """The batch cannot run (bad options or inputs); the message is one line."""


class EnvironmentBroken(Exception):
    """``bevialm grade`` found the grading environment broken; the message is its one line."""


class Stopped(Exception):
    """The run was stopped by a signal; ``code`` is the exit code (128 + the signal)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Signalled(BaseException):
    def __init__(self, signum: int) -> None:
        self.signum = signum


# --- the running graders ---------------------------------------------------------------------


class Runner:
    """Every running ``bevialm grade`` process, so that a stop reaches all of them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processes: set[subprocess.Popen[bytes]] = set()
        self.stopping = threading.Event()

    def start(self, command: Sequence[str], env: dict[str, str], stderr: Path) -> subprocess.Popen[bytes] | None:
        """Start a grader (its standard error into the file ``stderr``: a pipe that a leftover
        child holds open would keep us waiting after the grader itself has ended)."""
        with self.lock, stderr.open("wb") as err:  # no grader starts once a stop has begun
            if self.stopping.is_set():
                return None
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, env=env
            )
            self.processes.add(process)
            return process

    def finished(self, process: subprocess.Popen[bytes]) -> None:
        _signal_group(process, signal.SIGKILL)  # nothing of this student's outlives its grading
        with self.lock:
            self.processes.discard(process)

    def signal_all(self, sig: int) -> None:
        with self.lock:
            self.stopping.set()
            for process in self.processes:
                _signal_group(process, sig)


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
        process.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process, signal.SIGKILL)
    process.wait()


# --- grading one student ---------------------------------------------------------------------


def _cannot_grade(message: str, status: str = NOT_RUN, found: Sequence[str] = ()) -> dict[str, Any]:
    return {"score": 0, "output": message, "tests": [], META: {"status": status, "flags": [*found, f"not graded: {message}"]}}


def _scrubbed(value: Any, replacements: list[tuple[re.Pattern[str], str]]) -> Any:
    """``value`` (a results dict) with the grader's working paths replaced: students see
    their own name and package paths, never a temporary folder."""
    if isinstance(value, str):
        for pattern, text in replacements:
            value = pattern.sub(text, value)
        return value
    if isinstance(value, list):
        return [_scrubbed(v, replacements) for v in value]
    if isinstance(value, dict):
        return {k: _scrubbed(v, replacements) for k, v in value.items()}
    return value


def _paths(work: Path, display: str) -> list[tuple[re.Pattern[str], str]]:
    roots = sorted({str(work), os.path.realpath(work)}, key=len, reverse=True)
    found = []
    for root in roots:
        found += [
            (re.compile(re.escape(root) + r"/submission\b"), display.replace("\\", r"\\")),
            (re.compile(re.escape(root) + r"(?:/tmp/[^/\s'\"]+)?/?"), ""),
        ]
    return found


@dataclass(frozen=True)
class BatchOptions:
    csv: Path
    results_dir: Path
    rubric: Path | None = None
    salt: str = ""
    """What besides the files decides a grade (the rubric's text, the options): in the fingerprint."""
    tasks: tuple[str, ...] = ()
    """Gradebook columns (the graded tasks, in the registry's order)."""
    max_score: float = 0.0
    checks: str = "all"
    jobs: int = 1
    regrade: bool = False
    time_limit: float = DEFAULT_STUDENT_TIME
    extra_args: tuple[str, ...] = ()


def grade_one(student: Student, found: Scan, options: BatchOptions, runner: Runner) -> dict[str, Any] | None:
    """Grade ``student`` in its own ``bevialm grade`` process: its results dict, or None when
    the run was stopped meanwhile; raises :class:`EnvironmentBroken`."""
    if found.problem is not None:
        return _cannot_grade(found.problem, found=found.flags)
    with tempfile.TemporaryDirectory(prefix="bevialm-grade-all-") as name:
        work = Path(name)
        os.chmod(work, 0o711)  # the check users reach the grader's folders below by name only
        folder, tmp = work / "submission", work / "tmp"
        folder.mkdir(mode=0o700)  # another student's checks, knowing the name, still cannot read it
        tmp.mkdir(mode=0o711)
        os.chmod(tmp, 0o711)
        try:
            stage(student.entry, found, folder)
        except SubmissionRefused as exc:
            return _cannot_grade(str(exc), found=found.flags)
        data = _run_grader(student, folder, options, runner)
        if data is None:
            return None
        data = dict(_scrubbed(data, _paths(work, student.display)))
    meta = data.setdefault(META, {})
    meta["flags"] = [*found.flags, *meta.get("flags", [])]
    return data


def _run_grader(student: Student, folder: Path, options: BatchOptions, runner: Runner) -> dict[str, Any] | None:
    results = folder.parent / "results.json"
    command = [*GRADE_COMMAND, str(folder), "--results", str(results), "--jobs", "1"]
    command += [f"--display-name={student.display}"]  # "=": a name may start with "-"
    command += ["--rubric", str(options.rubric)] if options.rubric is not None else []
    command += list(options.extra_args)
    # The grader's own temporary folders go in grade-all's working folder: removed with it,
    # even when a grader has to be killed.
    stderr = folder.parent / "stderr.txt"
    process = runner.start(command, {**os.environ, "TMPDIR": str(folder.parent / "tmp")}, stderr)
    if process is None:
        return None
    try:
        process.wait(timeout=options.time_limit)
    except subprocess.TimeoutExpired:
        _stop(process)
        if not runner.stopping.is_set():
            return _cannot_grade(f"grading took longer than {options.time_limit:g} s and was stopped", TIMED_OUT)
    finally:
        runner.finished(process)
    if runner.stopping.is_set():
        return None
    lines = _tail(stderr).strip().splitlines()
    last = re.sub(r"^bevialm grade: (error: )?", "", lines[-1])[:500] if lines else ""
    if process.returncode == EXIT_GRADING_FAILED:
        runner.stopping.set()  # no other grader starts, nor writes a result, from now on
        raise EnvironmentBroken(last or "bevialm grade found the grading environment broken")
    if process.returncode != 0 or not results.is_file():
        return _cannot_grade(last or f"bevialm grade exited with code {process.returncode}")
    try:
        data: dict[str, Any] = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return _cannot_grade(f"unreadable results ({exc})")
    data[META] = {"status": GRADED, "flags": flags(data)}
    return data


def _tail(path: Path, size: int = 2**16) -> str:
    """The end of a file (a grader's last line says why it failed), never the whole file."""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode("utf-8", errors="replace")


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


# --- the gradebook ---------------------------------------------------------------------------


def row(student: Student, data: dict[str, Any], options: BatchOptions, graded_now: bool) -> Row:
    per_task: dict[str, float] = {}
    tests = data.get("tests", [])
    for test in tests:
        tags = test.get("tags") or ["?"]
        per_task[str(tags[0])] = per_task.get(str(tags[0]), 0.0) + float(test.get("score", 0.0))
    meta = data.get(META, {})
    meta = meta if isinstance(meta, dict) else {}
    status = str(meta.get("status", NOT_RUN))
    max_score = sum(float(t.get("max_score", 0.0)) for t in tests) if status == GRADED else options.max_score
    return Row(
        student.name, status, float(data.get("score", 0.0)), max_score, per_task, list(meta.get("flags", [])),
        graded_now, student.display if student.display != student.name else "", student.email, options.checks,
    )  # fmt: skip


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".student-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, allow_nan=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _done(path: Path, print_: str) -> dict[str, Any] | None:
    """The stored results of a student graded before, when they are for the same fingerprint."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    meta = data.get(META) if isinstance(data, dict) else None
    return data if isinstance(meta, dict) and meta.get("fingerprint") == print_ else None


def grade_all(submissions: Path, options: BatchOptions, progress: Callable[[int, int, Row], None] | None = None) -> list[Row]:
    """Grade every student in ``submissions`` (see the module docstring); returns the rows.
    Raises :class:`Stopped` on a signal and :class:`EnvironmentBroken` as described there."""
    if not submissions.exists():
        raise BatchError(f"{submissions} does not exist")
    check_writable(options.csv)  # found now, not after an hour of grading
    options.results_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bevialm-export-") as unpacked:
        folder = submissions
        if submissions.is_file():
            if submissions.suffix.lower() != ".zip":
                raise BatchError(f"{submissions} is neither a folder nor a .zip")
            try:
                safe_extract(submissions, Path(unpacked))
            except SubmissionRefused as exc:
                raise BatchError(str(exc)) from None
            entries = [e for e in Path(unpacked).iterdir() if not e.name.startswith((".", "__MACOSX"))]
            folder = entries[0] if len(entries) == 1 and entries[0].is_dir() else Path(unpacked)
        try:
            students = find_students(folder)
        except ExportError as exc:
            raise BatchError(str(exc)) from None
        if not students:
            raise BatchError(f"no submissions in {submissions}: expected one folder or .zip per student")
        return _grade_students(students, options, progress)


@contextmanager
def _signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`_Signalled` in the main thread while grading."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Signalled(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _halt(runner: Runner, futures: Sequence[Future[Row | None]], grace: float) -> None:
    """Stop the queue and every running grader: SIGTERM, ``grace`` seconds (less after one
    more signal), then SIGKILL; returns when every worker has finished."""
    for f in futures:
        f.cancel()
    runner.signal_all(signal.SIGTERM)
    try:
        wait(futures, timeout=grace)
    except _Signalled:
        pass  # a second Ctrl-C: no more waiting
    runner.signal_all(signal.SIGKILL)
    while True:
        try:
            wait(futures)
            return
        except _Signalled:
            runner.signal_all(signal.SIGKILL)


def _grade_students(students: list[Student], options: BatchOptions, progress: Callable[[int, int, Row], None] | None) -> list[Row]:
    rows: dict[str, Row] = {}
    runner = Runner()

    def run(student: Student, found: Scan, print_: str) -> Row | None:
        data = grade_one(student, found, options, runner)
        if data is None or runner.stopping.is_set():
            return None
        data[META]["fingerprint"] = print_
        _write_json(options.results_dir / f"{student.name}.json", data)
        return row(student, data, options, graded_now=True)

    pool = ThreadPoolExecutor(max_workers=max(1, options.jobs))
    futures: list[Future[Row | None]] = []
    scanned = False
    with _signals():
        try:
            todo = list(_to_grade(students, options, rows))  # first, so a stop keeps every unchanged row
            scanned = True
            futures += [pool.submit(run, *item) for item in todo]
            for future in as_completed(futures):
                r = future.result()
                if r is not None:
                    rows[r.student] = r
                    if progress is not None:
                        progress(len(rows), len(students), r)
        except _Signalled as exc:
            _halt(runner, futures, STOP_GRACE if exc.signum == signal.SIGINT else KILL_GRACE)
            message = "stopped before grading began; the gradebook is unchanged"
            if scanned:
                write_csv(options.csv, [rows[s.name] for s in students if s.name in rows], list(options.tasks))
                message = f"stopped: {len(rows)} of {len(students)} students are in the gradebook; run the same command again to grade the rest"
            raise Stopped(message, 128 + exc.signum) from None
        except EnvironmentBroken:
            _halt(runner, futures, STOP_GRACE)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    ordered = [rows[s.name] for s in students]
    write_csv(options.csv, ordered, list(options.tasks))
    return ordered


def _to_grade(students: list[Student], options: BatchOptions, rows: dict[str, Row]) -> Iterator[tuple[Student, Scan, str]]:
    """The students to grade now, with their scans and fingerprints; the others (graded before,
    unchanged since) go straight into ``rows``."""
    for s in students:
        found = scan(s.entry)
        print_ = fingerprint(s.entry, found, options.salt)
        stored = None if options.regrade else _done(options.results_dir / f"{s.name}.json", print_)
        if stored is None:
            yield s, found, print_
        else:
            rows[s.name] = row(s, stored, options, graded_now=False)


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
