"""Process-level tuning for training runs, applied by the command line and the benchmark.

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
import sys

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
