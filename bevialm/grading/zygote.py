"""The zygote (the warmed-up interpreter that forks each check's child) and the grader's
bookkeeping of the processes the checks leave behind (adopted orphans, zombies)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bevialm.grading.uids import CheckUser

CHILD_ENVIRONMENT = {"PATH": "/usr/bin:/bin", **{f"{lib}_NUM_THREADS": "1" for lib in ("OPENBLAS", "OMP", "MKL")}}
"""The child's whole environment: nothing of the grader's, and single-threaded BLAS (the checks'
matrices are tiny, and a BLAS thread per core would use up the process limit on a big machine)."""


def adopted(since: float, zombies: bool) -> list[int]:
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


def reap(since: float) -> None:
    """Reap the adopted processes a check left dead (each still counts against its uid's process limit)."""
    for pid in adopted(since, zombies=True):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def subreaper(on: bool) -> bool:
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


@functools.cache
def can_isolate() -> bool:
    """Whether a check's child can cut itself off the network here (:func:`child.isolate`,
    tried once in a forked process that then exits)."""
    import ctypes

    from bevialm.grading import child

    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the forked probe only calls it
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked probe (coverage cannot see it)
        try:
            os._exit(0 if child.isolate(libc) else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
