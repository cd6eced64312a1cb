"""Run each check's student code in a child process that cannot take the grader down.

Every task runs in its own child with:

- a wall-time limit (the grader kills the child's whole process group when it
  is over; a CPU-time limit backs it up inside the child);
- an address-space limit of ``memory_limit_mb`` beyond what the child starts
  with (``RLIMIT_AS``; allocating more raises ``MemoryError``), and no core dumps;
- its standard output and error sent to a file that may grow only a little past
  ``output_limit_kb`` (``RLIMIT_FSIZE``; more is a *flood* and fails the check);
- its own session, so anything it forks is killed with it;
- no way to the results file: the child is handed neither its path nor the
  command line (``sys.argv`` is replaced), and the grader writes the results
  only after every child has ended, replacing whatever is there.

An exception, ``sys.exit``, ``os._exit``, a crash (``SIGSEGV``), a hang or a
flood each ends as an :class:`Outcome` the grader turns into a failed check.

Children come from a ``forkserver``: a fresh interpreter that has imported
NumPy and the reference once and forks a clean child per check. Nothing of the
grader's own state is inherited (unlike ``fork``), and a check starts in
milliseconds rather than the ~0.3 s of a ``spawn``.

:func:`run_in_process` runs the same tasks without any of this, for
debugging one's own code (``bevialm grade --no-sandbox``) and for the tests.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bevialm.grading.tasks import Observation, ResultError, Submission, Task, decode, encode, run_task

RESULT_FILE = "result.npz"
OUTPUT_FILE = "output.txt"
MAX_RESULT_BYTES = 256 * 2**20
"""Hard cap on any file a child writes (its result included)."""

KILL_GRACE = 5.0
"""Seconds to wait for a killed child to be reaped."""


@dataclass(frozen=True)
class Limits:
    time_limit: float = 60.0
    memory_limit_mb: int = 1024
    output_limit_kb: int = 256

    @property
    def output_limit(self) -> int:
        return self.output_limit_kb * 1024


@dataclass(frozen=True)
class Outcome:
    """How one task ended.

    ``status`` is ``ok`` (an observation came back: the student's exceptions
    are inside it), ``timeout``, ``crashed`` (killed by a signal), ``exited``
    (ended without a result, e.g. ``os._exit``), ``flood`` (printed more than
    the limit) or ``unreadable`` (its result file was tampered with).
    """

    status: str
    observation: Observation | None = None
    output: str = ""
    output_bytes: int = 0
    detail: str = ""
    seconds: float = 0.0


def run_in_process(tasks: Sequence[Task], submission: Submission) -> list[Outcome]:
    """Run every task in this process: no limits, no isolation (only for trusted code)."""
    outcomes = []
    for task in tasks:
        start = time.monotonic()
        obs = decode(encode(run_task(task, submission)))  # the same round trip as the sandbox's
        outcomes.append(Outcome("ok", obs, seconds=time.monotonic() - start))
    return outcomes


# --- the child side ---------------------------------------------------------------------------


def _address_space() -> int | None:
    """This process's current virtual memory size in bytes (None where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return None


def enter_sandbox(workdir: Path, limits: Limits) -> None:  # pragma: no cover - runs only in the child
    """Confine the current process (a fresh child): session, limits, output capture.

    Coverage cannot see the children; tests/test_grading_sandbox.py checks every
    limit here through the outcomes it produces (timeout, MemoryError, flood, ...)."""
    import resource

    os.setsid()
    sys.argv = ["bevialm-grading-check"]
    sys.dont_write_bytecode = True  # leave no __pycache__ in the student's folder
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails instead of killing
    out = os.open(workdir / OUTPUT_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    for fd in (1, 2):
        os.dup2(out, fd)
    os.dup2(null, 0)
    os.close(out)
    os.close(null)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cpu = math.ceil(limits.time_limit) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_limit + 1, MAX_RESULT_BYTES))
    base = _address_space()
    if base is not None:
        cap = base + limits.memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def finish(workdir: Path, data: bytes) -> None:  # pragma: no cover - runs only in the child
    """Write the result (atomically) and leave at once: no atexit handlers, no waiting threads."""
    import resource

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the result may be larger than the output cap
    tmp = workdir / (RESULT_FILE + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, workdir / RESULT_FILE)
    os._exit(0)


def child_main(task: Task, submission: Submission, workdir: str, limits: Limits) -> None:  # pragma: no cover
    """The child's entry point (runs only in the sandbox, so coverage cannot see it;
    :func:`run_task` and :func:`enter_sandbox` hold its logic)."""
    try:
        enter_sandbox(Path(workdir), limits)
        obs = run_task(task, submission)
        data = encode(obs)
    except BaseException as exc:  # e.g. MemoryError while encoding, KeyboardInterrupt
        obs = Observation()
        obs.meta["error"] = {"type": type(exc).__name__, "message": str(exc)[:300], "where": ""}
        data = encode(obs)
    finish(Path(workdir), data)


# --- the grader side --------------------------------------------------------------------------

_CONTEXT: Any = None


def context() -> Any:
    """The forkserver context (started once per grader process, preloading the task code)."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - Windows
            raise RuntimeError("the sandbox needs a POSIX system; use --no-sandbox to grade without it")
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["bevialm.grading.tasks"])
        _CONTEXT = ctx
    return _CONTEXT


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class _Running:
    index: int
    process: Any
    workdir: Path
    started: float


def _read_output(workdir: Path) -> tuple[str, int]:
    path = workdir / OUTPUT_FILE
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(min(size, 4096))
    except OSError:
        return "", 0
    return head.decode("utf-8", errors="replace"), size


def _collect(run: _Running, limits: Limits, timed_out: bool) -> Outcome:
    seconds = time.monotonic() - run.started
    output, size = _read_output(run.workdir)
    code = run.process.exitcode
    result = run.workdir / RESULT_FILE
    if timed_out:
        return Outcome("timeout", None, output, size, f"no result within {limits.time_limit:g} s", seconds)
    if size > limits.output_limit:
        return Outcome("flood", None, output, size, f"printed more than {limits.output_limit_kb} KiB", seconds)
    if result.is_file():
        try:
            if result.stat().st_size > MAX_RESULT_BYTES:
                raise ResultError("result too large")
            return Outcome("ok", decode(result.read_bytes()), output, size, "", seconds)
        except (ResultError, OSError) as exc:
            return Outcome("unreadable", None, output, size, str(exc), seconds)
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        if name == "SIGXCPU":
            return Outcome("timeout", None, output, size, f"used more than {limits.time_limit:g} s of CPU", seconds)
        return Outcome("crashed", None, output, size, f"killed by signal {name}", seconds)
    return Outcome("exited", None, output, size, f"exited with code {code} before finishing", seconds)


def run_sandboxed(
    tasks: Sequence[Task], submission: Submission, limits: Limits, jobs: int = 1
) -> list[Outcome]:
    """Run every task in its own confined child, at most ``jobs`` at a time."""
    ctx = context()
    outcomes: list[Outcome | None] = [None] * len(tasks)
    pending = list(range(len(tasks)))
    running: list[_Running] = []
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                i = pending.pop(0)
                # A fresh, unpredictable folder per check (not base/check{i}): a child that made
                # or filled the next check's folder ahead of time would crash or fool the grader.
                workdir = Path(tempfile.mkdtemp(prefix=f"bevialm-check{i}-"))
                p = ctx.Process(target=child_main, args=(tasks[i], submission, str(workdir), limits), daemon=True)
                p.start()
                running.append(_Running(i, p, workdir, time.monotonic()))
            now = time.monotonic()
            wait = min(r.started + limits.time_limit - now for r in running)
            multiprocessing.connection.wait([r.process.sentinel for r in running], timeout=max(0.0, wait))
            for run in list(running):
                over = time.monotonic() > run.started + limits.time_limit
                if run.process.exitcode is None and not over:
                    continue
                if run.process.exitcode is None:
                    _kill_group(run.process.pid)
                    run.process.kill()
                run.process.join(KILL_GRACE)
                _kill_group(run.process.pid)  # anything it forked
                outcomes[run.index] = _collect(run, limits, timed_out=over and not (run.workdir / RESULT_FILE).is_file())
                run.process.close()
                running.remove(run)
                shutil.rmtree(run.workdir, ignore_errors=True)
    finally:
        for run in running:  # pragma: no cover - only when the grader itself is interrupted
            _kill_group(run.process.pid)
            run.process.kill()
            run.process.join(KILL_GRACE)
            shutil.rmtree(run.workdir, ignore_errors=True)
    return [o for o in outcomes if o is not None]
