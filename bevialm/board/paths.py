"""Which files the board may read: only regular files and folders under the runs folder.

Every name a request carries (a run, a checkpoint) is checked here before anything is
opened: a run is one path component (no ``/``, ``\\``, ``..`` or NUL: an encoded slash
arrives decoded and is refused the same way), or ``.`` for the runs folder itself when it
is a run; a checkpoint is a ``*.npz`` name in that run. The real path of what it names
(symbolic links followed) must then still lie under the runs folder's real path, so a
link pointing outside is refused like ``../..``.
"""

from __future__ import annotations

import os
import re

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]{0,127}\Z|\.\Z")
_CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]{0,127}\.npz\Z")
METRICS = "metrics.jsonl"


class Refused(ValueError):
    """A name the board does not serve (outside the runs folder, or not a run): one line."""


def _inside(root: str, path: str) -> str:
    real = os.path.realpath(path)
    if real != root and os.path.commonpath([root, real]) != root:
        raise Refused("not under the runs folder")
    return real


def run_folder(root: str, name: object) -> str:
    """The real path of run ``name`` in ``root`` (a real path); :class:`Refused` otherwise."""
    if not isinstance(name, str) or not _RUN_NAME.match(name) or ".." in name:
        raise Refused(f"no run named {str(name)[:80]!r}")
    folder = _inside(root, os.path.join(root, name))
    if not os.path.isdir(folder):
        raise Refused(f"no run named {name!r}")
    return folder


def run_file(root: str, run: object, name: object, pattern: re.Pattern[str] = _CHECKPOINT_NAME) -> str:
    """The real path of file ``name`` (a checkpoint, by default) of run ``run``."""
    folder = run_folder(root, run)
    if not isinstance(name, str) or not pattern.match(name) or ".." in name:
        raise Refused(f"no checkpoint named {str(name)[:80]!r}")
    path = _inside(root, os.path.join(folder, name))
    if not os.path.isfile(path):
        raise Refused(f"run {run!r} has no {name}")
    return path


def metrics_file(root: str, run: object) -> str:
    """The real path of run ``run``'s ``metrics.jsonl`` (which may not exist yet)."""
    folder = run_folder(root, run)
    return _inside(root, os.path.join(folder, METRICS))


def list_runs(root: str) -> list[str]:
    """The runs in ``root``: ``.`` if it is a run itself, then each folder in it holding
    ``metrics.jsonl`` or a checkpoint (links leading outside left out), sorted by name."""
    names = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return []
    for name in [".", *entries]:
        try:
            folder = run_folder(root, name)
            files = os.listdir(folder)
        except (Refused, OSError):
            continue
        if METRICS in files or any(_CHECKPOINT_NAME.match(f) for f in files):
            names.append(name)
    return names


def checkpoints(root: str, folder: str) -> list[str]:
    """The checkpoint names in run ``folder`` (of runs folder ``root``): ``best.npz`` and ``last.npz`` first."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for f in names:  # a link leading out of the run is left out here and refused by run_file
        real = os.path.realpath(os.path.join(folder, f))
        if _CHECKPOINT_NAME.match(f) and os.path.isfile(real) and os.path.commonpath([root, real]) == root:
            found.append(f)
    order = {"best.npz": 0, "last.npz": 1}
    return sorted(found, key=lambda f: (order.get(f, 2), f))
