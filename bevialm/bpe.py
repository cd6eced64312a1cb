"""The BPE merge step in minbpe's exercise shape: five small functions a student writes.

:mod:`bevialm.tokenizer` trains and encodes fast (pre-split chunks, incremental pair
counts, a heap, a cache); this module is the same algorithm written plainly, one idea
per function, for the graded exercise (``docs/tokenizer.md``, "Byte-pair encoding, by
hand"). On a text trained as one chunk (``pre_split_rule="none"``) both learn the same
merges and encode alike (``tests/test_grading_bpe.py`` checks it).

Tokens 0..255 are the byte values; merge ``i`` (a pair of earlier tokens) makes token
``256 + i``. A text is a ``str`` (encoded as UTF-8) or raw ``bytes`` (any bytes, UTF-8
or not). Merges are a list of pairs in the order they were learned: the rank of a pair
is its index.
"""

from __future__ import annotations

N_BYTES = 256
"""Byte tokens: every vocabulary starts with one token per byte value."""


def _bytes_of(text: str | bytes) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)


def get_stats(ids: list[int]) -> dict[tuple[int, int], int]:
    """How often each pair of adjacent tokens occurs in ``ids``, overlaps included
    (``a a a`` holds the pair ``(a, a)`` twice)."""
    counts: dict[tuple[int, int], int] = {}
    for pair in zip(ids, ids[1:]):  # noqa: B905 - one shorter by design
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: tuple[int, int], idx: int) -> list[int]:
    """``ids`` with every occurrence of ``pair`` replaced by ``idx``, left to right and never
    overlapping: ``a a a`` with ``(a, a)`` becomes ``idx a``."""
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train(text: str | bytes, vocab_size: int) -> list[tuple[int, int]]:
    """The merges learned from ``text`` for a vocabulary of ``vocab_size`` tokens: merge the
    most frequent pair, ``vocab_size - 256`` times or until no pair is left. Ties go to the
    smallest pair ``(a, b)`` (the smaller first token, then the smaller second), so a text
    always gives the same merges."""
    ids = list(_bytes_of(text))
    merges: list[tuple[int, int]] = []
    while len(merges) < vocab_size - N_BYTES:
        stats = get_stats(ids)
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))
        ids = merge(ids, pair, N_BYTES + len(merges))
        merges.append(pair)
    return merges


def encode(text: str | bytes, merges: list[tuple[int, int]]) -> list[int]:
    """The tokens of ``text``: its bytes, then the merges in the order they were learned (at
    each step the present pair of lowest rank, which is how training applied them)."""
    ranks = {pair: i for i, pair in enumerate(merges)}
    ids = list(_bytes_of(text))
    while len(ids) >= 2:
        present = [pair for pair in get_stats(ids) if pair in ranks]
        if not present:
            break
        pair = min(present, key=ranks.__getitem__)
        ids = merge(ids, pair, N_BYTES + ranks[pair])
    return ids


def decode(ids: list[int], merges: list[tuple[int, int]]) -> str:
    """The text of ``ids``: the tokens' bytes joined and decoded as UTF-8, every byte that is
    not part of a whole character replaced by U+FFFD (``errors="replace"``), so any ids decode."""
    vocab = {i: bytes([i]) for i in range(N_BYTES)}
    for i, (a, b) in enumerate(merges):
        vocab[N_BYTES + i] = vocab[a] + vocab[b]
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
