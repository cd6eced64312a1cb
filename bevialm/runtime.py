"""Process-level tuning for training runs: the allocator (entry points) and BLAS threads (the shard runner).

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

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

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


# --- BLAS threads --------------------------------------------------------------------------------
#
# NumPy's matrix products run on its BLAS's own threads. The shard runner (bevialm.parallel) runs
# one shard per Python thread instead, and wants each of those products on the calling thread
# alone: two shards each asking two BLAS threads for two cores oversubscribe them, and OpenBLAS's
# waiting threads spin. OpenBLAS's thread count is a process-wide setting with a C API, which we
# reach with ctypes (threadpoolctl does the same, but run time needs NumPy alone). NumPy's wheels
# bundle OpenBLAS under a prefixed name; a system OpenBLAS uses the plain one.

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
