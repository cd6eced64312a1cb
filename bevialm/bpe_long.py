"""BPE training on long chunks: pair positions and in-place merges, in time linear in the text.

:func:`bevialm.tokenizer.train_bpe` rewrites each chunk that holds the pair it merges.
That is cheap for words, but a text the pre-split cannot break (10 MB of DNA, minified
code, CJK without spaces) is one chunk of millions of bytes, rewritten whole at every
merge: hours, and gigabytes of pair lists. Chunks of at least :data:`LONG_CHUNK` bytes
are kept here instead, as one doubly linked list of tokens in NumPy arrays, with an
index from each pair to the positions where it starts. A merge visits only those
positions, all at once, and reports how the counts of the pairs around them change,
so the trainer's counts stay exact and its merges (ties included) stay the same.

Positions in the index may be stale (the pair there has since changed); a merge
checks each one against the tokens before using it, so entries are never deleted,
only appended: every merge adds at most two per merged occurrence, and the merges
together remove fewer tokens than the text has, so the index stays linear in size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bevialm.data import DataError
from bevialm.types import IntArray

LONG_CHUNK = 256
"""Chunks of at least this many bytes are trained here; shorter ones are rewritten whole."""

_DEAD = -1  # the token of a position merged into its left neighbour
_SHIFT = 32  # a pair (a, b) as one int64: a << 32 | b (token ids are far below 2**31)

Pair = tuple[int, int]


def _unique(x: IntArray) -> IntArray:
    """``x`` sorted, without repeats (sorting: NumPy's hashing ``np.unique`` is slower on these)."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if x.size else x


def _codes(left: IntArray, right: IntArray) -> IntArray:
    return (left.astype(np.int64) << _SHIFT) | right.astype(np.int64)


class LongChunks:
    """Long chunks as linked token lists, with weights (each chunk's count in the text)."""

    def __init__(self, chunks: Sequence[bytes], freqs: Sequence[int]) -> None:
        lengths = np.fromiter(map(len, chunks), dtype=np.int64, count=len(chunks))
        n = int(lengths.sum())
        if n >= 1 << 31:
            raise DataError(f"BPE: {n:,} bytes of long chunks is more than this trainer holds (under 2 GiB)")
        self.tok = np.frombuffer(b"".join(chunks), dtype=np.uint8).astype(np.int32)
        # int32 positions and weights: half the memory of int64 (a text under 2 GB, checked by the caller)
        self.weight = np.repeat(np.asarray(freqs, dtype=np.int32), lengths)
        self.nxt = np.arange(1, n + 1, dtype=np.int32)
        self.prv = np.arange(-1, n - 1, dtype=np.int32)
        ends = np.cumsum(lengths)
        self.nxt[ends - 1] = -1  # no pair crosses the end of a chunk
        self.prv[ends[:-1]] = -1
        self.bounds = list(zip((ends - lengths).tolist(), ends.tolist(), strict=True))
        self.where: dict[Pair, list[IntArray]] = {}

    def initial_counts(self) -> dict[Pair, int]:
        """Every adjacent pair's weighted count; fills the position index."""
        pos = np.flatnonzero(self.nxt >= 0).astype(np.int32)
        # byte pairs fit 16 bits, which NumPy's stable sort orders by radix, in linear time
        small = (self.tok[pos] << 8 | self.tok[pos + 1]).astype(np.uint16)
        order = np.argsort(small, kind="stable")
        pos, small = pos[order], small[order]
        cut = np.flatnonzero(np.diff(small)) + 1
        counts: dict[Pair, int] = {}
        for group in np.split(pos, cut) if pos.size else []:
            code = int(self.tok[group[0]]), int(self.tok[group[0] + 1])
            self.where[code] = [group]
            counts[code] = int(self.weight[group].sum(dtype=np.int64))
        return counts

    def _occurrences(self, a: int, b: int) -> IntArray:
        """Where ``a, b`` starts now, left to right, overlaps (``a == b``) resolved as a left-to-right rewrite would."""
        parts = self.where.pop((a, b), None)
        if parts is None:
            return np.zeros(0, dtype=np.int32)
        pos = _unique(np.concatenate(parts))
        nxt = self.nxt[pos]
        ok = (self.tok[pos] == a) & (nxt >= 0)
        pos, nxt = pos[ok], nxt[ok]
        pos = pos[self.tok[nxt] == b]
        out: IntArray = pos
        if a == b and pos.size > 1:  # in a run a a a ..., take the 1st, 3rd, ... pair of each run
            start = np.ones(pos.size, dtype=bool)
            start[1:] = self.nxt[pos[:-1]] != pos[1:]
            first = np.flatnonzero(start)
            offset = np.arange(pos.size) - first[np.cumsum(start) - 1]
            out = pos[offset % 2 == 0]
        return out

    def _pairs_at(self, pos: IntArray) -> tuple[IntArray, IntArray]:
        """The pair codes starting at ``pos`` (each with a right neighbour) and their weights."""
        return _codes(self.tok[pos], self.tok[self.nxt[pos]]), self.weight[pos].astype(np.int64)

    def merge(self, a: int, b: int, new: int, delta: dict[Pair, int]) -> None:
        """Replace every ``a, b`` by ``new``; add each pair's change of count to ``delta``."""
        left = self._occurrences(a, b)
        if not left.size:
            return
        right = self.nxt[left]
        before, after = self.prv[left], self.nxt[right]
        # the pairs that start at a merged position or just before one: their counts before ...
        old = _unique(np.concatenate([left, right[after >= 0], before[before >= 0]]))
        old_codes, old_w = self._pairs_at(old)
        self.tok[left] = new
        self.tok[right] = _DEAD
        self.nxt[left] = after
        self.prv[after[after >= 0]] = left[after >= 0]
        # ... and after (a neighbour before may itself have been merged away)
        before = before[before >= 0]
        new_pos = _unique(np.concatenate([left[after >= 0], before[self.tok[before] != _DEAD]]))
        new_codes, new_w = self._pairs_at(new_pos)
        codes = np.concatenate([old_codes, new_codes])
        order = np.argsort(codes)
        codes, weights = codes[order], np.concatenate([-old_w, new_w])[order]
        first = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        change = np.add.reduceat(weights, first)  # each pair's change of count, exact integers
        mask = (1 << _SHIFT) - 1
        for code, d in zip(codes[first].tolist(), change.tolist(), strict=True):
            if d:
                pair = (code >> _SHIFT, code & mask)
                delta[pair] = delta.get(pair, 0) + d
        self._index(new_pos, new_codes)

    def _index(self, pos: IntArray, codes: IntArray) -> None:
        """Record ``pos`` as where the pairs ``codes`` start."""
        if not pos.size:
            return
        order = np.argsort(codes, kind="stable")
        pos, codes = pos[order], codes[order]
        cut = (np.flatnonzero(codes[1:] != codes[:-1]) + 1).tolist()
        mask, where = (1 << _SHIFT) - 1, self.where
        # slices, not np.split: thousands of merges each index a few hundred pairs
        for start, end, code in zip([0, *cut], [*cut, pos.size], codes[[0, *cut]].tolist(), strict=True):
            where.setdefault((code >> _SHIFT, code & mask), []).append(pos[start:end])

    def tokens(self) -> list[list[int]]:
        """Each chunk's tokens now, in the order the chunks were given."""
        # merges only ever remove a position's right neighbour, so the live positions in order are the tokens
        return [self._live(start, end) for start, end in self.bounds]

    def _live(self, start: int, end: int) -> list[int]:
        part = self.tok[start:end]
        out: list[int] = part[part != _DEAD].tolist()
        return out


def encode(raw: bytes, merges: Sequence[Pair]) -> list[int]:
    """The tokens of one long chunk: each merge applied in rank order, in place.

    The same as merging the lowest-ranked pair present first, repeatedly: a merge's
    token only ever pairs into later merges, so the ranks applied only ever increase.
    """
    chunk = LongChunks([raw], [1])
    chunk.initial_counts()  # fills the index; the counts (and the changes below) are not needed
    scratch: dict[Pair, int] = {}
    for rank, (a, b) in enumerate(merges):
        if (a, b) in chunk.where:
            chunk.merge(a, b, 256 + rank, scratch)
            scratch.clear()
    return chunk.tokens()[0]
