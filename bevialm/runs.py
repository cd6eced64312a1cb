"""Where training runs live: one fresh, numbered folder per run unless ``--out`` names one.

Without ``--out``, ``bevialm train`` (and ``python main.py``) creates the next folder of
``runs/``: ``runs/run-001``, ``runs/run-002``, ... (three digits, then as many as needed),
so running the same command twice never meets an earlier run. ``bevialm sample`` without
``--checkpoint`` or ``--out`` reads the newest run (the highest number) that holds a
checkpoint, and ``--resume`` without ``--out`` continues the newest run that holds
``last.npz``. Numbers, not timestamps: two runs started in the same second still get
different folders, and "newest" never depends on a clock.

A checkpoint write that was killed (``kill -9``, a power cut) can leave its temporary
file ``.last.npz.<random>.tmp`` behind; :func:`remove_stale_temp_files` clears them
when a run starts in the folder again.

One process at a time trains in a run folder: :func:`lock_run_folder` takes an
exclusive ``fcntl.flock`` on the folder's ``train.lock`` (which names the holder's
pid and host, for the message a second process gets) and :meth:`RunLock.release`
removes it when the run ends, Ctrl-C and SIGTERM included. The kernel drops a
``flock`` when its process dies, so the file a ``kill -9`` left behind is stale and
the next run takes it over; where a filesystem has no ``flock``, the named pid is
checked instead (alive, or on another host: refused; gone: taken over).

A run folder holds ``last.npz``, ``best.npz``, ``metrics.jsonl`` and ``config.toml``.
:func:`claim_folder` chooses the folder of a run and checks it can hold it (refusing
an old run's folder without ``--resume`` or ``--overwrite``); :func:`remove_created`
undoes a start that failed; :class:`MetricsFile` appends the metrics' JSON lines.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from typing import IO, Any

from bevialm import config_file

RUNS = "runs"
"""The folder, relative to the working directory, that holds the numbered runs."""

_NUMBERED = re.compile(r"run-(\d+)\Z")
_DIGITS = 3
_STALE_TEMP = re.compile(r"\.(last|best)\.npz\..+\.tmp\Z")
LOCK = "train.lock"
"""The file in a run folder that says a process is training there (only while it is)."""


LAST, BEST, METRICS = "last.npz", "best.npz", "metrics.jsonl"
"""The files of a run folder (with ``config.toml``, :data:`bevialm.config_file.CONFIG_NAME`)."""


class TrainError(ValueError):
    """A run that cannot start (bad data, run folder or checkpoint) or cannot write its
    checkpoints or metrics (a full disk): one line. (Too little memory is a
    :class:`bevialm.memory.MemoryLimitError`.)"""


class RunFolderBusy(ValueError):
    """Another live process trains in the run folder: one line naming it."""


def _numbered(root: str) -> list[tuple[int, str]]:
    """``(number, path)`` of every ``run-N`` folder in ``root``, newest first."""
    try:
        names = os.listdir(root)
    except OSError:  # no runs yet (or an unreadable folder: then there is nothing to find)
        return []
    found = []
    for name in names:
        match = _NUMBERED.match(name)
        path = os.path.join(root, name)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def new_run_folder(root: str = RUNS) -> str:
    """Create and return the next numbered folder in ``root`` (``root/run-001`` for the first).

    ``os.mkdir`` either creates the folder or fails because it exists, so two runs started
    at once never share a folder. Raises ``OSError`` when ``root`` cannot be written.
    """
    os.makedirs(root, exist_ok=True)
    runs = _numbered(root)
    number = runs[0][0] + 1 if runs else 1
    while True:
        path = os.path.join(root, f"run-{number:0{_DIGITS}d}")
        try:
            os.mkdir(path)
        except FileExistsError:  # another run took it (or a file has that name): the next one
            number += 1
            continue
        return path


def newest_with(names: tuple[str, ...], root: str = RUNS) -> str | None:
    """The first of ``names`` found in the newest numbered run that has any of them, or None.

    ``newest_with(("best.npz", "last.npz"))`` is what ``bevialm sample`` reads.
    """
    for _, path in _numbered(root):
        for name in names:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
    return None


def remove_stale_temp_files(folder: str) -> int:
    """Delete the temporary files that killed checkpoint writes left in ``folder``; return how many."""
    removed = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if _STALE_TEMP.match(name):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))
                    removed += 1
    return removed


def _owner(fd: int) -> tuple[int, str] | None:
    """``(pid, host)`` written in the lock file, or None if it names nobody."""
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        pid, host = os.pread(fd, 4096, 0).decode("utf-8").split(maxsplit=1)
        return int(pid), host.strip()
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _busy(folder: str, owner: tuple[int, str] | None) -> RunFolderBusy:
    who = "another process" if owner is None else f"process {owner[0]} on host '{owner[1]}'"
    return RunFolderBusy(
        f"run folder '{folder}' is in use: {who} is training there (it holds {os.path.join(folder, LOCK)}); "
        "wait for it to finish or stop it, or train in another --out"
    )


def _flock(fd: int, folder: str) -> bool:
    """Lock ``fd``; False if this filesystem has no flock (the pid check decides then)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(folder, _owner(fd)) from None
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        raise
    return True


@dataclass
class RunLock:
    """This process's hold on a run folder; :meth:`release` ends it (also as a context manager)."""

    path: str
    fd: int
    taken_over: tuple[int, str] | None
    """The dead process whose stale lock this took over, if any."""

    def release(self) -> None:
        """Remove the lock file, then let go of it (removed first, so no one locks a file on its way out)."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run_folder(folder: str) -> RunLock:
    """Hold ``folder`` for this process; :class:`RunFolderBusy` if a live process holds it.

    Raises ``OSError`` if the lock file cannot be written.
    """
    path, me = os.path.join(folder, LOCK), (os.getpid(), socket.gethostname())
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _flock(fd, folder)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed the file as we locked it: lock the one there now
    previous = _owner(fd)
    if not locked and previous is not None and previous != me and (previous[1] != me[1] or _alive(previous[0])):
        os.close(fd)  # without flock, only a pid on this host can be seen to be gone
        raise _busy(folder, previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{me[0]} {me[1]}\n".encode(), 0)
    return RunLock(path, fd, previous if previous not in (None, me) else None)


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (it may have been removed meanwhile)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


# --- claiming a run folder, and undoing a failed start -------------------------------------------


@dataclass(frozen=True)
class Claim:
    """The run folder chosen for a run, and the topmost folder the claim created (None if none):
    what :func:`remove_created` removes again if the start fails."""

    out: str
    created: str | None


def first_missing(path: str) -> str | None:
    """The topmost folder of ``path`` that does not exist yet (what ``os.makedirs`` would create), or None."""
    missing = None
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing = path
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def remove_created(out: str, top: str) -> None:
    """Undo a failed start: the run's own files in ``out``, then the folders up to ``top`` that it created."""
    for name in (LAST, BEST, METRICS, config_file.CONFIG_NAME):
        with contextlib.suppress(OSError):
            os.remove(os.path.join(out, name))
    remove_stale_temp_files(out)
    path, top = os.path.abspath(out), os.path.abspath(top)
    while True:
        try:
            os.rmdir(path)  # only ever an empty folder
        except OSError:
            return
        if path == top:
            return
        path = os.path.dirname(path)


def claim_folder(out: str | None, *, resume: bool, overwrite: bool) -> Claim:
    """Choose the run folder (``out``; None: a new numbered one, or with ``resume`` the newest run)
    and check it can hold this run; :class:`TrainError` in one line if not."""
    if out is None and resume:
        last = newest_with((LAST,))
        if last is None:
            raise TrainError(f"--resume: no run in '{RUNS}' has a {LAST} to resume from; pass its --out")
        out = os.path.dirname(last)
    elif out is None:
        try:
            out = new_run_folder()
        except OSError as e:
            raise TrainError(f"cannot create a run folder in '{RUNS}': {e.strerror or e}") from None
        return Claim(out, out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise TrainError(f"run folder '{out}' exists and is not a folder")
    created = first_missing(out)
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        if created is not None:
            remove_created(out, created)
        raise TrainError(f"run folder '{out}' cannot be written: {e.strerror or e}") from None
    problem = _refusal(out, resume=resume, overwrite=overwrite)
    if problem:
        if created is not None:
            remove_created(out, created)
        raise TrainError(problem)
    return Claim(out, created)


def _refusal(out: str, *, resume: bool, overwrite: bool) -> str | None:
    existing = [n for n in (LAST, BEST, METRICS) if os.path.exists(os.path.join(out, n))]
    if resume and LAST not in existing:
        return f"--resume: there is no checkpoint '{os.path.join(out, LAST)}' to resume from"
    if existing and not (resume or overwrite):
        return (
            f"run folder '{out}' already holds a run ({', '.join(existing)}): pass --resume to continue it, "
            "--overwrite to start afresh, or another --out (or none: a new folder in runs/)"
        )
    return None


# --- the metrics file ------------------------------------------------------------------------------


class MetricsFile:
    """``metrics.jsonl``, one JSON object a line, flushed as written. :meth:`start` begins it
    afresh; :meth:`resume` keeps the records of steps up to the checkpoint's (later ones were
    lost with the run). Both raise :class:`TrainError`; :meth:`write` raises ``OSError``."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, METRICS)
        self.file: IO[str] | None = None

    def start(self) -> None:
        self.file = self._open()

    def resume(self, step: int) -> None:
        kept: list[str] = []
        with contextlib.suppress(FileNotFoundError), open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        self.file = self._open()
        self.file.writelines(kept)
        self.file.flush()

    def _open(self) -> IO[str]:
        try:
            return open(self.path, "w", encoding="utf-8")
        except OSError as e:
            raise TrainError(f"cannot write '{self.path}': {e.strerror or e}") from None

    def write(self, record: dict[str, Any]) -> None:
        assert self.file is not None
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
