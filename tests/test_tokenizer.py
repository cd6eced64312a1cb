"""The tokenizers: byte-level BPE against a naive reference, the worked example, exact round
trips, bounds, determinism, JSON, the UTF-8 decode rule and the sampling guard."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bevialm import bpe, tokenizer
from bevialm.data import DataError, Vocab
from bevialm.tokenizer import BPETokenizer, pre_split, train_bpe

ROOT = Path(__file__).resolve().parent.parent

# Text with the hard cases: emoji (4 bytes, one with a joiner and a skin tone), CJK (3 bytes),
# combining marks, accents, CRLF and blank lines, digits and contractions.
MIXED = (
    "Hello, world! It's 2026; we'll see.\r\n\n"
    "naïve café — e\u0301 a\u0300\u0323 ok\n"
    "日本語のテキスト、中文文本。한국어\n"
    "😀 👩🏽‍💻 🇫🇷 done\t\tend   \n"
) * 3


# --- a naive reference: recount every pair of the whole text after each merge --------------------


def naive_bpe(text: str, vocab_size: int, rule: str = "gpt2") -> tuple[list[tuple[int, int]], list[list[int]]]:
    """The textbook loop: count all pairs over all chunks, merge the most frequent (the smallest
    pair among equals), repeat. Returns the merges and the final token sequence of every chunk."""
    seqs = [list(chunk.encode("utf-8")) for chunk in pre_split(text, rule)]
    merges: list[tuple[int, int]] = []
    while len(merges) < vocab_size - 256:
        counts: Counter[tuple[int, int]] = Counter()
        for s in seqs:
            counts.update(zip(s, s[1:]))  # noqa: B905
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        seqs = [bpe.merge(s, best, 255 + len(merges)) for s in seqs]  # the graded task's plain merge
    return merges, seqs


@pytest.mark.parametrize("rule", ["gpt2", "none"])
@pytest.mark.parametrize(
    "text",
    ["aaabdaaabac", "the cat sat on the mat; the cat ate the rat.\n" * 3, "aaaaaaa", "ab" * 9, MIXED[:120]],
    ids=["wikipedia", "sentences", "one-letter-run", "alternating", "mixed"],
)
def test_fast_trainer_matches_the_naive_one(text: str, rule: str) -> None:
    merges, seqs = naive_bpe(text, 256 + 40, rule)
    tok = train_bpe(text, 256 + 40, pre_split_rule=rule)
    assert list(tok.merges) == merges
    assert tok.encode(text).tolist() == [t for s in seqs for t in s]


@given(
    st.text(alphabet=st.sampled_from("ab c\n'1é日"), max_size=80),
    st.integers(256, 300),
    st.sampled_from(["gpt2", "none"]),
)
def test_fast_trainer_matches_the_naive_one_on_drawn_texts(text: str, vocab_size: int, rule: str) -> None:
    if not text:
        return
    merges, seqs = naive_bpe(text, vocab_size, rule)
    tok = train_bpe(text, vocab_size, pre_split_rule=rule)
    assert list(tok.merges) == merges
    assert tok.encode(text).tolist() == [t for s in seqs for t in s]


def test_fast_trainer_matches_the_naive_one_on_a_real_text() -> None:
    text = (ROOT / "data.txt").read_text(encoding="utf-8")[:3000]
    merges, _ = naive_bpe(text, 400)
    assert list(train_bpe(text, 400).merges) == merges


# --- the worked example (docs/tokenizer.md), by hand --------------------------------------------


def test_wikipedia_worked_example_by_hand() -> None:
    a, b, c, d = (ord(x) for x in "abcd")
    tok = train_bpe("aaabdaaabac", 259, pre_split_rule="none")
    # "aa" occurs 4 times (overlaps counted) -> Z=256: Z a b d Z a b a c
    # "Za" and "ab" both occur twice: the tie goes to the smaller pair (97, 98) -> Y=257: Z Y d Z Y a c
    # "ZY" occurs twice -> X=258: X d X a c
    assert tok.merges == ((a, a), (a, b), (256, 257))
    ids = tok.encode("aaabdaaabac")
    assert ids.tolist() == [258, d, 258, a, c]
    assert tok.token_bytes(258) == b"aaab"
    assert tok.decode(ids) == "aaabdaaabac"


# --- round trips ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_bpe() -> BPETokenizer:
    return train_bpe(MIXED, 400)


@given(st.text(max_size=300))
def test_any_text_round_trips(text: str) -> None:
    # a tokenizer trained on other text: unseen characters fall back to their bytes
    tok = _MIXED_BPE
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert ((ids >= 0) & (ids < tok.vocab_size)).all()
    assert tok.decode(ids) == text
    assert tok.count_chars(ids) == len(text)


@given(st.text(max_size=120), st.integers(256, 320), st.sampled_from(["gpt2", "none"]))
def test_a_text_round_trips_through_its_own_tokenizer(text: str, vocab_size: int, rule: str) -> None:
    if not text:
        return
    tok = train_bpe(text, vocab_size, pre_split_rule=rule)
    assert tok.decode(tok.encode(text)) == text


_MIXED_BPE = train_bpe(MIXED, 400)


@pytest.mark.parametrize(
    "text",
    ["", "\n", "\r\n\r\n", "😀", "👩🏽‍💻🇫🇷", "日本語", "e\u0301\u0323", "\u200b\u00a0\t", "a" * 1000, MIXED],
    ids=["empty", "newline", "crlf", "emoji", "zwj-flag", "cjk", "combining", "odd-spaces", "long-run", "mixed"],
)
def test_hard_cases_round_trip(text: str, mixed_bpe: BPETokenizer) -> None:
    ids = mixed_bpe.encode(text)
    assert mixed_bpe.decode(ids) == text
    assert mixed_bpe.decode(ids.tolist()) == text
    assert mixed_bpe.count_chars(ids) == len(text)


def test_training_compresses_its_text(mixed_bpe: BPETokenizer) -> None:
    assert len(mixed_bpe.encode(MIXED)) < len(MIXED.encode("utf-8")) / 2


@given(st.text(max_size=200))
def test_pre_split_chunks_concatenate_to_the_text(text: str) -> None:
    chunks = pre_split(text)
    assert "".join(chunks) == text and all(chunks)


def test_pre_split_is_gpt2_style() -> None:
    assert pre_split("Hello world's 42 cats!!  \nok") == ["Hello", " world", "'s", " 42", " cats", "!!", "  ", "\n", "ok"]


def test_unknown_pre_split_is_refused() -> None:
    with pytest.raises(DataError, match="pre-split must be one of"):
        pre_split("x", "gpt4")
    with pytest.raises(DataError, match="pre-split must be one of"):
        train_bpe("x", 300, pre_split_rule="gpt4")


def test_a_lone_surrogate_is_one_clear_error(mixed_bpe: BPETokenizer) -> None:
    with pytest.raises(DataError, match=r"prompt contains '\\udce9' \(a lone surrogate, not a character\) at offset 2"):
        mixed_bpe.encode("ab\udce9", what="prompt")


# --- bounds and determinism -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 100, 255])
def test_a_vocabulary_below_256_is_refused_with_the_reason(size: int) -> None:
    with pytest.raises(DataError, match=f"vocab_size {size} is too small for a byte-level BPE: its first 256 tokens are the byte values"):
        train_bpe("hello", size)


@pytest.mark.parametrize("size", [2.5, "512", True, None])
def test_a_vocabulary_size_must_be_an_integer(size: Any) -> None:
    with pytest.raises(DataError, match="vocab_size must be an integer"):
        train_bpe("hello", size)


def test_bytes_only_is_allowed() -> None:
    tok = train_bpe("hello", 256)
    assert tok.vocab_size == 256 and tok.merges == ()
    assert tok.encode("hé").tolist() == [104, 0xC3, 0xA9]


def test_more_merges_than_the_text_allows_stops_early() -> None:
    tok = train_bpe("abcabc", 1000, pre_split_rule="none")
    # ab -> 256, then 256 c -> 257, then 257 257 -> 258: the text is one token, nothing is left to merge
    assert tok.merges == ((97, 98), (256, 99), (257, 257))
    assert tok.encode("abcabc").tolist() == [258]
    words = train_bpe("to be or not to be", 1000)
    assert words.vocab_size < 1000
    assert all(len(words.encode(chunk)) == 1 for chunk in pre_split("to be or not to be"))


def test_empty_text_is_refused() -> None:
    with pytest.raises(DataError, match="cannot train on an empty text"):
        train_bpe("", 300)


def test_the_same_text_gives_the_same_merges() -> None:
    first = train_bpe(MIXED, 350)
    second = train_bpe(MIXED, 350)
    assert first == second and first.merges == second.merges
    assert train_bpe(MIXED, 300).merges == first.merges[:44]  # a smaller vocabulary is a prefix


# --- JSON --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tok", [_MIXED_BPE, train_bpe(MIXED, 300, pre_split_rule="none"), Vocab.from_text(MIXED)], ids=["bpe", "bpe-none", "char"])
def test_json_round_trip(tok: tokenizer.Tokenizer, tmp_path: Path) -> None:
    text = json.dumps(tok.to_json())
    back = tokenizer.from_json(json.loads(text))
    assert back == tok and type(back) is type(tok)
    assert back.encode(MIXED).tolist() == tok.encode(MIXED).tolist()
    tokenizer.save(tok, tmp_path / "tok.json")
    assert tokenizer.load(tmp_path / "tok.json") == tok


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "must be a JSON object, got list"),
        ({"type": "wordpiece"}, "type must be one of"),
        ({"type": "char", "chars": "abc"}, "'chars' must be a list"),
        ({"type": "char", "chars": ["b", "a"]}, "sorted and unique"),
        ({"type": "bpe", "pre_split": "gpt2", "merges": {}}, "'merges' must be a list"),
        ({"type": "bpe", "pre_split": "gpt2", "merges": [[1]]}, "merge 0 must be a pair of token ids"),
        ({"type": "bpe", "pre_split": "gpt2", "merges": [[1, "2"]]}, "merge 0 must be a pair of token ids"),
        ({"type": "bpe", "pre_split": "gpt2", "merges": [[1, 2], [1, 300]]}, r"merge 1 is \(1, 300\), but only tokens 0..256 exist"),
        ({"type": "bpe", "pre_split": "gpt2", "merges": [[1, -2]]}, "merge 0 is"),
        ({"type": "bpe", "pre_split": "gpt2", "merges": [[1, 2], [1, 2]]}, r"merge 1 repeats merge 0"),
        ({"type": "bpe", "pre_split": "(a+)+$", "merges": []}, "pre-split must be one of"),
        ({"type": "bpe", "pre_split": 3, "merges": []}, "'pre_split' must be a name"),
    ],
)
def test_a_corrupt_tokenizer_is_one_clear_error(obj: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        tokenizer.from_json(obj)


def test_merges_must_be_a_tuple() -> None:
    with pytest.raises(DataError, match="merges must be a tuple of pairs"):
        BPETokenizer([(97, 98)])  # type: ignore[arg-type]


def test_loading_a_bad_tokenizer_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="tokenizer file '.*tok.json' is not UTF-8 JSON"):
        tokenizer.load(path)
    path.write_text('{"type": "bpe"}', encoding="utf-8")
    with pytest.raises(DataError, match="tokenizer file '.*tok.json': tokenizer 'merges'"):
        tokenizer.load(path)
    with pytest.raises(DataError, match="does not exist"):
        tokenizer.load(tmp_path / "missing.json")


# --- building from the trainer's flags ------------------------------------------------------------


def test_build_makes_what_the_flags_ask() -> None:
    assert tokenizer.build("abc") == Vocab(("a", "b", "c"))
    bpe = tokenizer.build((ROOT / "data.txt").read_text(encoding="utf-8"), "bpe")
    assert isinstance(bpe, BPETokenizer) and bpe.vocab_size == tokenizer.DEFAULT_BPE_VOCAB
    assert tokenizer.build(MIXED, "bpe", 300).vocab_size == 300
    assert tokenizer.describe(bpe) == "byte-level BPE, 512 tokens"
    assert tokenizer.describe(Vocab(("a", "b"))) == "characters, 2 tokens"
    with pytest.raises(DataError, match="--vocab_size applies to --tokenizer bpe"):
        tokenizer.build("abc", "char", 300)
    with pytest.raises(DataError, match="tokenizer must be one of"):
        tokenizer.build("abc", "words")


# --- decoding bytes that are not whole characters -------------------------------------------------


def test_a_character_cut_at_the_end_is_dropped(mixed_bpe: BPETokenizer) -> None:
    raw = "ok 😀".encode()
    for cut in range(1, 4):  # the emoji's first 1, 2 or 3 of 4 bytes
        assert mixed_bpe.decode(list(raw[: len(raw) - 4 + cut])) == "ok "
    assert mixed_bpe.decode(list(raw)) == "ok 😀"


def test_invalid_bytes_elsewhere_show_as_replacement_characters(mixed_bpe: BPETokenizer) -> None:
    assert mixed_bpe.decode([0x61, 0xFF, 0x62]) == "a\ufffdb"
    assert mixed_bpe.decode([0x80, 0x61]) == "\ufffda"  # a window that starts inside a character


@pytest.mark.parametrize("ids", [[[1, 2]], [1.5], [-1], [400]], ids=["2d", "float", "negative", "too-big"])
def test_decode_refuses_ids_that_are_not_tokens(ids: Any, mixed_bpe: BPETokenizer) -> None:
    with pytest.raises(DataError, match="decode: ids must"):
        mixed_bpe.decode(np.array(ids))


def test_count_chars_counts_characters_starting_in_the_tokens(mixed_bpe: BPETokenizer) -> None:
    ids = mixed_bpe.encode("a日b")
    assert mixed_bpe.count_chars(ids) == 3
    assert mixed_bpe.count_chars(np.array([0xE6, 0x97])) == 1  # a lead byte and a continuation byte
    assert mixed_bpe.count_chars(np.array([0x97, 0xA5])) == 0


# --- the sampling guard ---------------------------------------------------------------------------


@given(st.integers(0, 2**32 - 1))
def test_guarded_random_tokens_are_always_valid_utf8(seed: int) -> None:
    tok = _MIXED_BPE
    rng = np.random.default_rng(seed)
    guard = tokenizer.utf8_guard(tok, 3)
    assert guard is not None
    rows: list[list[int]] = [[], [], []]
    for _ in range(40):
        logits = guard.allow(rng.standard_normal((3, tok.vocab_size)))
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        chosen = np.array([rng.choice(tok.vocab_size, p=p / p.sum()) for p in probs])
        guard.advance(chosen)
        for row, t in zip(rows, chosen, strict=True):
            row.append(int(t))
    for row in rows:
        raw = b"".join(tok.token_bytes(t) for t in row)
        text = tok.decode(row)
        assert "\ufffd" not in text
        assert raw.startswith(text.encode("utf-8")) and len(raw) - len(text.encode("utf-8")) <= 3


def _valid_so_far(raw: bytes) -> bool:
    """Whether ``raw`` is valid UTF-8 or the beginning of some valid UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.reason == "unexpected end of data"
    return True


@pytest.mark.parametrize(
    "prefix",
    [b"", b"a", "日".encode()[:1], "日".encode()[:2], "😀".encode()[:2], b"\xe0", b"\xed", b"\xf0", b"\xf4"],
    ids=["start", "ascii", "cjk-1", "cjk-2", "emoji-2", "e0", "ed", "f0", "f4"],
)
def test_the_guard_allows_exactly_the_tokens_that_keep_utf8_valid(prefix: bytes, mixed_bpe: BPETokenizer) -> None:
    guard = tokenizer.utf8_guard(mixed_bpe, 1)
    assert guard is not None
    for byte in prefix:  # byte tokens are the byte values
        guard.advance(np.array([byte]))
    allowed = np.isfinite(guard.allow(np.zeros((1, mixed_bpe.vocab_size))))[0]
    expected = [_valid_so_far(prefix + mixed_bpe.token_bytes(t)) for t in range(mixed_bpe.vocab_size)]
    assert allowed.tolist() == expected
    assert allowed.any()


def test_a_char_vocabulary_needs_no_guard() -> None:
    assert tokenizer.utf8_guard(Vocab(("a", "b")), 2) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=30), st.integers(0, 3), st.integers(0, 3))
def test_the_fast_merge_is_the_graded_reference_merge(tokens: list[int], a: int, b: int) -> None:
    """The trainer's inner-loop merge and bpe.merge (the graded task's reference) agree,
    overlaps (``a a a``) included."""
    assert tokenizer._merge_pair(tokens, a, b, 99) == bpe.merge(tokens, (a, b), 99)
