"""What a student submitted, read the way a hostile class cannot exploit: grade-all's scan,
fingerprint and private copy of one submission.

A submission folder is walked with ``lstat`` only, so nothing in it is followed or opened
before it is known to be a plain file:

- a link (to the instructor's solution, to ``/etc/passwd``, to a device) is never followed:
  it is left out of what is graded and flagged;
- a FIFO, a socket or a device is never opened (opening a FIFO blocks, reading a device
  may never end): it is left out and flagged;
- a file larger than :data:`MAX_FILE_BYTES` is left out and flagged (a data set or a core
  dump costs its student nothing else), and a submission holding more than
  :data:`MAX_SUBMISSION_BYTES` or :data:`MAX_FILES` cannot be graded: only its own row says so;
- files are hashed and copied in chunks (never read whole), opened with ``O_NOFOLLOW`` and
  ``O_NONBLOCK`` and checked to be regular once open, so a file swapped for a link or a FIFO
  after the scan is not read either.

``bevialm grade`` then grades the private copy (:func:`stage`): what it sees is exactly
the files the scan accepted.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import bevialm

MAX_FILE_BYTES = 16 * 2**20
"""Larger files in a submission are not graded (source files are kilobytes)."""

MAX_SUBMISSION_BYTES = 64 * 2**20
"""Largest total size of a submission's files, or of its zip unpacked (a zip bomb is refused)."""

MAX_FILES = 5000
MAX_DEPTH = 40
CHUNK = 2**20
"""Bytes read at a time: hashing and copying never hold a whole file."""

LISTED = 3
"""Paths named in one flag (then "and N more")."""


class SubmissionRefused(Exception):
    """A zip that cannot be graded (too large, too many files, unreadable); the message is one line."""


@dataclass(frozen=True)
class Scan:
    """The plain files of one submission (relative path, size) and what was left out."""

    files: tuple[tuple[str, int], ...]
    flags: tuple[str, ...]
    problem: str | None
    """Why the submission cannot be graded at all, or None."""
    skipped: tuple[str, ...] = ()
    """What was left out, with its kind and size: part of the fingerprint."""


def _listed(what: str, paths: list[str]) -> str:
    more = f" and {len(paths) - LISTED} more" if len(paths) > LISTED else ""
    return f"{what}: {', '.join(sorted(paths)[:LISTED])}{more}"


def scan(entry: Path) -> Scan:
    """The plain files of the student's folder (or the zip itself), without following,
    opening or reading anything (see the module docstring)."""
    try:
        st = os.lstat(entry)
    except OSError as exc:
        return Scan((), (), f"cannot read the submission ({exc.strerror})")
    if stat.S_ISLNK(st.st_mode):
        return Scan((), ("the submission is a link (not followed)",), "the submission is a link, not a folder or a zip")
    if stat.S_ISREG(st.st_mode):
        if st.st_size > MAX_SUBMISSION_BYTES:
            return Scan((), (), f"the zip is larger than {MAX_SUBMISSION_BYTES // 2**20} MiB", (f"zip {st.st_size}",))
        return Scan((("", st.st_size),), (), None)
    if not stat.S_ISDIR(st.st_mode):
        return Scan((), ("the submission is a special file (not read)",), "the submission is not a folder or a zip")
    return _walk(entry)


def _walk(entry: Path) -> Scan:
    files: list[tuple[str, int]] = []
    left_out: dict[str, list[str]] = {"links not followed": [], "special files not read": [], "unreadable": []}
    big: list[str] = []
    skipped: list[str] = []
    total = 0
    todo = [("", 0)]
    while todo:
        rel, depth = todo.pop()
        try:
            with os.scandir(entry / rel if rel else entry) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            left_out["unreadable"].append(rel or ".")
            continue
        for e in entries:
            path = f"{rel}/{e.name}" if rel else e.name
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                left_out["unreadable"].append(path)
                continue
            if stat.S_ISLNK(st.st_mode):
                left_out["links not followed"].append(path)
                skipped.append(f"link {path}")
            elif stat.S_ISDIR(st.st_mode):
                if depth + 1 > MAX_DEPTH:
                    return Scan((), (), f"the submission nests folders more than {MAX_DEPTH} deep")
                todo.append((path, depth + 1))
            elif not stat.S_ISREG(st.st_mode):
                left_out["special files not read"].append(path)
                skipped.append(f"special {path}")
            elif st.st_size > MAX_FILE_BYTES:
                big.append(f"{path} ({st.st_size / 2**20:.0f} MiB)")
                skipped.append(f"big {path} {st.st_size} {st.st_mtime_ns}")
            else:
                files.append((path, st.st_size))
                total += st.st_size
        if len(files) > MAX_FILES or total > MAX_SUBMISSION_BYTES:
            limit = f"more than {MAX_FILES} files" if len(files) > MAX_FILES else f"more than {MAX_SUBMISSION_BYTES // 2**20} MiB of files"
            return Scan((), (), f"the submission holds {limit}", tuple(skipped))
    flags = [_listed(what, paths) for what, paths in left_out.items() if paths]
    if big:
        flags.append(_listed(f"files over {MAX_FILE_BYTES // 2**20} MiB not graded", big))
    return Scan(tuple(sorted(files)), tuple(flags), None, tuple(sorted(skipped)))


def open_regular(path: Path) -> int:
    """A read descriptor of ``path`` if it is a plain file (not a link, FIFO or device: those
    are neither followed nor waited on); raises OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path.name} is not a plain file")
    return fd


def fingerprint(entry: Path, found: Scan, salt: str) -> str:
    """A hash of what is graded (each plain file, streamed), what was left out, the ``salt``
    (the rubric and grading options) and the grader's version."""
    digest = hashlib.sha256(f"{bevialm.__version__}\0{salt}\0{found.problem}\0".encode())
    digest.update("\0".join(found.skipped).encode() + b"\0\0")
    for rel, size in found.files:
        digest.update(f"{rel}\0{size}\0".encode())
        try:
            fd = open_regular(entry / rel if rel else entry)
        except OSError:
            digest.update(b"unreadable\0")
            continue
        with os.fdopen(fd, "rb") as f:
            left = size
            while left > 0 and (chunk := f.read(min(CHUNK, left))):
                digest.update(chunk)
                left -= len(chunk)
    return digest.hexdigest()


def stage(entry: Path, found: Scan, dest: Path) -> None:
    """Copy what ``found`` accepted into ``dest`` (unpacking a zip), in chunks; raises
    :class:`SubmissionRefused` when a zip breaks the limits."""
    if [rel for rel, _ in found.files] == [""]:  # the submission is a zip
        safe_extract(entry, dest)
        return
    for rel, size in found.files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = open_regular(entry / rel)
        except OSError:
            continue  # gone or swapped since the scan: not graded, as if never there
        with os.fdopen(fd, "rb") as src, target.open("wb") as out:
            left = size
            while left > 0 and (chunk := src.read(min(CHUNK, left))):
                out.write(chunk)
                left -= len(chunk)


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``, refusing absolute paths, ``..``, and more than
    :data:`MAX_SUBMISSION_BYTES` or :data:`MAX_FILES` (raises :class:`SubmissionRefused`).
    Members are written as plain files: a member marked as a link becomes a file holding
    the link's text, never a link."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = z.infolist()
            if len(members) > MAX_FILES:
                raise SubmissionRefused(f"{archive.name} holds {len(members)} files (at most {MAX_FILES})")
            if sum(m.file_size for m in members) > MAX_SUBMISSION_BYTES:
                raise SubmissionRefused(f"{archive.name} unpacks to more than {MAX_SUBMISSION_BYTES // 2**20} MiB")
            for m in members:
                path = PurePosixPath(m.filename.replace("\\", "/"))
                if path.is_absolute() or ".." in path.parts:
                    raise SubmissionRefused(f"{archive.name} has a file outside its folder: {m.filename!r}")
            written = 0
            for m in members:
                target = dest.joinpath(*PurePosixPath(m.filename.replace("\\", "/")).parts)
                if m.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src, target.open("wb") as out:  # sizes in the header may lie
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > MAX_SUBMISSION_BYTES:
                            raise SubmissionRefused(f"{archive.name} unpacks to more than {MAX_SUBMISSION_BYTES // 2**20} MiB")
                        out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, OSError) as exc:
        raise SubmissionRefused(f"{archive.name} is not a readable zip ({exc})") from None
