"""The data pipeline: vocabulary, encode/decode, file loading errors, split and batches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bevialm.data import DataError, Vocab, get_batch, load_text, split

# ---------------------------------------------------------------- vocabulary


def test_vocab_is_the_sorted_unique_characters() -> None:
    vocab = Vocab.from_text("hello world\n")
    assert vocab.chars == ("\n", " ", "d", "e", "h", "l", "o", "r", "w")
    assert vocab.size == 9
    assert vocab.itos[4] == "h"
    assert vocab.stoi["h"] == 4
    assert all(vocab.stoi[c] == i for i, c in enumerate(vocab.itos))


def test_vocab_is_a_value() -> None:
    assert Vocab.from_text("abca") == Vocab(("a", "b", "c"))
    assert hash(Vocab.from_text("cab")) == hash(Vocab(("a", "b", "c")))
    with pytest.raises(TypeError):
        Vocab.from_text("ab").stoi["z"] = 3  # type: ignore[index]


@pytest.mark.parametrize(
    "chars",
    [(), ("b", "a"), ("a", "a"), ("ab",), ("",), ["a", "b"]],
    ids=["empty", "unsorted", "duplicate", "multichar", "emptychar", "list"],
)
def test_vocab_rejects_bad_chars(chars: Any) -> None:
    with pytest.raises(DataError, match="vocabulary"):
        Vocab(chars)


def test_vocab_from_empty_text_is_an_error() -> None:
    with pytest.raises(DataError, match="empty"):
        Vocab.from_text("")


def test_encode_gives_int64_ids() -> None:
    vocab = Vocab.from_text("abc")
    ids = vocab.encode("cab")
    assert ids.dtype == np.int64
    assert ids.tolist() == [2, 0, 1]
    assert vocab.encode("").dtype == np.int64
    assert vocab.encode("").shape == (0,)


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=200))
def test_encode_decode_round_trip(text: str) -> None:
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert ids.tolist() == [vocab.stoi[c] for c in text]
    assert vocab.decode(ids) == text
    assert vocab.decode(ids.tolist()) == text


def test_round_trip_of_multibyte_and_newline_variants() -> None:
    text = "naïve café\r\n😀 – ok\n"
    vocab = Vocab.from_text(text)
    assert vocab.decode(vocab.encode(text)) == text


def test_unknown_characters_are_named_in_order_of_appearance() -> None:
    vocab = Vocab.from_text("abc ")
    with pytest.raises(DataError) as info:
        vocab.encode("a Z\tbZ", what="prompt")
    assert str(info.value) == "prompt contains characters not in the vocabulary: 'Z', '\\t'"


def test_many_unknown_characters_are_summarised() -> None:
    vocab = Vocab.from_text("a")
    with pytest.raises(DataError, match=r"'B', 'C', .*, 'U' and 5 more$"):
        vocab.encode("aBCDEFGHIJKLMNOPQRSTUVWXYZ")


def test_unknown_character_beyond_the_last_code_point() -> None:
    # searchsorted puts a character above every vocabulary entry past the end: still reported
    vocab = Vocab.from_text("ab")
    with pytest.raises(DataError, match="'😀'"):
        vocab.encode("a😀")


def test_decode_rejects_bad_ids() -> None:
    vocab = Vocab.from_text("abc")
    assert vocab.decode([]) == ""
    with pytest.raises(DataError, match=r"\[0, 3\).*from 0 to 3"):
        vocab.decode([0, 3])
    with pytest.raises(DataError, match="from -1"):
        vocab.decode(np.array([-1]))
    with pytest.raises(DataError, match="1-D integer"):
        vocab.decode(np.array([0.0, 1.0]))
    with pytest.raises(DataError, match="1-D integer"):
        vocab.decode(np.zeros((2, 2), dtype=np.int64))


# ---------------------------------------------------------------- load_text


def test_load_text_reads_exact_utf8(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes("line one\r\nünïcode 😀\n".encode())
    assert load_text(path) == "line one\r\nünïcode 😀\n"
    assert load_text(str(path)) == "line one\r\nünïcode 😀\n"


def _one_line_error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_text(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert isinstance(info.value, ValueError)
    return message


def test_load_text_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in _one_line_error(tmp_path / "nope.txt")


def test_load_text_directory(tmp_path: Path) -> None:
    assert "is a directory" in _one_line_error(tmp_path)


def test_load_text_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    assert "is empty" in _one_line_error(path)


def test_load_text_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("abc café".encode("latin-1"))
    assert "not valid UTF-8 (byte 0xe9 at offset 7)" in _one_line_error(path)


def test_load_text_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Permission bits do not stop root, so simulate the OSError os.open() raises.
    def deny(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", deny)
    assert "cannot be read: Permission denied" in _one_line_error(tmp_path / "x.txt")


# ---------------------------------------------------------------- split


def test_split_is_first_ninety_last_ten_percent() -> None:
    data = np.arange(100)
    train, val = split(data)
    assert train.tolist() == list(range(90))
    assert val.tolist() == list(range(90, 100))
    assert np.shares_memory(train, data) and np.shares_memory(val, data)  # views, no copy


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"),
    [(15, 0.1, 2), (14, 0.1, 1), (10, 0.0, 0), (1, 0.1, 0), (1000, 0.25, 250), (7, 0.5, 4)],
)
def test_split_sizes(n: int, fraction: float, n_val: int) -> None:
    train, val = split(np.arange(n), fraction)
    assert (len(train), len(val)) == (n - n_val, n_val)
    assert np.concatenate([train, val]).tolist() == list(range(n))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_split_rejects_bad_fractions(fraction: float) -> None:
    with pytest.raises(DataError, match="val_fraction"):
        split(np.arange(10), fraction)


def test_split_must_leave_training_data() -> None:
    with pytest.raises(DataError, match="nothing to train on"):
        split(np.arange(1), 0.6)


# ---------------------------------------------------------------- get_batch


def test_batch_rows_are_windows_and_targets_are_shifted_by_one() -> None:
    data = np.arange(50, dtype=np.int64) * 3  # values differ from positions
    x, y = get_batch(data, 6, 8, np.random.default_rng(0))
    assert x.shape == y.shape == (6, 8)
    assert x.dtype == y.dtype == np.int64
    assert x.flags.c_contiguous and y.flags.c_contiguous
    starts = x[:, 0] // 3
    assert (x == data[starts[:, None] + np.arange(8)]).all()
    assert (y == data[starts[:, None] + np.arange(1, 9)]).all()
    assert (x[:, 1:] == y[:, :-1]).all()


def test_batch_uses_one_rng_call_and_is_reproducible() -> None:
    data = np.arange(40)
    x, _ = get_batch(data, 5, 4, np.random.default_rng(7))
    starts = np.random.default_rng(7).integers(0, 40 - 4, size=5)
    assert x[:, 0].tolist() == starts.tolist()
    rng = np.random.default_rng(7)
    get_batch(data, 5, 4, rng)
    reference = np.random.default_rng(7)
    reference.integers(0, 36, size=5)
    assert rng.integers(1 << 30) == reference.integers(1 << 30)  # the generator advanced exactly once


def test_batch_reaches_every_start_including_the_last() -> None:
    data = np.arange(12)
    x, y = get_batch(data, 2000, 4, np.random.default_rng(1))
    assert set(x[:, 0].tolist()) == set(range(12 - 4))
    assert y.max() == 11


def test_batch_from_exactly_ctx_plus_one_tokens() -> None:
    x, y = get_batch(np.arange(5), 3, 4, np.random.default_rng(0))
    assert (x == np.arange(4)).all() and (y == np.arange(1, 5)).all()


def test_batch_converts_small_integer_dtypes_to_int64() -> None:
    x, y = get_batch(np.arange(20, dtype=np.uint8), 2, 3, np.random.default_rng(0))
    assert x.dtype == y.dtype == np.int64


def test_batch_from_short_data_is_a_clear_error() -> None:
    with pytest.raises(DataError, match=r"^val split has 4 tokens, fewer than ctx \+ 1 = 5"):
        get_batch(np.arange(4), 2, 4, np.random.default_rng(0), what="val split")


@pytest.mark.parametrize(
    "data", [np.zeros(10), np.zeros((2, 10), dtype=np.int64), list(range(10))], ids=["float", "2d", "list"]
)
def test_batch_rejects_non_token_arrays(data: Any) -> None:
    with pytest.raises(DataError, match="1-D integer"):
        get_batch(data, 2, 3, np.random.default_rng(0))


@pytest.mark.parametrize(("batch", "ctx"), [(0, 3), (2, 0), (-1, 3)])
def test_batch_rejects_non_positive_sizes(batch: int, ctx: int) -> None:
    with pytest.raises(ValueError, match="get_batch: (batch|ctx) must be a positive integer"):
        get_batch(np.arange(10), batch, ctx, np.random.default_rng(0))
