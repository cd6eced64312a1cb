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
- nothing to write results to: it answers over a pipe, and the grader computes every verdict.

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
import fcntl
import grp
import itertools
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bevialm.grading import child
from bevialm.grading.session import LocalSession, SandboxFailure, Session
from bevialm.grading.tasks import Observation, Task, run_task

CHECK_USER = "bevialm-check"
"""The user the autograder's ``setup.sh`` creates for the checks (used when present and idle)."""

SPARE_UIDS = (*range(900_100, 900_164), *range(50_100, 50_164))
"""Where a free uid is looked for otherwise: numbers in no passwd or group entry."""

LOCKS = Path("/run/bevialm-grading")
"""Root's folder of uid locks (so graders running at once never share a uid)."""

PROCESSES = 64
"""Processes and threads a check's uid may have at once (RLIMIT_NPROC): a fork bomb stops there."""

CHILD_ENVIRONMENT = {"PATH": "/usr/bin:/bin", **{f"{lib}_NUM_THREADS": "1" for lib in ("OPENBLAS", "OMP", "MKL")}}
"""The child's whole environment: nothing of the grader's, and single-threaded BLAS (the checks'
matrices are tiny, and a BLAS thread per core would use up the process limit on a big machine)."""

KILL_ROUNDS = 50

KILL_GRACE = 5.0
"""Seconds a killed child may take to end."""

INFRASTRUCTURE_GIVEN = ("bevialm.types", "bevialm.validate", "bevialm.params", "bevialm.gradcheck")
"""Reference modules a submission may import (``from bevialm.types import Array``): in the
child they are copies of the reference's source, in the given code's ``bevialm``."""


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


# --- the uid of the checks (root only) -----------------------------------------------------


@dataclass
class CheckUser:
    uid: int
    gid: int
    lock: int
    """The open lock file that reserves this uid for this grader while it runs."""


_STATUS = re.compile(rb"State:\s+(\S).*?Uid:\s+(\d+)\s+(\d+)\s+(\d+)", re.S)


def _processes_of(uid: int) -> list[int]:
    """Live processes whose real, effective or saved uid is ``uid`` (zombies are already dead)."""
    found = []
    wanted = str(uid).encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{entry.name}/status", os.O_RDONLY)
            try:
                text = os.read(fd, 8192)
            finally:
                os.close(fd)
        except OSError:
            continue
        m = _STATUS.search(text)
        if m and wanted in m.group(2, 3, 4) and m.group(1) not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


def _mapped(uid: int, map_file: str) -> bool:
    try:
        with open(map_file) as f:
            ranges = [tuple(int(v) for v in line.split()) for line in f if line.strip()]
    except OSError:  # pragma: no cover - no user namespaces on this kernel
        return True
    return any(inside <= uid < inside + count for inside, _, count in ranges)


def _unused(uid: int, gid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return False
    except KeyError:
        pass
    try:
        grp.getgrgid(gid)
        return False
    except KeyError:
        pass
    return True


def _reserve(uid: int) -> int | None:
    LOCKS.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(LOCKS / f"uid-{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def check_users(count: int) -> list[CheckUser]:
    """``count`` uids for the checks of this grading, each used by nothing else on the machine:
    the ``bevialm-check`` user when it exists, otherwise numbers in no passwd or group
    entry; either way no process may be running as it, and a lock keeps other graders off."""
    candidates: list[tuple[int, int]] = []
    with contextlib.suppress(KeyError):
        named = pwd.getpwnam(CHECK_USER)
        candidates.append((named.pw_uid, named.pw_gid))
    candidates += [(u, u) for u in SPARE_UIDS if _unused(u, u)]
    chosen: list[CheckUser] = []
    for uid, gid in candidates:
        if len(chosen) == count:
            break
        if uid == 0 or not (_mapped(uid, "/proc/self/uid_map") and _mapped(gid, "/proc/self/gid_map")):
            continue
        lock = _reserve(uid)
        if lock is None:
            continue
        if _processes_of(uid):  # someone else's: never ours to kill
            os.close(lock)
            continue
        chosen.append(CheckUser(uid, gid, lock))
    if len(chosen) < count:
        for spare in chosen:
            os.close(spare.lock)
        raise RuntimeError("no unused uid for the checks (create the bevialm-check user, as the autograder's setup.sh does)")
    return chosen


def sweep(user: CheckUser) -> None:
    """Kill every process of the check's uid, again until none is left.

    A forked helper becomes that uid and calls ``kill(-1, SIGKILL)``, which reaches
    exactly the processes that uid may signal: its own. /proc then says whether any
    is left. Nothing is killed by name."""
    for _ in range(KILL_ROUNDS):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the helper (coverage cannot see it)
            try:
                os.setgroups([])
                os.setgid(user.gid)
                os.setuid(user.uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        with contextlib.suppress(ChildProcessError):  # another check's thread may have reaped it
            os.waitpid(pid, 0)
        if not _processes_of(user.uid):
            return
        time.sleep(0.01)
    raise RuntimeError(f"processes of uid {user.uid} survive SIGKILL")  # pragma: no cover


def readable_by_others(path: Path) -> bool:
    """Whether a user that owns nothing and is in no group can read ``path``."""
    path = path.resolve()
    for folder in reversed(path.parents):
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(path).st_mode
    return bool(mode & stat.S_IROTH) and (not stat.S_ISDIR(mode) or bool(mode & stat.S_IXOTH))


# --- the child's folders ----------------------------------------------------------------


def _source(module: str) -> str:
    import importlib

    file = importlib.import_module(module).__file__
    assert file is not None
    return Path(file).read_text(encoding="utf-8")


def _only_plain_files(folder: str, names: list[str]) -> set[str]:
    """Leave out of the copy what is neither a folder, a regular file nor a link (a FIFO
    would block the copy), and the folders that are never part of a package."""
    from bevialm.grading.student import IGNORED_DIRS

    skipped = set()
    for name in names:
        mode = os.lstat(os.path.join(folder, name)).st_mode
        if name in IGNORED_DIRS or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            skipped.add(name)
    return skipped


def prepare(root: Path, package: str, given: Sequence[str], dest: Path) -> Path:
    """The child's import path in ``dest``: ``pkg/<package>`` (a copy of the submission, links
    kept as links, never followed), with the given modules written over it; ``given/bevialm``
    (the infrastructure); ``lib/numpy`` (a link). Returns the copy's folder."""
    from bevialm.grading.skeleton import rewrite

    copy = dest / "pkg" / package
    shutil.copytree(root, copy, symlinks=True, ignore=_only_plain_files)
    for name in given:
        text = rewrite(_source(name), name, False, frozenset())
        target = copy.joinpath(*name.split(".")[1:]).with_suffix(".py")
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()  # a link the student left there is replaced, not written through
        target.write_text(text, encoding="utf-8")
    infra = dest / "given" / "bevialm"
    infra.mkdir(parents=True)
    for name in INFRASTRUCTURE_GIVEN:
        (infra / (name.rpartition(".")[2] + ".py")).write_text(_source(name), encoding="utf-8")
    lib = dest / "lib"
    lib.mkdir()
    numpy_dir = Path(np.__file__).parent
    for target in (numpy_dir, numpy_dir.parent / "numpy.libs"):
        if target.exists():
            (lib / target.name).symlink_to(target)
    for folder, _dirs, files in os.walk(dest):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)
    return copy


def _adopted(since: float, zombies: bool) -> list[int]:
    """The grader's children that it did not start itself: a check's processes adopted by the
    grader after their parent died, started after ``since`` (seconds since boot); the live ones,
    or the dead ones still to be reaped."""
    me = os.getpid()
    ticks = os.sysconf("SC_CLK_TCK")
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                after = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(after[1]) == me and int(after[19]) / ticks >= since and (after[0] in "ZX") == zombies:
            found.append(int(entry.name))
    return found


def _reap(since: float) -> None:
    """Reap the adopted processes a check left dead (each still counts against its uid's process limit)."""
    for pid in _adopted(since, zombies=True):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _subreaper(on: bool) -> bool:
    """Make this process the parent of every orphan its descendants leave (or stop); whether it was."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        was = ctypes.c_int(0)
        libc.prctl(37, ctypes.byref(was), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
        libc.prctl(36, int(on), 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        return bool(was.value)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


# --- running checks -----------------------------------------------------------------------


class Zygote:
    """The warmed-up interpreter (NumPy imported, never ``bevialm``) that forks each check's child."""

    def __init__(self, source: str, settings: dict[str, Any], log: Path) -> None:
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", source, json.dumps({**settings, "control_fd": theirs.fileno()})],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=CHILD_ENVIRONMENT,
                cwd=log.parent,
                start_new_session=True,
            )
        theirs.close()
        self.control.settimeout(ZYGOTE_TIMEOUT)
        self.lock = threading.Lock()

    def ask(self, request: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        with self.lock:
            socket.send_fds(self.control, [json.dumps(request).encode()], list(fds))
            answer: dict[str, Any] = json.loads(self.control.recv(4096))
        return answer

    def fork(self, fds: Sequence[int], user: CheckUser | None) -> int:
        """A new child, given its request, answer and output descriptors; its pid. The zygote
        remembers its uid: should the grader die, the zygote kills what the grader would have."""
        return int(self.ask({"op": "fork", "user": [user.uid, user.gid] if user else None}, fds)["pid"])

    def wait(self, pid: int, timeout: float) -> int | None:
        """The child's exit code once it has ended (reaping it), None if it is still running."""
        code = self.ask({"op": "wait", "pid": pid, "timeout": timeout})["code"]
        return code if isinstance(code, int) else None

    def close(self) -> None:
        self.control.close()
        self.process.kill()
        self.process.wait()


ZYGOTE_TIMEOUT = 120.0
"""Seconds the grader waits for the zygote (its first answer waits for NumPy's import)."""


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
        self.users = check_users(self.jobs) if self.as_root else []
        self.free_users = list(self.users)
        self.lock = threading.Lock()
        self.counter = itertools.count()
        self.started = _uptime()
        self.private = Path(tempfile.mkdtemp(prefix="bevialm-grader-"))  # 0700: outputs
        self.shared = Path(tempfile.mkdtemp(prefix="bevialm-check-"))
        self.copy = prepare(root, package, given, self.shared)
        os.chmod(self.shared, 0o755)
        self.settings: dict[str, Any] = {
            "package": package,
            "root": str(self.copy),
            "path": [str(self.shared / "pkg"), str(self.shared / "lib")],
            "given_dir": str(self.shared / "given" / "bevialm"),
            "given": list(INFRASTRUCTURE_GIVEN),
            "limits": {
                "time": limits.time_limit,
                "memory": limits.memory_limit_mb * 2**20,
                "output": limits.output_limit,
                "processes": PROCESSES if self.as_root else _user_tasks() + PROCESSES,
            },
        }
        self.source = Path(child.__file__).read_text(encoding="utf-8")
        self.was_subreaper = _subreaper(True)  # orphans of the checks come to the grader, to be killed and reaped
        self.zygote = Zygote(self.source, self.settings, self.private / "zygote.txt")

    def close(self) -> None:
        self.zygote.close()
        for user in self.users:
            sweep(user)
            os.close(user.lock)
        _reap(self.started)
        _subreaper(self.was_subreaper)
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
        since_boot = _uptime()
        try:
            pid = self._fork((requests_r, answers_w, out), user)
        finally:
            for fd in (requests_r, answers_w, out):
                os.close(fd)
        started = time.monotonic()
        session = Session(requests_w, answers_r, started + self.limits.time_limit, self.copy)
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
        else:
            for _ in range(KILL_ROUNDS):
                left = [pid for pid in _adopted(run.since_boot, zombies=False) if pid != self.zygote.process.pid]
                if not left:
                    break
                for pid in left:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
        _reap(run.since_boot)
        output, size = _read_output(run.output)
        run.output.unlink(missing_ok=True)
        shutil.rmtree(run.workdir, ignore_errors=True)
        status, detail = ending(status, -signal.SIGKILL if code is None else code, size, self.limits)
        return status, detail, output, size

    def run_one(self, task: Task) -> Outcome:
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
        return Outcome(status, observation if status == "ok" else None, output, size, detail, seconds, blocked)

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        """Run every task in its own child, at most ``jobs`` at a time; outcomes in task order."""
        if self.jobs == 1:
            yield from (self.run_one(t) for t in tasks)
            return
        with ThreadPoolExecutor(self.jobs) as pool:
            yield from pool.map(self.run_one, tasks)


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


def _user_tasks() -> int:
    """Processes and threads of this user (RLIMIT_NPROC counts both)."""
    count = 0
    for pid in _processes_of(os.getuid()):
        with contextlib.suppress(OSError):
            count += len(os.listdir(f"/proc/{pid}/task"))
    return count


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
