"""Gradient accumulation (``--accum K``): K micro-batches weighted by their tokens make, in
float64, the gradient of the K-times-larger batch; it composes with shards; the command line
reports the tokens per optimizer step."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bevialm import model, parallel
from bevialm.gradcheck import away_from_init
from bevialm.types import Array, IntArray

ROOT = Path(__file__).resolve().parent.parent
# Float64 sums of a few hundred terms in another order: the gradients agree to ~1e-16 of their
# scale (|g| <= 1 here), the loss to a few ulps.
ACCUM_ATOL = 1e-15
ACCUM_LOSS_RTOL = 1e-14


def setup(rows: int, accum: int) -> tuple[model.ModelConfig, dict[str, Array], IntArray, IntArray]:
    cfg = model.ModelConfig(vocab_size=9, ctx=8, dim=8, n_layers=2, n_heads=2, mlp_hidden=12)
    rng = np.random.default_rng(rows * 10 + accum)
    params = away_from_init(model.init_params(cfg, rng, np.float64), rng, scale=0.5)
    idx = rng.integers(0, cfg.vocab_size, size=(rows * accum, cfg.ctx))
    return cfg, params, idx, rng.integers(0, cfg.vocab_size, size=(rows * accum, cfg.ctx))


def micro(idx: IntArray, targets: IntArray, accum: int) -> Callable[[], tuple[IntArray, IntArray]]:
    """The big batch's rows, ``accum`` micro-batches in order."""
    parts = iter(zip(np.split(idx, accum), np.split(targets, accum), strict=True))
    return lambda: next(parts)


@pytest.mark.parametrize(("rows", "accum", "shards"), [(4, 2, 1), (3, 4, 1), (6, 3, 2), (5, 2, 3)])
def test_accumulated_gradient_is_the_k_times_larger_batchs_in_float64(
    monkeypatch: pytest.MonkeyPatch, rows: int, accum: int, shards: int
) -> None:
    monkeypatch.setattr(parallel, "MIN_SHARD_TOKENS", 1)  # let the tiny micro-batches be cut
    cfg, params, idx, targets = setup(rows, accum)
    loss, grads = parallel.step_loss_and_grads(
        params, micro(idx, targets, accum), cfg, batch=rows, accum=accum, shards=shards
    )
    whole_loss, whole = model.loss_and_grads(params, idx, targets, cfg)
    assert loss == pytest.approx(whole_loss, rel=ACCUM_LOSS_RTOL)
    assert grads.keys() == whole.keys()
    for k, g in whole.items():
        assert grads[k].dtype == np.float64
        np.testing.assert_allclose(grads[k], g, rtol=0, atol=ACCUM_ATOL, err_msg=k)


def test_one_micro_batch_is_todays_step_to_the_bit() -> None:
    cfg, params, idx, targets = setup(8, 1)
    params32 = {k: p.astype(np.float32) for k, p in params.items()}
    a = parallel.step_loss_and_grads(params32, lambda: (idx, targets), cfg, batch=8, accum=1, shards=2)
    b = parallel.loss_and_grads(params32, idx, targets, cfg, shards=2)
    assert a[0] == b[0] and all(a[1][k].tobytes() == b[1][k].tobytes() for k in b[1])


def test_micro_batches_weigh_their_tokens_not_a_plain_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unequal shards inside each micro-batch: a plain mean of the shards would be wrong."""
    monkeypatch.setattr(parallel, "MIN_SHARD_TOKENS", 1)
    cfg, params, idx, targets = setup(5, 2)
    sums = parallel.accumulate(params, micro(idx, targets, 2), cfg, accum=2, shards=2)
    assert sums.owned == range(2)
    _, whole = model.loss_and_grads(params, idx, targets, cfg)
    plain = {k: (sums.grads[0][k] / 0.6 + sums.grads[1][k] / 0.4) / 2 for k in whole}  # type: ignore[index]
    assert not all(np.allclose(plain[k], whole[k], rtol=0, atol=1e-12) for k in whole)


def test_the_command_line_reports_tokens_per_optimizer_step(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bevialm", "train", "--data", str(ROOT / "data.txt"), "--ctx", "16", "--dim", "8"]
    cmd += ["--layers", "1", "--mlp_hidden", "8", "--batch", "4", "--accum", "3", "--steps", "4", "--log_every", "2"]
    cmd += ["--eval_iters", "1", "--sample_len", "0", "--out", "run"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "batch 4 x 16 tokens x 3 micro-batches = 192 tokens per step" in done.stdout
    assert "| 192 tok/step |" in done.stdout
    train_lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kind"] != "train" or r["tokens_per_s"] > 0 for r in train_lines)


def test_accum_must_be_a_positive_integer(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bevialm", "train", "--data", str(ROOT / "data.txt"), "--accum", "0"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    assert "--accum: must be a positive integer, got '0'" in done.stderr
