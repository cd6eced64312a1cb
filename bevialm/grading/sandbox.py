"""Where each check's student code runs: a fresh, confined interpreter that cannot reach the grader.

The grader starts a *zygote* once per grading, ``python -I -S -c <bevialm/grading/child.py>``,
that never imports ``bevialm`` and never runs student code: it imports NumPy and forks one
child per check (a fork takes milliseconds, a fresh interpreter a few tenths of a second).
The import path holds exactly: a private copy of the
submission (imported as ``bevialm_submission``), the given code (copied from the
reference's source at grade time: the shared infrastructure ``bevialm.types``,
``bevialm.validate``, ``bevialm.params``, ``bevialm.gradcheck``, and the modules
the assignment hands out filled in, such as the model's glue), NumPy, and the
standard library. Any other ``bevialm`` import fails there and is reported.

Every child has:

- a wall-time limit (the grader stops waiting and kills it), backed by a CPU-time limit;
- an address-space limit of ``memory_limit_mb`` beyond what it starts with, and no core dumps;
- its standard output and error in a file that may grow only a little past
  ``output_limit_kb`` (more is a *flood* and fails the check); the file is the
  grader's, the child only holds a descriptor to it;
- its own session (a signal to its group never reaches the grader's), and a process limit;
- nothing to write results to: it answers over a pipe, and the grader computes every verdict;
- a network namespace of its own with no interface up (as root; otherwise where the kernel
  allows a user namespace, and the grader's report notes when it does not);
- a share of the grading's overall time limit (``Limits.total_time``).

The uids are chosen in :mod:`~bevialm.grading.uids`, the zygote is in
:mod:`~bevialm.grading.zygote`, and the folders the child reads (with a readable copy of
NumPy when the grader's is private) in :mod:`~bevialm.grading.folders`.

As **root** (Gradescope, CI), each child also drops to a uid of its own that nothing
else on the machine uses (:func:`check_users`), with no groups and no way back
(``PR_SET_NO_NEW_PRIVS``), in an empty folder only it can write; the copy of the
submission it reads is root's. After each check every process of that uid is
killed (:func:`sweep`) before the next check starts and before any result is
written. Files the grader keeps (rubric, reference) are protected only by their
permissions: the bundle's ``setup.sh`` makes them unreadable to other users.

**Not root** (a student's laptop), the child runs as the student: the limits still
apply, but it can read what the student can and signal the grader. Orphans it
leaves are adopted by the grader (``PR_SET_CHILD_SUBREAPER``) and killed.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bevialm.grading import child
from bevialm.grading.folders import INFRASTRUCTURE_GIVEN, prepare, readable_by_others
from bevialm.grading.observation import Observation
from bevialm.grading.session import LocalSession, SandboxFailure, Session
from bevialm.grading.tasks import Task, run_task
from bevialm.grading.uids import KILL_ROUNDS, CheckUser, check_users, remove_files, sweep, user_tasks
from bevialm.grading.zygote import Zygote, adopted, can_isolate, reap, subreaper, uptime

__all__ = ["InProcess", "Limits", "Outcome", "Sandbox", "ending", "readable_by_others"]

PROCESSES = 64
"""Processes and threads a check's uid may have at once (RLIMIT_NPROC): a fork bomb stops there."""

KILL_GRACE = 5.0
"""Seconds a killed child may take to end."""


@dataclass(frozen=True)
class Limits:
    time_limit: float = 60.0
    memory_limit_mb: int = 1024
    output_limit_kb: int = 256
    total_time: float = math.inf
    """Seconds for the whole grading: checks still running then are stopped, and those not yet
    started are not run, each reported as timed out (so a submission that stalls every check
    ends in bounded time, with a result for every check)."""

    @property
    def output_limit(self) -> int:
        return self.output_limit_kb * 1024


@dataclass(frozen=True)
class Outcome:
    """How one check's run ended.

    ``status`` is ``ok`` (an observation came back: the student's exceptions are
    inside it), ``timeout``, ``crashed`` (killed by a signal), ``exited`` (ended
    without answering, e.g. ``os._exit``), ``flood`` (printed more than the limit)
    or ``unreadable`` (it answered something that is not an answer).
    """

    status: str
    observation: Observation | None = None
    output: str = ""
    output_bytes: int = 0
    detail: str = ""
    seconds: float = 0.0
    blocked: tuple[str, ...] = ()
    """``bevialm`` modules the student's code tried to import (and could not)."""


# --- running checks -----------------------------------------------------------------------



@dataclass
class _Child:
    pid: int
    session: Session
    output: Path
    workdir: Path
    started: float
    since_boot: float


class Sandbox:
    """One grading run's folders, zygote and children (see the module docstring)."""

    def __init__(self, root: Path, package: str, given: Sequence[str], limits: Limits, *, as_root: bool | None = None, jobs: int = 1) -> None:
        self.limits = limits
        self.package = package
        self.as_root = os.geteuid() == 0 if as_root is None else as_root
        self.jobs = max(1, jobs)
        self.network_closed = can_isolate()
        """Whether each check runs in a network namespace of its own (see ``child.isolate``)."""
        self.users = check_users(self.jobs) if self.as_root else []
        self.free_users = list(self.users)
        self.lock = threading.Lock()
        self.counter = itertools.count()
        self.started = uptime()
        self.deadline = time.monotonic() + limits.total_time
        self.private = Path(tempfile.mkdtemp(prefix="bevialm-grader-"))  # 0700: outputs
        self.shared = Path(tempfile.mkdtemp(prefix="bevialm-check-", dir=_reachable_temp(self.as_root)))
        self.copy = prepare(root, package, given, self.shared)
        os.chmod(self.shared, 0o755)
        self.settings: dict[str, Any] = {
            "package": package,
            "root": str(self.copy),
            "path": [str(self.shared / "pkg"), str(self.shared / "lib")],
            "given_dir": str(self.shared / "given" / "bevialm"),
            "given": list(INFRASTRUCTURE_GIVEN),
            "folders": [str(self.shared), str(self.private)],  # the zygote removes them if the grader dies
            "limits": {
                "time": limits.time_limit,
                "memory": limits.memory_limit_mb * 2**20,
                "output": limits.output_limit,
                "processes": PROCESSES if self.as_root else user_tasks() + PROCESSES,
            },
        }
        self.source = Path(child.__file__).read_text(encoding="utf-8")
        self.was_subreaper = subreaper(True)  # orphans of the checks come to the grader, to be killed and reaped
        self.zygote = Zygote(self.source, self.settings, self.private / "zygote.txt")

    def close(self) -> None:
        self.zygote.close()
        for user in self.users:
            sweep(user)
            remove_files(user)
            os.close(user.lock)
        reap(self.started)
        subreaper(self.was_subreaper)
        shutil.rmtree(self.private, ignore_errors=True)
        shutil.rmtree(self.shared, ignore_errors=True)

    def _fork(self, fds: Sequence[int], user: CheckUser | None) -> int:
        """A child from the zygote; a new zygote if the old one is gone (a check as the same uid
        can kill it when the grader is not root)."""
        try:
            return self.zygote.fork(fds, user)
        except (OSError, ValueError, KeyError):
            with self.lock:
                self.zygote.close()
                self.zygote = Zygote(self.source, self.settings, self.private / "zygote.txt")
            return self.zygote.fork(fds, user)

    def _start(self, user: CheckUser | None) -> _Child:
        """A child forked for the check, told to confine itself and begin."""
        with self.lock:
            index = next(self.counter)
        workdir = self.shared / f"work-{index}"
        workdir.mkdir(mode=0o700)
        if user is not None:
            os.chown(workdir, user.uid, user.gid)
        output = self.private / f"output-{index}.txt"
        out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
        since_boot = uptime()
        try:
            pid = self._fork((requests_r, answers_w, out), user)
        finally:
            for fd in (requests_r, answers_w, out):
                os.close(fd)
        started = time.monotonic()
        session = Session(requests_w, answers_r, min(started + self.limits.time_limit, self.deadline), self.copy)
        start = {"workdir": str(workdir), "uid": user.uid if user else None, "gid": user.gid if user else None}
        with contextlib.suppress(OSError, TimeoutError):
            child.send(session.requests, start, [], session.deadline)
        return _Child(pid, session, output, workdir, started, since_boot)

    def _end(self, run: _Child, user: Any, status: str) -> tuple[str, str, str, int]:
        """Stop everything the check started; (status, detail, output, output size)."""
        run.session.close()
        code = self.zygote.wait(run.pid, 1.0) if status == "ended" else None  # how it ended by itself
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(run.pid, signal.SIGKILL)
        killed = self.zygote.wait(run.pid, KILL_GRACE)
        code = killed if code is None else code
        if user is not None:
            sweep(user)
            remove_files(user)
        else:
            for _ in range(KILL_ROUNDS):
                left = [pid for pid in adopted(run.since_boot, zombies=False) if pid != self.zygote.process.pid]
                if not left:
                    break
                for pid in left:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
        reap(run.since_boot)
        output, size = _read_output(run.output)
        output = self.without_paths(output)
        run.output.unlink(missing_ok=True)
        shutil.rmtree(run.workdir, ignore_errors=True)
        status, detail = ending(status, -signal.SIGKILL if code is None else code, size, self.limits)
        if status == "timeout" and run.session.deadline >= self.deadline:
            detail = f"stopped: the grading's time limit ({self.limits.total_time:g} s) ran out"
        return status, detail, output, size

    def without_paths(self, text: str) -> str:
        """``text`` (what a check printed or raised) without the grader's folders: a student's
        files by their place in the package, the rest as ``<grader>``."""
        return text.replace(f"{self.copy}/", "").replace(str(self.shared), "<grader>").replace(str(self.private), "<grader>")

    def run_one(self, task: Task) -> Outcome:
        if time.monotonic() >= self.deadline:
            return Outcome("timeout", detail=f"not run: the grading's time limit ({self.limits.total_time:g} s) ran out first")
        with self.lock:
            user = self.free_users.pop() if self.users else None
        try:
            run = self._start(user)
            status, detail, observation = "ok", "", None
            try:
                observation = run_task(task, run.session)
            except SandboxFailure as failure:
                status, detail = failure.status, failure.detail
            status, end_detail, output, size = self._end(run, user, status)
            detail = detail or end_detail
            blocked = tuple(run.session.blocked)
            seconds = time.monotonic() - run.started
        finally:
            if user is not None:
                with self.lock:
                    self.free_users.append(user)
        if observation is not None and observation.error is not None:
            error = observation.error
            observation.error = replace(error, message=self.without_paths(error.message), where=self.without_paths(error.where))
        return Outcome(status, observation if status == "ok" else None, output, size, detail, seconds, blocked)

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        """Run every task in its own child, at most ``jobs`` at a time; outcomes in task order."""
        if self.jobs == 1:
            yield from (self.run_one(t) for t in tasks)
            return
        with ThreadPoolExecutor(self.jobs) as pool:
            yield from pool.map(self.run_one, tasks)


def _reachable_temp(as_root: bool) -> str:
    """Where the checks' shared folder goes: the temporary folder, unless the check's uid could
    not enter it (TMPDIR in a private folder, such as pytest's), then a system one it can."""
    default = tempfile.gettempdir()
    if not as_root or readable_by_others(Path(default)):
        return default
    return next((d for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(d) and readable_by_others(Path(d))), default)


def ending(status: str, code: int, output_size: int, limits: Limits) -> tuple[str, str]:
    """(status, detail) of a check whose child was stopped: ``status`` is how the conversation
    ended (ok, timeout, ended, unreadable), ``code`` the child's exit code."""
    if status == "timeout":
        return status, f"no result within {limits.time_limit:g} s"
    if output_size > limits.output_limit:
        return "flood", f"printed more than {limits.output_limit_kb} KiB"
    if status == "ended" and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        if name == "SIGXCPU":
            return "timeout", f"used more than {limits.time_limit:g} s of CPU"
        return "crashed", f"killed by signal {name}"
    if status == "ended":
        return "exited", f"exited with code {code} before finishing"
    return status, ""



def _read_output(path: Path) -> tuple[str, int]:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(min(size, 4096))
    except OSError:
        return "", 0
    return head.decode("utf-8", errors="replace"), size


class InProcess:
    """Every task in this process, on a copy of the submission imported under ``package``:
    no limits, no isolation (``--no-sandbox``: for one's own code, and for the tests)."""

    def __init__(self, root: Path, package: str, given: Sequence[str]) -> None:
        from bevialm.grading.student import import_package

        self.package = package
        self.folder = Path(tempfile.mkdtemp(prefix="bevialm-inprocess-"))
        self.copy = prepare(root, package, given, self.folder)
        import_package(self.copy, package)

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        for task in tasks:
            start = time.monotonic()
            obs = run_task(task, LocalSession(self.package, self.copy))
            yield Outcome("ok", obs, seconds=time.monotonic() - start)

    def close(self) -> None:
        from bevialm.grading.student import forget_package

        forget_package(self.package)
        shutil.rmtree(self.folder, ignore_errors=True)
