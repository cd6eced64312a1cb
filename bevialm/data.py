"""Character-level data pipeline (playbook chapter 5): the vocabulary, encode and
decode, a deterministic train/validation split and random training batches.

:class:`Vocab` is the character tokenizer; it and the byte-level BPE of
:mod:`bevialm.tokenizer` share one interface (``encode``, ``decode``,
``vocab_size``, ``count_chars``, ``to_json``).

Text is read as exact UTF-8 bytes (no newline translation), so a vocabulary
built from a file and the text sampled from a model round-trip to the byte.
Every problem a user can cause (a missing or non-UTF-8 data file, a prompt with
unknown characters, a text shorter than one context window) raises
:class:`DataError` with one line that names the file or the characters.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from bevialm.types import IntArray
from bevialm.validate import require_positive

_CODEC = "utf-32-le"
"""Fixed-width encoding used to turn a ``str`` into an array of code points (and
back) in one NumPy call; ``surrogatepass`` keeps even lone surrogates lossless."""

_MAX_NAMED = 20
"""How many unknown characters an error message lists before summarising the rest."""


class DataError(ValueError):
    """Bad training text or prompt: the message is one line naming the file or characters."""


def _code_points(text: str) -> IntArray:
    return np.frombuffer(text.encode(_CODEC, "surrogatepass"), dtype="<u4")


@dataclass(frozen=True)
class Vocab:
    """The sorted unique characters of a text; token ``i`` is ``chars[i]``.

    ``stoi`` maps a character to its id and ``itos`` an id to its character (the
    playbook's names); ``itos`` is ``chars`` itself, since a tuple already is an
    int-to-str mapping.
    """

    chars: tuple[str, ...]
    stoi: Mapping[str, int] = field(init=False, repr=False, compare=False)
    _codes: IntArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.chars, tuple) or not all(
            isinstance(c, str) and len(c) == 1 for c in self.chars
        ):
            raise DataError("vocabulary: chars must be a tuple of single characters")
        if not self.chars:
            raise DataError("vocabulary: needs at least one character")
        if any(a >= b for a, b in zip(self.chars, self.chars[1:], strict=False)):
            raise DataError("vocabulary: chars must be sorted and unique")
        # Frozen dataclass: derived lookup tables are set once here, read-only after.
        object.__setattr__(self, "stoi", MappingProxyType({c: i for i, c in enumerate(self.chars)}))
        # Sorted characters have sorted code points, so encoding is a searchsorted.
        object.__setattr__(self, "_codes", _code_points("".join(self.chars)))

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """The vocabulary of every distinct character in ``text`` (which must not be empty)."""
        if not text:
            raise DataError("vocabulary: the text is empty")
        return cls(tuple(sorted(set(text))))

    @property
    def itos(self) -> tuple[str, ...]:
        """Id to character: ``itos[i] == chars[i]``."""
        return self.chars

    @property
    def size(self) -> int:
        """Number of tokens ``V``."""
        return len(self.chars)

    @property
    def vocab_size(self) -> int:
        """``size``, under the name every tokenizer has (:class:`bevialm.tokenizer.Tokenizer`)."""
        return len(self.chars)

    def count_chars(self, ids: IntArray) -> int:
        """Characters in ``ids``: one per token."""
        return int(np.asarray(ids).size)

    def to_json(self) -> dict[str, Any]:
        """``{"type": "char", "chars": [...]}`` (:func:`bevialm.tokenizer.from_json` reads it)."""
        return {"type": "char", "chars": list(self.chars)}

    def encode(self, text: str, *, what: str = "text") -> IntArray:
        """``text`` as an int64 array of token ids.

        Raises :class:`DataError` naming, in order of first appearance, every
        character of ``text`` that is not in the vocabulary; ``what`` names the
        text in that message (``"prompt"``, ``"data file x.txt"``).
        """
        cps = _code_points(text)
        ids = np.searchsorted(self._codes, cps)
        np.minimum(ids, self._codes.size - 1, out=ids)  # unknown chars past the end: clamp, then compare
        known = self._codes[ids] == cps
        if not known.all():
            unknown, first = np.unique(cps[~known], return_index=True)
            ordered = [chr(int(c)) for c in unknown[np.argsort(first, kind="stable")]]
            named = ", ".join(repr(c) for c in ordered[:_MAX_NAMED])
            more = f" and {len(ordered) - _MAX_NAMED} more" if len(ordered) > _MAX_NAMED else ""
            raise DataError(f"{what} contains characters not in the vocabulary: {named}{more}")
        return ids.astype(np.int64, copy=False)

    def decode(self, ids: IntArray | Sequence[int]) -> str:
        """The text of a 1-D sequence of token ids (each in ``[0, size)``)."""
        arr = np.asarray(ids)
        if arr.size == 0:
            return ""
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(
                f"decode: ids must be a 1-D integer sequence, got {arr.dtype} of shape {arr.shape}"
            )
        if arr.min() < 0 or arr.max() >= self.size:
            raise DataError(
                f"decode: ids must lie in [0, {self.size}), got values from {arr.min()} to {arr.max()}"
            )
        raw: bytes = self._codes[arr].astype("<u4").tobytes()
        return raw.decode(_CODEC, "surrogatepass")


MAX_FILE_BYTES = 256 << 20
"""The largest file :func:`read_bytes` reads (256 MiB): a character-level run holds about
17 bytes per character while it encodes its text, so a larger file is better cut first."""


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return kind
    return "not a regular file"


def read_bytes(
    path: str | os.PathLike[str],
    what: str,
    error: type[ValueError] = DataError,
    size: int = -1,
    limit: int = MAX_FILE_BYTES,
) -> bytes:
    """The bytes of ``path`` (its first ``size``; all of it when -1).

    Only a regular file of at most ``limit`` bytes is read: a device (``/dev/zero``)
    would never end, a named pipe without a writer would block forever. A missing
    path, a directory, anything else or an unreadable file raises ``error`` with one
    line naming ``what`` (``"data file"``, ``"checkpoint"``, ...), the path and the
    problem. Shared by every reader of user-named files.
    """
    name = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{what} '{name}' does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} '{name}' is a directory, not a file") from None
    except OSError as e:
        raise error(f"{what} '{name}' cannot be read: {e.strerror or e}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{what} '{name}' is a directory, not a file")
        raise error(f"{what} '{name}' is {_kind(info.st_mode)}; give a regular file")
    with os.fdopen(fd, "rb") as f:
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        if size < 0 and info.st_size > limit:
            raise error(f"{what} '{name}' is {info.st_size / (1 << 20):,.0f} MiB, more than the {limit >> 20} MiB limit")
        try:
            data = f.read(size if size >= 0 else limit + 1)
        except OSError as e:
            raise error(f"{what} '{name}' cannot be read: {e.strerror or e}") from None
    if size < 0 and len(data) > limit:  # a file that grew, or one that reports no size
        raise error(f"{what} '{name}' is more than the {limit >> 20} MiB limit")
    return data


def load_text(path: str | os.PathLike[str], what: str = "data file") -> str:
    """The whole file at ``path`` decoded as UTF-8, exactly (no newline translation).

    A missing path, a directory, an unreadable, empty or non-UTF-8 file raises
    :class:`DataError` with one line naming ``what``, the file and the problem.
    """
    name = os.fspath(path)
    raw = read_bytes(name, what)
    if not raw:
        raise DataError(f"{what} '{name}' is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{what} '{name}' is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None


def split(data: IntArray, val_fraction: float = 0.1) -> tuple[IntArray, IntArray]:
    """``(train, val)``: the first and the last part of ``data`` (views, no copy).

    The validation part is the last ``round(len(data) * val_fraction)`` tokens
    (halves round up), the same on every run; ``val_fraction=0`` gives an empty
    validation part. The training part must not be empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"split: val_fraction must lie in [0, 1), got {val_fraction}")
    n = len(data)
    n_val = int(n * val_fraction + 0.5)
    if n - n_val <= 0:
        raise DataError(f"split: {n} tokens leave nothing to train on with val_fraction={val_fraction}")
    return data[: n - n_val], data[n - n_val :]


def get_batch(
    data: IntArray, batch: int, ctx: int, rng: np.random.Generator, *, what: str = "data"
) -> tuple[IntArray, IntArray]:
    """``batch`` random windows of ``data``: inputs ``x`` and targets ``y``, int64 ``(batch, ctx)``.

    ``y[b, t] == x[b, t + 1]`` inside a window and ``y[b, ctx - 1]`` is the token
    after it: each row trains every position to predict its next character.
    Window starts are uniform over all ``len(data) - ctx`` valid offsets and
    come from exactly one ``rng.integers`` call, so a restored generator
    replays the same batches. ``what`` names ``data`` in the error raised when
    it is shorter than ``ctx + 1`` tokens.
    """
    require_positive("get_batch", batch=batch, ctx=ctx)
    if not isinstance(data, np.ndarray) or data.ndim != 1 or not np.issubdtype(data.dtype, np.integer):
        raise DataError("get_batch: data must be a 1-D integer array of token ids")
    if len(data) < ctx + 1:
        raise DataError(
            f"{what} has {len(data)} tokens, fewer than ctx + 1 = {ctx + 1} needed for one training window"
        )
    starts = rng.integers(0, len(data) - ctx, size=batch)
    idx = starts[:, None] + np.arange(ctx)  # (batch, ctx) index matrix: one gather per array
    x = data[idx].astype(np.int64, copy=False)
    idx += 1
    y = data[idx].astype(np.int64, copy=False)
    return x, y
