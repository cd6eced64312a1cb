"""The shard runner: the shards' weighted gradient is the whole batch's (float64), the cut is
in order and balanced, small batches and dropout run as one shard, and results are repeatable."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bevialm import cli, model, parallel, shard_worker, train
from bevialm.checkpoint import load_checkpoint
from bevialm.gradcheck import away_from_init
from bevialm.model import ModelConfig
from bevialm.runtime import blas_threads, find_openblas
from bevialm.train import TrainConfig
from bevialm.types import Array, IntArray

ROOT = Path(__file__).resolve().parent.parent


def tiny(**overrides: Any) -> ModelConfig:
    fields: dict[str, Any] = {"vocab_size": 7, "ctx": 6, "dim": 8, "n_layers": 2, "n_heads": 2, "mlp_hidden": 12}
    return ModelConfig(**{**fields, **overrides})


def batch_of(cfg: ModelConfig, rows: int, dtype: Any = np.float64) -> tuple[dict[str, Array], IntArray, IntArray]:
    rng = np.random.default_rng(rows)
    moved = away_from_init(model.init_params(cfg, rng, np.float64), rng, scale=0.5)
    params = {k: p.astype(dtype) for k, p in moved.items()}
    idx = rng.integers(0, cfg.vocab_size, size=(rows, cfg.ctx))
    return params, idx, rng.integers(0, cfg.vocab_size, size=(rows, cfg.ctx))


@pytest.fixture
def split_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the tiny test batches be cut (the real minimum keeps them whole)."""
    monkeypatch.setattr(parallel, "MIN_SHARD_TOKENS", 1)


@given(batch=st.integers(1, 40), shards=st.integers(1, 40))
def test_shard_rows_cut_the_batch_in_order_into_balanced_runs(batch: int, shards: int) -> None:
    shards = min(shards, batch)
    rows = parallel.shard_rows(batch, shards)
    assert len(rows) == shards
    assert [i for r in rows for i in range(batch)[r]] == list(range(batch))
    sizes = [r.stop - r.start for r in rows]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_shard_rows_rejects_more_shards_than_rows() -> None:
    with pytest.raises(ValueError, match="need 1 <= shards <= batch, got 3 shards of a batch of 2"):
        parallel.shard_rows(2, 3)


def test_shard_count_keeps_small_batches_whole() -> None:
    m = parallel.MIN_SHARD_TOKENS
    assert parallel.shard_count(batch=8, ctx=m // 8, shards=2) == 1  # one shard's worth of tokens
    assert parallel.shard_count(batch=8, ctx=m // 4, shards=2) == 2
    assert parallel.shard_count(batch=8, ctx=m, shards=4) == 4
    assert parallel.shard_count(batch=3, ctx=m, shards=8) == 3  # never more shards than rows
    assert parallel.shard_count(batch=1, ctx=1, shards=2) == 1


@pytest.mark.usefixtures("split_everything")
@pytest.mark.parametrize(("rows", "shards"), [(2, 2), (5, 2), (7, 3), (4, 4)])
def test_sharded_loss_and_gradient_equal_the_whole_batch_in_float64(rows: int, shards: int) -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, rows)
    assert parallel.shard_count(rows, cfg.ctx, shards) == shards
    loss, grads = model.loss_and_grads(params, idx, targets, cfg)
    sharded_loss, sharded = parallel.loss_and_grads(params, idx, targets, cfg, shards=shards)
    assert sharded_loss == pytest.approx(loss, rel=1e-13)
    assert sharded.keys() == grads.keys()
    for k, g in grads.items():
        assert sharded[k].dtype == np.float64
        np.testing.assert_allclose(sharded[k], g, rtol=1e-11, atol=1e-15, err_msg=k)


@pytest.mark.usefixtures("split_everything")
def test_unequal_shards_are_weighted_by_their_size_not_averaged() -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 3)
    loss, _ = model.loss_and_grads(params, idx, targets, cfg)
    first, _ = model.loss_and_grads(params, idx[:1], targets[:1], cfg)
    rest, _ = model.loss_and_grads(params, idx[1:], targets[1:], cfg)
    assert abs((first + rest) / 2 - loss) > 1e-6  # plain averaging would be measurably wrong here
    assert parallel.loss_and_grads(params, idx, targets, cfg, shards=2)[0] == pytest.approx(loss, rel=1e-13)


@pytest.mark.usefixtures("split_everything")
def test_float32_stays_float32_and_repeats_to_the_bit() -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 6, np.float32)
    loss_a, a = parallel.loss_and_grads(params, idx, targets, cfg, shards=3)
    loss_b, b = parallel.loss_and_grads(params, idx, targets, cfg, shards=3)
    assert loss_a == loss_b
    assert all(a[k].dtype == np.float32 and a[k].tobytes() == b[k].tobytes() for k in a)
    _, whole = model.loss_and_grads(params, idx, targets, cfg)
    for k in a:
        np.testing.assert_allclose(a[k], whole[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.usefixtures("split_everything")
def test_dropout_runs_as_one_shard_with_the_training_generator() -> None:
    cfg = tiny(dropout=0.3)
    params, idx, targets = batch_of(cfg, 4)
    rng_whole, rng_sharded = np.random.default_rng(5), np.random.default_rng(5)
    loss, grads = model.loss_and_grads(params, idx, targets, cfg, rng=rng_whole)
    sharded_loss, sharded = parallel.loss_and_grads(params, idx, targets, cfg, shards=2, rng=rng_sharded)
    assert sharded_loss == loss
    assert all(sharded[k].tobytes() == g.tobytes() for k, g in grads.items())
    assert rng_whole.bit_generator.state == rng_sharded.bit_generator.state  # the same draws


@pytest.mark.usefixtures("split_everything")
def test_an_error_in_a_shard_reaches_the_caller() -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 4)
    targets[3, 0] = cfg.vocab_size  # in the second shard, which runs in the worker process
    with pytest.raises(ValueError, match="targets must lie in"):
        parallel.loss_and_grads(params, idx, targets, cfg, shards=2)


@pytest.mark.parametrize("shards", [0, -1, 1.5, True])
def test_bad_shard_counts_are_refused(shards: Any) -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 2)
    with pytest.raises(ValueError, match="shards must be a positive integer"):
        parallel.loss_and_grads(params, idx, targets, cfg, shards=shards)


def test_blas_threads_limits_and_restores_the_count() -> None:
    blas = find_openblas()
    assert blas is not None  # NumPy's wheels bundle OpenBLAS
    before = blas.get()
    with blas_threads(1) as applied:
        assert applied and blas.get() == 1
    assert blas.get() == before
    with pytest.raises(RuntimeError), blas_threads(1):
        raise RuntimeError("the count is restored on the way out of an error too")
    assert blas.get() == before


# --- in the trainer ----------------------------------------------------------------------------


def sharded_run(out: Path, **overrides: Any) -> TrainConfig:
    fields: dict[str, Any] = {
        "data": str(ROOT / "data.txt"), "ctx": 8, "dim": 8, "layers": 1, "heads": 2, "mlp_hidden": 16,
        "batch": 5, "shards": 2, "steps": 10, "warmup": 2, "log_every": 1, "eval_every": 5, "eval_iters": 2,
        "sample_len": 0, "out": str(out),
    }  # fmt: skip
    return TrainConfig(**{**fields, **overrides})


def counting(real: Callable[..., Any], calls: list[int], interrupt_at: int | None = None) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapper


def run_metrics(out: Path) -> list[dict[str, Any]]:
    lines = (out / train.METRICS).read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in {"time", "ms_per_step", "tokens_per_s"}} for line in lines]


@pytest.mark.usefixtures("split_everything")
def test_the_trainer_runs_in_shards_and_resumes_to_the_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    with monkeypatch.context() as patch:  # this process computes one shard and hands the other to a worker
        patch.setattr(model, "loss_and_grads", counting(model.loss_and_grads, calls))
        patch.setattr(shard_worker.Worker, "submit", counting(shard_worker.Worker.submit, calls))
        train.train(sharded_run(tmp_path / "ref"), stdout=io.StringIO())
    assert len(calls) == 2 * 10  # two shards every step

    cfg = sharded_run(tmp_path / "cut")
    with monkeypatch.context() as patch:
        interrupted: list[int] = []
        patch.setattr(model, "loss_and_grads", counting(model.loss_and_grads, interrupted, interrupt_at=2 * 6 + 2))
        patch.setattr(shard_worker.Worker, "submit", counting(shard_worker.Worker.submit, interrupted))
        with pytest.raises(KeyboardInterrupt):
            train.train(cfg, stdout=io.StringIO())
    assert load_checkpoint(tmp_path / "cut" / "last.npz").step == 6
    train.train(replace(cfg, resume=True), stdout=io.StringIO())
    assert run_metrics(tmp_path / "cut") == run_metrics(tmp_path / "ref")
    a, b = load_checkpoint(tmp_path / "cut" / "last.npz"), load_checkpoint(tmp_path / "ref" / "last.npz")
    assert all(a.params[k].tobytes() == b.params[k].tobytes() for k in b.params)


def test_one_default_shard_count_for_the_library_the_trainer_and_the_command_line() -> None:
    args = cli.train_parser().parse_args(["--data", "d.txt"])
    assert args.shards == TrainConfig(data="d.txt").shards == parallel.DEFAULT_SHARDS
    with pytest.raises(ValueError, match="shards must be a positive integer"):
        TrainConfig(data="d.txt", shards=0)


def test_accumulate_refuses_dropout_across_shards() -> None:
    """Each worker would draw its own masks: the trainer keeps dropout runs whole (step_shards)."""
    cfg = tiny(dropout=0.3)
    params, idx, targets = batch_of(cfg, 4)
    with pytest.raises(ValueError, match="with dropout a step runs as one shard"):
        parallel.accumulate(params, lambda: (idx, targets), cfg, shards=2, rng=np.random.default_rng(0))
