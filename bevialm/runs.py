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
"""

from __future__ import annotations

import contextlib
import os
import re

RUNS = "runs"
"""The folder, relative to the working directory, that holds the numbered runs."""

_NUMBERED = re.compile(r"run-(\d+)\Z")
_DIGITS = 3
_STALE_TEMP = re.compile(r"\.(last|best)\.npz\..+\.tmp\Z")


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
