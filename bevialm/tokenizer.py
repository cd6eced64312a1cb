"""Tokenizers: one small interface, two implementations (``docs/tokenizer.md``).

A :class:`Tokenizer` turns text into token ids and back:

- ``encode(text, *, what="text") -> ids`` (an int64 array) and ``decode(ids) -> str``;
- ``vocab_size``: ids lie in ``[0, vocab_size)``;
- ``count_chars(ids)``: how many characters start in those tokens (bits per character);
- ``to_json()``: a JSON object that :func:`from_json` turns back into an equal tokenizer.

The character vocabulary :class:`bevialm.data.Vocab` (one token per character of
the training text) is one; :class:`BPETokenizer`, a byte-level byte-pair
encoding in the GPT-2 / minbpe style, is the other: tokens 0..255 are the 256
byte values, and token ``256 + i`` is merge ``i``, the concatenation of an
earlier pair of tokens. Every string is a sequence of bytes, so every string
encodes and round-trips exactly.

**Training** (:func:`train_bpe`) never recounts the whole text. The text is
pre-split into chunks (GPT-2's pattern: words with their leading space,
numbers, punctuation runs, whitespace; merges never cross a chunk boundary),
the unique chunks are counted once, and the pair counts are kept weighted by
chunk frequency together with an index pair -> chunks holding it. A merge then
rewrites only the chunks in its index entry and corrects the counts of the
pairs those chunks lose and gain. The most frequent pair comes from a heap with
lazy deletion. Chunks of 256 bytes or more (a text without spaces is one chunk) are
merged in place instead (:mod:`bevialm.bpe_long`). **Ties** between equally frequent pairs go to the smallest pair
``(a, b)`` of token ids (compared as tuples: the smaller first id, then the
smaller second id), so the same text always gives the same merges.

**Encoding** applies the merges by rank to each chunk (the lowest-ranked pair
present first, which is the order training applied them in) and caches the
tokens of each chunk, since a text repeats its words.

**Decoding** joins the tokens' bytes and decodes them as UTF-8. The one rule for
bytes that are not whole characters: an incomplete character at the very end
(a generation that stopped inside a multi-byte character) is dropped; any other
invalid byte becomes U+FFFD. Encoding never produces either, and sampling never
produces the second (:class:`Utf8Guard`).

(Over 500 lines: the trainer shares the pre-split, the merge rewrite and :class:`BPETokenizer`
with the rest, and :func:`build` calls it, so a module of its own would import this one and be
imported by it; its long-chunk part is :mod:`bevialm.bpe_long`.)
"""

from __future__ import annotations

import codecs
import heapq
import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from typing import Any, Protocol

import numpy as np

from bevialm import bpe_long
from bevialm.data import DataError, Vocab, read_bytes
from bevialm.types import IntArray

N_BYTES = 256
"""Byte tokens: every BPE vocabulary starts with one token per byte value."""

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
"""GPT-2's pre-split pattern written for Python's ``re``: ``\\p{L}`` becomes ``[^\\W\\d_]``
(word characters that are neither digits nor ``_``) and ``\\p{N}`` becomes ``\\d``.
Its alternatives cover every character, so the chunks always concatenate to the text."""

PRE_SPLITS: Mapping[str, re.Pattern[str] | None] = {"gpt2": re.compile(GPT2_PATTERN), "none": None}
"""Pre-split rules by name; checkpoints store the name, never a pattern of their own."""

KINDS = ("char", "bpe")
"""The tokenizers the trainer builds (``--tokenizer``)."""

DEFAULT_BPE_VOCAB = 512
"""``--vocab_size`` when ``--tokenizer bpe`` is given without it."""

MAX_DECODED_BYTES = 1 << 28
"""The most bytes a BPE's tokens may stand for together (256 MiB): loading builds every token's
bytes, so merges that double a token's length each time (58 KB of them reach 2 GB) are refused
from their lengths, counted before anything is built. Each token of a trained BPE occurs in its
training text, so this is far above what training on any text that fits in memory builds in practice."""

_UNRANKED = 1 << 62
"""The rank of a pair that is not a merge: above every real rank."""

_CACHE_LIMIT = 1 << 17
"""Chunks whose tokens :meth:`BPETokenizer.encode` remembers (a text repeats its words)."""


class Tokenizer(Protocol):
    """What training, checkpoints and sampling need from a tokenizer."""

    @property
    def vocab_size(self) -> int:
        """Number of tokens: ids lie in ``[0, vocab_size)``."""
        ...

    def encode(self, text: str, *, what: str = "text") -> IntArray:
        """``text`` as int64 ids; ``what`` names the text in an error (``"prompt"``)."""
        ...

    def decode(self, ids: IntArray | Sequence[int]) -> str:
        """The text of a 1-D sequence of ids."""
        ...

    def count_chars(self, ids: IntArray) -> int:
        """The number of characters that start in ``ids`` (``len(text)`` for ``encode(text)``)."""
        ...

    def to_json(self) -> dict[str, Any]:
        """A JSON object :func:`from_json` reads back."""
        ...


def _check_ids(ids: IntArray | Sequence[int], size: int) -> IntArray:
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"decode: ids must be a 1-D integer sequence, got {arr.dtype} of shape {arr.shape}")
    if arr.min() < 0 or arr.max() >= size:
        raise DataError(f"decode: ids must lie in [0, {size}), got values from {arr.min()} to {arr.max()}")
    return arr


def _utf8(chunk: str, text: str, what: str) -> bytes:
    try:
        return chunk.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = chunk[e.start]
        raise DataError(
            f"{what} contains {bad!r} (a lone surrogate, not a character) at offset {text.find(bad)}: "
            "it has no UTF-8 bytes"
        ) from None


# --- UTF-8 as a state machine: which byte may come next ------------------------------------------

# States of a UTF-8 reader: between characters (0); waiting for 1, 2 or 3 continuation bytes
# (1-3); the four lead bytes whose next byte has a narrower range (E0, ED, F0, F4); or failed.
_START, _NEED1, _NEED2, _NEED3, _AFTER_E0, _AFTER_ED, _AFTER_F0, _AFTER_F4, _BAD = range(9)


def _utf8_byte_table() -> np.ndarray[Any, np.dtype[np.int8]]:
    """``table[state, byte]``: the reader's state after ``byte`` (Unicode's Table 3-7)."""
    t = np.full((9, N_BYTES), _BAD, dtype=np.int8)
    t[_START, 0x00:0x80] = _START
    t[_START, 0xC2:0xE0] = _NEED1
    t[_START, 0xE0] = _AFTER_E0
    t[_START, 0xE1:0xF0] = _NEED2
    t[_START, 0xED] = _AFTER_ED
    t[_START, 0xF0] = _AFTER_F0
    t[_START, 0xF1:0xF4] = _NEED3
    t[_START, 0xF4] = _AFTER_F4
    t[_NEED1, 0x80:0xC0] = _START
    t[_NEED2, 0x80:0xC0] = _NEED1
    t[_NEED3, 0x80:0xC0] = _NEED2
    t[_AFTER_E0, 0xA0:0xC0] = _NEED1
    t[_AFTER_ED, 0x80:0xA0] = _NEED1
    t[_AFTER_F0, 0x90:0xC0] = _NEED2
    t[_AFTER_F4, 0x80:0x90] = _NEED2
    return t


class Utf8Guard:
    """Keeps sampled byte-level text valid UTF-8, one row per sample.

    Before each choice, :meth:`allow` sets to ``-inf`` the logits of the tokens
    whose bytes cannot continue a row's text as valid UTF-8 (a byte token 0xFF,
    a continuation byte between characters, ...); :meth:`advance` moves each row
    past its chosen token. A byte token always fits, so some token is always
    allowed. Rows start between characters: a prompt is whole text.
    """

    def __init__(self, transitions: np.ndarray[Any, np.dtype[np.int8]], batch: int) -> None:
        self._next = transitions
        self._state = np.full(batch, _START, dtype=np.intp)

    def allow(self, logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """``logits`` ``(B, V)`` with the tokens that would break UTF-8 set to ``-inf`` (a copy)."""
        bad = self._next[self._state] == _BAD
        return np.where(bad, -np.inf, logits)

    def advance(self, chosen: IntArray) -> None:
        """Record the token each row chose."""
        self._state = self._next[self._state, chosen].astype(np.intp)


# --- byte-level BPE ------------------------------------------------------------------------------


def _merge_pair(tokens: list[int], a: int, b: int, new: int) -> list[int]:
    """``tokens`` with every non-overlapping ``a, b`` (left to right) replaced by ``new``.

    :func:`bevialm.bpe.merge` is the same rule written for students (the graded ``bpe`` task);
    this copy is the trainer's and encoder's inner loop, so it compares two ints per position
    instead of building a tuple, and ``tests/test_tokenizer.py`` holds the two equal.
    """
    out: list[int] = []
    i, n = 0, len(tokens)
    while i < n:
        if i + 1 < n and tokens[i] == a and tokens[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


def pre_split(text: str, rule: str = "gpt2") -> list[str]:
    """The chunks BPE works within: ``rule`` ``"gpt2"`` (:data:`GPT2_PATTERN`) or ``"none"`` (the whole text)."""
    if rule not in PRE_SPLITS:
        raise DataError(f"BPE: pre-split must be one of {sorted(PRE_SPLITS)}, got {rule!r}")
    pattern = PRE_SPLITS[rule]
    if pattern is None:
        return [text] if text else []
    return pattern.findall(text)


def _check_merges(merges: tuple[tuple[int, int], ...]) -> dict[tuple[int, int], int]:
    """Each merge's rank, once every merge is checked to be a new pair of earlier tokens and
    the tokens' bytes, counted arithmetically, are known to fit :data:`MAX_DECODED_BYTES`."""
    ranks: dict[tuple[int, int], int] = {}
    lengths = [1] * N_BYTES
    total = N_BYTES
    for i, pair in enumerate(merges):
        if (
            not isinstance(pair, tuple)
            or len(pair) != 2
            or not all(isinstance(t, int) and not isinstance(t, bool) for t in pair)
        ):
            raise DataError(f"BPE: merge {i} must be a pair of token ids, got {pair!r}")
        a, b = pair
        if not (0 <= a < N_BYTES + i and 0 <= b < N_BYTES + i):
            raise DataError(f"BPE: merge {i} is {pair}, but only tokens 0..{N_BYTES + i - 1} exist before it")
        if pair in ranks:
            raise DataError(f"BPE: merge {i} repeats merge {ranks[pair]} {pair}")
        ranks[pair] = i
        lengths.append(lengths[a] + lengths[b])
        total += lengths[-1]
        if total > MAX_DECODED_BYTES:  # stop counting here: the numbers can grow without end
            raise DataError(
                f"BPE: merge {i} makes token {N_BYTES + i} of {lengths[-1]:,} bytes and the tokens "
                f"{total:,} bytes in all, over the {MAX_DECODED_BYTES:,} a tokenizer may hold: "
                "these merges build ever longer tokens, as training on a text never does"
            )
    return ranks


@dataclass(frozen=True)
class BPETokenizer:
    """A byte-level BPE: 256 byte tokens, then token ``256 + i`` = ``merges[i]`` joined.

    ``merges[i]`` is a pair of earlier tokens (each id below ``256 + i``), all pairs
    distinct; ``pre_split`` names the chunking rule (:func:`pre_split`). Two
    tokenizers are equal when their merges and pre-split are.
    """

    merges: tuple[tuple[int, int], ...]
    pre_split: str = "gpt2"
    _ranks: dict[tuple[int, int], int] = field(init=False, repr=False, compare=False)
    _bytes: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    _cache: dict[str, list[int]] = field(init=False, repr=False, compare=False)
    _starts: IntArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pre_split not in PRE_SPLITS:
            raise DataError(f"BPE: pre-split must be one of {sorted(PRE_SPLITS)}, got {self.pre_split!r}")
        if not isinstance(self.merges, tuple):
            raise DataError("BPE: merges must be a tuple of pairs of token ids")
        ranks = _check_merges(self.merges)
        pieces = [bytes([b]) for b in range(N_BYTES)]
        for a, b in self.merges:
            pieces.append(pieces[a] + pieces[b])
        object.__setattr__(self, "_ranks", ranks)
        object.__setattr__(self, "_bytes", tuple(pieces))
        object.__setattr__(self, "_cache", {})
        # characters starting in each token: its bytes that are not UTF-8 continuation bytes (10xxxxxx)
        starts = [int((b & 0xC0) != 0x80) for b in range(N_BYTES)]
        for a, b in self.merges:
            starts.append(starts[a] + starts[b])
        object.__setattr__(self, "_starts", np.array(starts, dtype=np.int64))

    @property
    def vocab_size(self) -> int:
        return N_BYTES + len(self.merges)

    def token_bytes(self, token: int) -> bytes:
        """The bytes token ``token`` stands for."""
        return self._bytes[token]

    def _encode_chunk(self, raw: bytes) -> list[int]:
        if len(raw) >= bpe_long.LONG_CHUNK:  # merge by merge in place: linear, however long the chunk
            return bpe_long.encode(raw, self.merges)
        tokens = list(raw)
        ranks = self._ranks
        while len(tokens) > 1:
            # the rank of every adjacent pair (a C-level map); the lowest is merged first
            pair_ranks = list(map(ranks.get, zip(tokens, tokens[1:]), repeat(_UNRANKED)))  # noqa: B905
            rank = min(pair_ranks)
            if rank == _UNRANKED:
                break
            if pair_ranks.count(rank) == 1:  # the usual case: the pair occurs once
                i = pair_ranks.index(rank)
                tokens[i : i + 2] = [N_BYTES + rank]
            else:
                a, b = self.merges[rank]
                tokens = _merge_pair(tokens, a, b, N_BYTES + rank)
        return tokens

    def encode(self, text: str, *, what: str = "text") -> IntArray:
        """``text`` as int64 ids. Every string encodes except one holding a lone surrogate."""
        chunks = pre_split(text, self.pre_split)
        if not chunks:
            return np.zeros(0, dtype=np.int64)
        # Each distinct chunk is encoded once (and remembered across calls); the ids of the
        # whole text are then gathered from the chunks' tokens in one vectorised step.
        unique = list(dict.fromkeys(chunks))
        cache, keep = self._cache, self.pre_split != "none"
        pieces: list[list[int]] = []
        for chunk in unique:
            tokens = cache.get(chunk)
            if tokens is None:
                tokens = self._encode_chunk(_utf8(chunk, text, what))
                if keep and len(cache) < _CACHE_LIMIT:
                    cache[chunk] = tokens
            pieces.append(tokens)
        lengths = np.fromiter(map(len, pieces), dtype=np.intp, count=len(pieces))
        flat = np.fromiter(chain.from_iterable(pieces), dtype=np.int64, count=int(lengths.sum()))
        position = {chunk: i for i, chunk in enumerate(unique)}
        which = np.fromiter(map(position.__getitem__, chunks), dtype=np.intp, count=len(chunks))
        n = lengths[which]
        src_start = (np.cumsum(lengths) - lengths)[which]  # where each chunk's tokens are in flat
        dst_start = np.cumsum(n) - n  # where they go in the output
        return flat[np.repeat(src_start - dst_start, n) + np.arange(int(n.sum()))]

    def decode(self, ids: IntArray | Sequence[int]) -> str:
        """The text of ``ids``: their bytes as UTF-8, an incomplete last character dropped
        and any other invalid byte shown as U+FFFD (module docstring)."""
        arr = _check_ids(ids, self.vocab_size)
        raw = b"".join(map(self._bytes.__getitem__, arr.tolist()))
        # final=False: the incremental decoder keeps an incomplete trailing character back.
        return codecs.getincrementaldecoder("utf-8")("replace").decode(raw, final=False)

    def count_chars(self, ids: IntArray) -> int:
        return int(self._starts[np.asarray(ids, dtype=np.int64)].sum())

    def utf8_transitions(self) -> np.ndarray[Any, np.dtype[np.int8]]:
        """``(9, vocab_size)``: the UTF-8 reader's state after each token, from each state."""
        table = np.empty((9, self.vocab_size), dtype=np.int8)
        table[:, :N_BYTES] = _utf8_byte_table()
        for i, (a, b) in enumerate(self.merges):  # token a, then token b
            table[:, N_BYTES + i] = table[table[:, a], b]
        return table

    def to_json(self) -> dict[str, Any]:
        return {"type": "bpe", "pre_split": self.pre_split, "merges": [list(p) for p in self.merges]}


def _pair_counts(words: Sequence[list[int]], freqs: Sequence[int]) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], set[int]]]:
    counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, (word, f) in enumerate(zip(words, freqs, strict=True)):
        for pair in zip(word, word[1:]):  # noqa: B905 - lengths differ by one by design
            counts[pair] = counts.get(pair, 0) + f
            holders = where.get(pair)
            if holders is None:
                where[pair] = {w}
            else:
                holders.add(w)
    return counts, where


def check_bpe_vocab_size(vocab_size: object, flag: str = "vocab_size") -> int:
    """``vocab_size`` if it is an integer of at least 256, else a one-line :class:`DataError`."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise DataError(f"{flag} must be an integer, got {vocab_size!r}")
    if vocab_size < N_BYTES:
        raise DataError(
            f"{flag} {vocab_size} is too small for a byte-level BPE: its first {N_BYTES} tokens are the "
            f"byte values, so any text can be encoded; ask for {N_BYTES} (bytes only) or more"
        )
    return vocab_size


def train_bpe(text: str, vocab_size: int, *, pre_split_rule: str = "gpt2") -> BPETokenizer:
    """A byte-level BPE of up to ``vocab_size`` tokens learned from ``text``.

    Merges the most frequent pair of adjacent tokens (ties: the smallest pair)
    until ``vocab_size - 256`` merges are made or no pair is left (every chunk is
    a single token): the result's ``vocab_size`` is then smaller than asked.
    Chunks of :data:`bevialm.bpe_long.LONG_CHUNK` bytes or more are merged in place
    by :class:`bevialm.bpe_long.LongChunks`, so time and memory stay linear in the text.
    """
    vocab_size = check_bpe_vocab_size(vocab_size)
    if not text:
        raise DataError("BPE: cannot train on an empty text")
    chunks = Counter(pre_split(text, pre_split_rule))
    raw = [_utf8(c, text, "BPE training text") for c in chunks]
    is_long = [len(r) >= bpe_long.LONG_CHUNK for r in raw]
    words = [list(r) for r, long in zip(raw, is_long, strict=True) if not long]
    freqs = [f for f, long in zip(chunks.values(), is_long, strict=True) if not long]
    longs = bpe_long.LongChunks(
        [r for r, long in zip(raw, is_long, strict=True) if long],
        [f for f, long in zip(chunks.values(), is_long, strict=True) if long],
    )
    counts, where = _pair_counts(words, freqs)
    for pair, c in longs.initial_counts().items():
        counts[pair] = counts.get(pair, 0) + c
    merges = _merge_loop(words, freqs, longs, counts, where, vocab_size - N_BYTES)
    tokenizer = BPETokenizer(tuple(merges), pre_split_rule)
    if pre_split_rule != "none":  # the chunks' final tokens are their encodings: encoding the text is then warm
        final = iter(words), iter(longs.tokens())
        tokens = (next(final[long]) for long in is_long)
        tokenizer._cache.update(islice(zip(chunks, tokens, strict=True), _CACHE_LIMIT))
    return tokenizer


def _merge_loop(
    words: list[list[int]],
    freqs: list[int],
    longs: bpe_long.LongChunks,
    counts: dict[tuple[int, int], int],
    where: dict[tuple[int, int], set[int]],
    n_merges: int,
) -> list[tuple[int, int]]:
    """Up to ``n_merges`` merges, each of the most frequent pair (a heap with lazy deletion),
    rewriting only the words that hold it and merging in place in the long chunks."""
    heap = [(-c, a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges:
        while heap and counts.get((heap[0][1], heap[0][2])) != -heap[0][0]:
            heapq.heappop(heap)  # stale: the pair's count changed since this entry was pushed
        if not heap:
            break
        _, a, b = heapq.heappop(heap)
        new = N_BYTES + len(merges)
        merges.append((a, b))
        delta: dict[tuple[int, int], int] = {}
        for w in where.pop((a, b), ()):
            word, f = words[w], freqs[w]
            merged = _merge_pair(word, a, b, new)
            words[w] = merged
            old_pairs = list(zip(word, word[1:]))  # noqa: B905
            new_pairs = list(zip(merged, merged[1:]))  # noqa: B905
            for pair in old_pairs:
                delta[pair] = delta.get(pair, 0) - f
            for pair in new_pairs:
                delta[pair] = delta.get(pair, 0) + f
            kept = set(new_pairs)
            for pair in set(old_pairs) - kept:
                holders = where.get(pair)
                if holders is not None:
                    holders.discard(w)
            for pair in kept:
                where.setdefault(pair, set()).add(w)
        if longs.where:
            longs.merge(a, b, new, delta)
        for pair, d in delta.items():
            if d:
                c = counts.get(pair, 0) + d
                if c > 0:
                    counts[pair] = c
                    heapq.heappush(heap, (-c, pair[0], pair[1]))
                else:
                    counts.pop(pair, None)
                    where.pop(pair, None)
                    longs.where.pop(pair, None)
        counts.pop((a, b), None)
    return merges


# --- building, saving and loading ----------------------------------------------------------------


def build(text: str, kind: str = "char", vocab_size: int | None = None) -> Tokenizer:
    """The tokenizer the trainer uses for ``text``: ``--tokenizer kind --vocab_size N``."""
    if kind == "char":
        if vocab_size is not None:
            raise DataError("--vocab_size applies to --tokenizer bpe; a char vocabulary is the text's characters")
        return Vocab.from_text(text)
    if kind == "bpe":
        return train_bpe(text, DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size)
    raise DataError(f"tokenizer must be one of {KINDS}, got {kind!r}")


def describe(tokenizer: Tokenizer) -> str:
    """``"characters, 65 tokens"`` or ``"byte-level BPE, 512 tokens"``."""
    name = "byte-level BPE" if isinstance(tokenizer, BPETokenizer) else "characters"
    return f"{name}, {tokenizer.vocab_size:,} tokens"


def from_json(obj: object) -> Tokenizer:
    """The tokenizer ``to_json`` described; a one-line :class:`DataError` for anything else."""
    if not isinstance(obj, dict):
        raise DataError(f"tokenizer must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if kind == "char":
        chars = obj.get("chars")
        if not isinstance(chars, list):
            raise DataError("tokenizer 'chars' must be a list of characters")
        return Vocab(tuple(chars))
    if kind == "bpe":
        merges = obj.get("merges")
        rule = obj.get("pre_split")
        if not isinstance(merges, list) or not all(isinstance(p, list) for p in merges):
            raise DataError("tokenizer 'merges' must be a list of [a, b] pairs")
        if not isinstance(rule, str):
            raise DataError(f"tokenizer 'pre_split' must be a name, got {rule!r}")
        return BPETokenizer(tuple(tuple(p) for p in merges), rule)  # BPETokenizer checks each pair
    raise DataError(f"tokenizer type must be one of {KINDS}, got {kind!r}")


def save(tokenizer: Tokenizer, path: str | os.PathLike[str]) -> None:
    """Write ``tokenizer`` to ``path`` as JSON."""
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        json.dump(tokenizer.to_json(), f)
        f.write("\n")


def load(path: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer :func:`save` wrote to ``path``; one-line :class:`DataError` otherwise."""
    name = os.fspath(path)
    raw = read_bytes(name, "tokenizer file")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"tokenizer file '{name}' is not UTF-8 JSON ({e})") from None
    try:
        return from_json(obj)
    except DataError as e:
        raise DataError(f"tokenizer file '{name}': {e}") from None


def utf8_guard(tokenizer: Tokenizer, batch: int) -> Utf8Guard | None:
    """A :class:`Utf8Guard` for a byte-level tokenizer; None when every token is whole characters."""
    if isinstance(tokenizer, BPETokenizer):
        return Utf8Guard(tokenizer.utf8_transitions(), batch)
    return None
