"""A tokenizer that explodes when loaded: merges that double a token's length each time.

58 KB of such merges once reached 2 GB before being refused as "corrupt or truncated
(MemoryError)"; the lengths are now counted from the merges before any token is built."""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bevialm import checkpoint, model, tokenizer
from bevialm.data import DataError

BEVIALM = [sys.executable, "-m", "bevialm"]


def doubling(n: int) -> list[list[int]]:
    """``(97, 97), (256, 256), (257, 257), ...``: token ``256 + i`` is ``2 ** (i + 1)`` bytes of ``a``."""
    return [[97, 97]] + [[256 + i, 256 + i] for i in range(n - 1)]


def test_doubling_merges_are_refused_from_their_lengths_alone() -> None:
    with pytest.raises(DataError, match=r"^BPE: merge 26 makes token 282 of 134,217,728 bytes and the tokens 268,435,710 bytes in all"):
        tokenizer.from_json({"type": "bpe", "pre_split": "gpt2", "merges": doubling(40)})


def test_the_limit_is_exact_and_ordinary_tokenizers_are_far_below_it() -> None:
    # 256 bytes, then tokens of 2, 4, ..., 2**k bytes: 256 + 2**(k+1) - 2 in all, over 2**28 from k = 27
    with pytest.raises(DataError, match="bytes in all, over the 268,435,456 a tokenizer may hold"):
        tokenizer.BPETokenizer(tuple(map(tuple, doubling(27))))  # type: ignore[arg-type]
    assert tokenizer.BPETokenizer(tuple(map(tuple, doubling(20)))).token_bytes(275) == b"a" * 2**20  # type: ignore[arg-type]
    trained = tokenizer.train_bpe("the cat sat on the mat " * 50, 300)
    assert trained.count_chars(trained.encode("the cat")) == 7  # starts are counted from the merges too


def bomb_checkpoint(path: Path, merges: list[list[int]]) -> None:
    """A valid tiny model whose header's tokenizer holds ``merges`` (written past save_checkpoint's checks)."""
    cfg = model.ModelConfig(vocab_size=256 + len(merges), ctx=8, dim=8, mlp_hidden=16)
    params = model.init_params(cfg, np.random.default_rng(0))
    header = checkpoint.make_header(model_config=dataclasses.asdict(cfg), tokenizer=tokenizer.BPETokenizer(()), step=0)
    checkpoint.save_checkpoint(path, params=params, header=header)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    written = json.loads(arrays["header"].tobytes())
    written["tokenizer"]["merges"] = merges
    arrays["header"] = np.frombuffer(json.dumps(written).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_sample_refuses_the_exploding_checkpoint_with_one_line_in_bounded_memory(tmp_path: Path) -> None:
    ckpt = tmp_path / "bomb.npz"
    bomb_checkpoint(ckpt, doubling(2000))

    def limit_memory() -> None:  # 1 GiB of address space: building the tokens would need far more
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    done = subprocess.run(
        [*BEVIALM, "sample", "--checkpoint", str(ckpt), "--sample_len", "3"],
        capture_output=True, text=True, timeout=120, preexec_fn=limit_memory,
    )  # fmt: skip
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: checkpoint '{ckpt}': header field 'tokenizer' is invalid (BPE: merge 26 makes ")
    assert "a tokenizer may hold: these merges build ever longer tokens" in done.stderr
    assert "MemoryError" not in done.stderr and "corrupt" not in done.stderr
