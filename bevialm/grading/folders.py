"""The folders a check's child reads: its copy of the submission, the given code, and NumPy.

Everything the child imports must be readable by the check's uid (as root, a uid that owns
nothing). The grader's own install may not be: a clone under ``/root`` or in a private
``mktemp -d`` folder, a venv in a 0700 home. So when NumPy's folder is not readable by other
users, the child gets a copy of it made for this grading (hard links where the files are
readable and on the same file system, copies otherwise), owned by root and readable by all,
removed with the grading's folder. The canary (:mod:`bevialm.grading.canary`) tells when
something is still out of reach.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np

INFRASTRUCTURE_GIVEN = ("bevialm.types", "bevialm.validate", "bevialm.params", "bevialm.gradcheck")
"""Reference modules a submission may import (``from bevialm.types import Array``): in the
child they are copies of the reference's source, in the given code's ``bevialm``."""


def readable_by_others(path: Path) -> bool:
    """Whether a user that owns nothing and is in no group can read ``path``."""
    path = path.resolve()
    for folder in reversed(path.parents):
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(path).st_mode
    return bool(mode & stat.S_IROTH) and (not stat.S_ISDIR(mode) or bool(mode & stat.S_IXOTH))



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
    for folder, _dirs, files in os.walk(dest):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)
    provide_numpy(dest / "lib")  # after the walk: its hard links are the venv's own files
    return copy



def _readable_copy(source: Path, target: Path) -> None:
    """``target``: the tree ``source`` as files every user can read (links to readable files, or
    copies), folders every user can enter. Links in the tree are kept as links."""
    for folder, dirs, files in os.walk(source):
        here = target / Path(folder).relative_to(source)
        here.mkdir(mode=0o755, exist_ok=True)
        os.chmod(here, 0o755)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            _readable_file(Path(folder, name), here / name)


def _readable_file(path: Path, target: Path) -> None:
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        target.symlink_to(os.readlink(path))
        return
    if not stat.S_ISREG(info.st_mode):
        return
    if info.st_mode & stat.S_IROTH:
        try:
            os.link(path, target)  # same inode, same (readable) mode: nothing is changed in the venv
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
                raise
    shutil.copyfile(path, target)
    os.chmod(target, 0o644)


def numpy_folders() -> list[Path]:
    """NumPy's package folder, and its bundled libraries' folder when it has one (wheels' ``numpy.libs``)."""
    numpy_dir = Path(np.__file__).parent
    return [p for p in (numpy_dir, numpy_dir.parent / "numpy.libs") if p.exists()]


def provide_numpy(lib: Path) -> None:
    """NumPy in ``lib`` for the child: links to the grader's folders when every user can read
    them, otherwise a readable copy (see the module docstring)."""
    lib.mkdir(mode=0o755, exist_ok=True)
    for folder in numpy_folders():
        if readable_by_others(folder):
            (lib / folder.name).symlink_to(folder)
        else:
            _readable_copy(folder, lib / folder.name)

