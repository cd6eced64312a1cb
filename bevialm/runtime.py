"""Process-level settings, applied by entry points only: allocator tuning, what SIGINT and SIGTERM
do, and how this process names its own command in hints; and the BLAS thread count, which the
shard runner (bevialm.parallel) limits while a step's shards run.

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
import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
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
    activated venv), with ``PYTHONPATH`` when that interpreter would not find the package from
    the working directory (``python /elsewhere/main.py`` in a venv with only NumPy)."""
    if os.path.basename(sys.argv[0]) == "bevialm":
        return "bevialm"
    name = os.path.basename(sys.executable)
    found = shutil.which(name)
    python = sys.executable
    if found and os.path.abspath(found) == os.path.abspath(python):
        python = name  # the one `python` finds first on PATH, as in an activated venv
    elif not os.path.relpath(python).startswith(".."):
        python = os.path.join(".", os.path.relpath(python))  # ./.venv/bin/python
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.abspath(os.getcwd()) == root or _importable_without_script_dir(root):
        return f"{python} -m bevialm"
    return f"PYTHONPATH={shlex.quote(root)} {python} -m bevialm"


def _importable_without_script_dir(root: str) -> bool:
    """Whether ``-m bevialm`` finds this package from any working directory: an install (or the
    editable install's path entry) puts its folder on ``sys.path`` beyond ``sys.path[0]``, the
    folder of the script being run, which ``python -m`` replaces with the working directory."""
    for entry in sys.path[1:]:
        if entry and os.path.isfile(os.path.join(entry, "bevialm", "__init__.py")):
            return True
    return False


# --- BLAS threads --------------------------------------------------------------------------------
#
# NumPy's matrix products run on its BLAS's own threads. The shard runner (bevialm.parallel) runs
# one shard per core instead (one in the trainer's process, the others in worker processes), and
# wants each shard's products on its own core alone: two shards each asking two BLAS threads for
# two cores oversubscribe them, and OpenBLAS's waiting threads spin. OpenBLAS's thread count is a
# process-wide setting with a C API, which we reach with ctypes (threadpoolctl does the same, but
# run time needs NumPy alone). NumPy's wheels bundle OpenBLAS under a prefixed name; a system
# OpenBLAS uses the plain one.

_SET_NAMES = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")
_GET_NAMES = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")


@dataclass(frozen=True)
class BlasThreads:
    """OpenBLAS's thread-count setter and getter, found in the running process."""

    set: Callable[[int], None]
    get: Callable[[], int]


def _loaded_libraries() -> list[str]:
    """Paths of the shared libraries mapped into this process (Linux's /proc/self/maps)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            return sorted({line.split()[-1] for line in maps if line.rstrip().endswith(".so") or ".so." in line})
    except OSError:  # pragma: no cover - not Linux
        return []


@lru_cache(maxsize=1)
def find_openblas() -> BlasThreads | None:
    """NumPy's OpenBLAS thread controls, or None when NumPy uses another BLAS (or we cannot tell)."""
    import numpy  # noqa: F401  (make sure NumPy, and so its BLAS, is loaded)

    for path in _loaded_libraries():
        if "openblas" not in os.path.basename(path).lower():
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:  # pragma: no cover - a mapping we may not open
            continue
        setter = next((getattr(lib, n) for n in _SET_NAMES if hasattr(lib, n)), None)
        getter = next((getattr(lib, n) for n in _GET_NAMES if hasattr(lib, n)), None)
        if setter is not None and getter is not None:
            setter.argtypes, setter.restype = [ctypes.c_int], None
            getter.argtypes, getter.restype = [], ctypes.c_int
            return BlasThreads(setter, getter)
    return None  # pragma: no cover - NumPy built against another BLAS


@contextmanager
def blas_threads(n: int) -> Iterator[bool]:
    """Run the body with OpenBLAS limited to ``n`` threads, then restore the previous count.

    Yields whether the limit applies (False when NumPy's BLAS is not OpenBLAS:
    then its own setting, e.g. ``MKL_NUM_THREADS``, stays in force).
    """
    blas = find_openblas()
    if blas is None:  # pragma: no cover - NumPy built against another BLAS
        yield False
        return
    previous = blas.get()
    blas.set(n)
    try:
        yield True
    finally:
        blas.set(previous)
