"""Process-level settings, applied by entry points only: allocator tuning, what SIGINT and SIGTERM
do, and how this process names its own command in hints.

A training step allocates and frees the same few large temporaries (activations,
gradients) every time. glibc's allocator serves blocks above its mmap threshold
(128 KiB to start) straight from the kernel and hands them back on every free,
so each step pays page faults to re-zero memory it just released. Raising the
mmap and trim thresholds keeps those blocks in the process heap for reuse; on
our 2-core machine it cut the quick-start step by about a third. This is a
property of the process, not of any function, so library code never calls it:
only entry points do (``bevialm train``/``sample``, ``main.py``, ``make bench``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.metadata
import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30  # 1 GiB: far above any temporary of the models this project trains


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds; return whether it applied (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - musl or an unusual libc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) and mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


# --- signals --------------------------------------------------------------------------------------
#
# Ctrl-C raises KeyboardInterrupt in the main thread; `timeout`, `kill`, Slurm and Docker send
# SIGTERM instead, which by default ends the process on the spot, saving nothing. Inside
# `stop_signals_raise()` both raise (SIGTERM as `Terminated`), so the trainer saves last.npz
# either way.


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread the way Ctrl-C raises ``KeyboardInterrupt``."""


class Stopped(KeyboardInterrupt):
    """Work stopped by Ctrl-C or SIGTERM after saving what it could; ``str()`` is the one line to print."""

    def __init__(self, message: str, *, terminated: bool) -> None:
        super().__init__(message)
        self.terminated = terminated


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into exceptions for the duration (main thread only).

    Only the first signal raises; later ones do nothing, so a second Ctrl-C cannot cut
    short the save the first one started (nor print a second message). A signal the
    process inherited as ignored stays ignored: a job started in the background of a
    non-interactive shell, whose SIGINT is ignored so that Ctrl-C in the terminal spares
    it, keeps that protection.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def raise_once(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(s, raise_once)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def command() -> str:
    """How to run ``bevialm`` again from here, for hints: ``bevialm`` when this process is the
    console script, else this interpreter with ``-m bevialm`` (``python -m bevialm`` in an
    activated venv), with ``PYTHONPATH`` when the package is neither installed nor in the
    working directory."""
    if os.path.basename(sys.argv[0]) == "bevialm":
        return "bevialm"
    name = os.path.basename(sys.executable)
    found = shutil.which(name)
    python = sys.executable
    if found and os.path.abspath(found) == os.path.abspath(python):
        python = name  # the one `python` finds first on PATH, as in an activated venv
    elif not os.path.relpath(python).startswith(".."):
        python = os.path.relpath(python)  # .venv/bin/python
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.abspath(os.getcwd()) == root or _installed():
        return f"{python} -m bevialm"
    return f"PYTHONPATH={shlex.quote(root)} {python} -m bevialm"


def _installed() -> bool:
    try:
        importlib.metadata.distribution("bevialm")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
