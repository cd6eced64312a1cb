"""The uid each check runs as when the grader is root, and removing every process and file of it.

A check's uid is one that nothing else on the machine uses: the ``bevialm-check`` user the
autograder's ``setup.sh`` creates, or a number in no passwd or group entry. Graders running at
once (a class graded in parallel, several test suites) never share one: each claims its uids
with an ``flock`` on a file per uid in :data:`LOCKS`, held while it grades, and checks under
the lock that no process runs as the uid (because :func:`sweep` kills every process of it).
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import re
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

CHECK_USER = "bevialm-check"
"""The user the autograder's ``setup.sh`` creates for the checks (used when present and idle)."""

SPARE_UIDS = (*range(900_100, 900_164), *range(50_100, 50_164))
"""Where a free uid is looked for otherwise: numbers in no passwd or group entry."""

LOCKS = Path("/run/bevialm-grading")
"""Root's folder of uid locks (so graders running at once never share a uid)."""


KILL_ROUNDS = 50


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


SHARED_PLACES = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
"""The world-writable folders of a Debian or Ubuntu system (``/var/lock`` is a link to ``/run/lock``)."""

DEPTH = 4
"""How deep :func:`remove_files` follows world-writable folders inside the shared places."""


def remove_files(user: CheckUser, places: tuple[str, ...] = SHARED_PLACES) -> None:
    """Remove what the check's uid left in the shared temporary places: its files, links (never
    followed) and folders (whole), at the top of each place and in any world-writable folder in
    it (such as ``/tmp/.X11-unix``, to :data:`DEPTH` levels), so the next check, which may run as
    the same uid, finds nothing of the last one's and ``/dev/shm`` does not fill up over a class.
    Run after :func:`sweep`: no process of the uid is left to race it. Other users' files are not
    touched.

    The uid, which has no groups, can create files only in world-writable folders and in its
    own; its own are removed whole. Not covered: world-writable folders outside these places
    (a Debian base image has none; ``find / -xdev -type d -perm -0002`` lists a machine's). A
    check's only own place is its folder, which the grader removes."""
    for place in places:
        _remove_owned(place, user.uid, DEPTH)


def _remove_owned(folder: str, uid: int, depth: int) -> None:
    """Remove ``uid``'s entries in ``folder``; look into other owners' world-writable folders in it."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            if info.st_uid == uid:
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(entry.path)  # removes links inside, never what they point at
                else:
                    os.unlink(entry.path)
            elif depth > 0 and stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH:
                _remove_owned(entry.path, uid, depth - 1)


def user_tasks() -> int:
    """Processes and threads of this user (RLIMIT_NPROC counts both)."""
    count = 0
    for pid in _processes_of(os.getuid()):
        with contextlib.suppress(OSError):
            count += len(os.listdir(f"/proc/{pid}/task"))
    return count

