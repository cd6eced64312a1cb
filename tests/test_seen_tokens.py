"""Sampling never draws a token absent from the training text (by default): a BPE trained on ASCII
has byte tokens for every byte, and an early model drew `۵`, `܁`, `g̠` from them. The checkpoint
records the tokens of its data file; old checkpoints (without the record) still load and sample."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bevialm import checkpoint, generate, model, tokenizer
from bevialm.checkpoint import load_checkpoint, save_checkpoint
from bevialm.types import Array

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data.txt"
BEVIALM = [sys.executable, "-m", "bevialm"]
TINY = ["--ctx", "16", "--dim", "16", "--layers", "1", "--heads", "2", "--mlp_hidden", "32", "--batch", "4"]
HOT = ["--temperature", "3", "--num_samples", "8", "--sample_len", "300", "--seed", "1"]  # flat: every allowed token comes up


def test_the_mask_is_packed_and_unpacked_exactly() -> None:
    for vocab in (1, 7, 8, 9, 300):
        seen = np.random.default_rng(vocab).random(vocab) < 0.5
        seen[0] = True
        assert np.array_equal(checkpoint.unpack_seen(checkpoint.pack_seen(seen), vocab), seen)
    assert np.array_equal(generate.seen_tokens(np.array([2, 0, 2]), 4), [True, False, True, False])


@pytest.mark.parametrize(
    ("field", "problem"),
    [(None, "must be 2 hex digits for 3 tokens"), ("abc", "must be 2 hex digits"), ("zz", "must be hex digits"), ("00", "names no token")],
)
def test_a_bad_mask_is_refused(field: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        checkpoint.unpack_seen(field, 3)


def random_model(vocab: int) -> tuple[dict[str, Array], model.ModelConfig]:
    cfg = model.ModelConfig(vocab_size=vocab, ctx=16, dim=16, mlp_hidden=32)
    params = model.init_params(cfg, np.random.default_rng(0))
    params["lm_head.W"] = params["lm_head.W"] * 200  # far from uniform, so masked tokens would be drawn often
    return params, cfg


def test_sampling_draws_only_allowed_tokens_and_falls_back_when_none_fits() -> None:
    bpe = tokenizer.train_bpe("abc abd " * 20, 262)
    params, cfg = random_model(bpe.vocab_size)
    seen = generate.seen_tokens(bpe.encode("abc abd " * 20), bpe.vocab_size)
    kw = {"num_samples": 4, "rng": np.random.default_rng(0), "sampling": generate.SamplingConfig(temperature=3.0)}
    free = generate.sample_text(params, cfg, bpe, "a", 200, **kw)  # type: ignore[arg-type]
    assert set("".join(free)) - set("abcd ")  # without the mask a random model draws other tokens
    masked = generate.sample_text(params, cfg, bpe, "a", 200, allowed=seen, **kw)  # type: ignore[arg-type]
    assert set("".join(masked)) <= set("abcd ")
    # Only a lead byte allowed: after it no allowed token fits UTF-8, so the row draws from what fits.
    lead = np.zeros(bpe.vocab_size, dtype=bool)
    lead[0xC3] = True
    stuck = generate.sample_text(params, cfg, bpe, "a", 40, allowed=lead, **kw)  # type: ignore[arg-type]
    assert all("\ufffd" not in text and text.encode("utf-8") for text in stuck)
    assert all(len(text) == 1 + 20 for text in stuck)  # 20 whole two-byte characters after the prompt


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BPE run on ASCII text (data.txt), with its checkpoints."""
    out = tmp_path_factory.mktemp("bpe") / "run"
    argv = [sys.executable, str(ROOT / "main.py"), "--data", str(DATA), *TINY, "--tokenizer", "bpe", "--vocab_size", "300",
            "--steps", "3", "--log_every", "0", "--eval_iters", "1", "--sample_len", "0", "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def sample(ckpt: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = [*BEVIALM, "sample", "--checkpoint", str(ckpt), *HOT, *flags]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def drawn(stdout: str) -> set[str]:
    """The characters of the samples, without their ``--- sample i/n ---`` lines."""
    return set("".join(line for line in stdout.splitlines(keepends=True) if not line.startswith("--- sample ")))


def test_the_checkpoint_records_the_tokens_of_its_data(bpe_run: Path) -> None:
    ckpt = load_checkpoint(bpe_run / "last.npz")
    bpe = ckpt.tokenizer
    seen = checkpoint.unpack_seen(ckpt.extra[checkpoint.SEEN_TOKENS], bpe.vocab_size)
    assert np.array_equal(seen, generate.seen_tokens(bpe.encode(DATA.read_text()), bpe.vocab_size))
    assert not seen[0xC3] and seen[ord("e")]


def test_sample_draws_only_the_texts_tokens_unless_asked_through_the_real_command_line(bpe_run: Path) -> None:
    text_chars = set(DATA.read_text())
    default = sample(bpe_run / "last.npz")
    assert default.returncode == 0, default.stderr
    assert drawn(default.stdout) <= text_chars
    unseen = sample(bpe_run / "last.npz", "--unseen_tokens")
    assert unseen.returncode == 0, unseen.stderr
    assert drawn(unseen.stdout) - text_chars  # a barely trained model, hot: other bytes come up


def rewrite_extra(src: Path, dst: Path, change: dict[str, object]) -> None:
    ckpt = load_checkpoint(src)
    header = {k: ckpt.header[k] for k in checkpoint.TRAINER_KEYS}
    header["extra"] = {k: v for k, v in {**header["extra"], **change}.items() if v is not None}
    save_checkpoint(dst, params=ckpt.params, header=header, opt_state=ckpt.opt_state)


def test_an_old_checkpoint_without_the_record_still_samples(bpe_run: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.npz"
    rewrite_extra(bpe_run / "last.npz", old, {checkpoint.SEEN_TOKENS: None})
    assert checkpoint.SEEN_TOKENS not in load_checkpoint(old).extra
    assert generate.load_model(old).seen is None
    done = sample(old)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_a_damaged_record_is_one_line(bpe_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    rewrite_extra(bpe_run / "last.npz", bad, {checkpoint.SEEN_TOKENS: "00"})
    done = sample(bad)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"error: checkpoint '{bad}': header field 'extra' is invalid ('seen_tokens' must be 76 hex digits for 300 tokens)\n"
    )


def test_resume_keeps_the_record(bpe_run: Path) -> None:
    header = json.loads(np.load(bpe_run / "best.npz")["header"].tobytes())
    assert header["extra"][checkpoint.SEEN_TOKENS] == load_checkpoint(bpe_run / "last.npz").extra[checkpoint.SEEN_TOKENS]
    assert dataclasses.is_dataclass(generate.load_model(bpe_run / "best.npz"))
