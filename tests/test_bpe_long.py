"""The BPE trainer against a plain reference of its algorithm (recount every pair, merge the most
frequent, ties to the smallest pair, rewrite every chunk left to right), on random texts: short
words, long chunks (merged in place by bevialm.bpe_long) and both at once. Merges must be equal,
ties included; the cached encodings must be the tokenizer's own."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bevialm import bpe, bpe_long, tokenizer


def reference_bpe(text: str, vocab_size: int, rule: str) -> list[tuple[int, int]]:
    """The algorithm, spelled out: no index, no heap, every count from scratch at every merge."""
    chunks = Counter(tokenizer.pre_split(text, rule))
    words = {c: list(c.encode("utf-8")) for c in chunks}
    merges: list[tuple[int, int]] = []
    while len(merges) < vocab_size - 256:
        counts: Counter[tuple[int, int]] = Counter()
        for c, f in chunks.items():
            for pair in zip(words[c], words[c][1:]):  # noqa: B905
                counts[pair] += f
        if not counts:
            break
        best = max(counts.values())
        pair = min(p for p, n in counts.items() if n == best)
        new = 256 + len(merges)
        merges.append(pair)
        for c in words:
            words[c] = bpe.merge(words[c], pair, new)  # the graded task's plain merge
    return merges


ALPHABETS = ["ab", "abc", "aab ", "ACGT", "ab c\n", "aé€😀 b"]


@st.composite
def texts(draw: st.DrawFn) -> str:
    alphabet = draw(st.sampled_from(ALPHABETS))
    parts = draw(st.lists(st.text(alphabet, min_size=1, max_size=120), min_size=1, max_size=6))
    return "".join(parts)


@settings(max_examples=150, deadline=None)
@given(text=texts(), extra=st.integers(0, 60), rule=st.sampled_from(["gpt2", "none"]), long=st.sampled_from([1, 2, 3, 8, 256]))
def test_the_trainer_makes_the_references_merges(text: str, extra: int, rule: str, long: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bpe_long, "LONG_CHUNK", long)  # 1: every chunk in place; 256: only the longest
        trained = tokenizer.train_bpe(text, 256 + extra, pre_split_rule=rule)
    assert list(trained.merges) == reference_bpe(text, 256 + extra, rule)
    fresh = tokenizer.from_json(trained.to_json())  # nothing cached: encodes by the merges alone
    assert trained.encode(text).tolist() == fresh.encode(text).tolist()
    assert trained.decode(trained.encode(text)) == text


@pytest.mark.parametrize("text", ["a" * 1000, "ab" * 700, "aab" * 400 + "b", "ACGT" * 300 + "A" * 77])
def test_long_repeats_and_runs_match_the_reference(text: str) -> None:
    """Runs of one token (overlapping pairs) and periodic text: the cases a rewrite resolves left to right."""
    assert list(tokenizer.train_bpe(text, 300).merges) == reference_bpe(text, 300, "gpt2")


@settings(max_examples=60, deadline=None)
@given(text=texts(), extra=st.integers(0, 60))
def test_long_chunks_encode_as_the_rank_loop_does(text: str, extra: int) -> None:
    """Encoding a long chunk in place, merge by merge, gives the tokens of the lowest-rank-first loop."""
    bpe = tokenizer.train_bpe(text * 3, 256 + extra, pre_split_rule="none")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bpe_long, "LONG_CHUNK", 1 << 30)  # never in place: the rank loop
        expected = tokenizer.from_json(bpe.to_json()).encode(text).tolist()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bpe_long, "LONG_CHUNK", 1)  # always in place
        assert tokenizer.from_json(bpe.to_json()).encode(text).tolist() == expected
