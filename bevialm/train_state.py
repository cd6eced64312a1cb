"""A run's state at a step boundary (:class:`Snapshot`): how a run begins it (:func:`fresh`),
takes it back from ``last.npz`` (:func:`restore`, a pure function of the checkpoint and the
config) and writes it (:func:`save`).

Everything the future of the run depends on is in the snapshot, so a run resumed from it
computes the very same losses, to the bit, as one that never stopped (:mod:`bevialm.train`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bevialm import checkpoint, model, optim
from bevialm import tokenizer as tokenizers
from bevialm.runs import TrainError
from bevialm.train_config import TrainConfig
from bevialm.train_data import RunData
from bevialm.types import Array

INIT_STREAM, TRAIN_STREAM = 0, 1  # the random streams of bevialm.train's docstring

_MODEL_FLAGS = {"n_layers": "layers", "n_heads": "heads", "vocab_size": "vocabulary size"}

# The flags whose change makes a resumed run differ from one that never stopped (the model's
# own flags are checked against the checkpoint and refused when they differ).
_TRAJECTORY_FLAGS = ("seed", "batch", "shards", "accum", "steps", "lr", "warmup", "min_lr", "wd", "beta2", "grad_clip", "val_fraction")


@dataclass(frozen=True)
class Snapshot:
    """Everything the rest of the run depends on, after ``step`` completed steps.

    ``loss_sum``/``loss_count`` are the running sum of the training losses since the
    last log line (whose mean the next line prints); ``rng_state`` is the training
    generator's state at this step boundary; ``best_val``/``best_step`` the lowest
    validation loss so far and its step (what ``best.npz`` holds).
    """

    step: int
    params: dict[str, Array]
    opt: optim.AdamWState
    rng_state: Mapping[str, Any]
    loss_sum: float = 0.0
    loss_count: int = 0
    grad_norm: float = math.nan
    best_val: float | None = None
    best_step: int | None = None


@dataclass(frozen=True)
class Restored:
    """A run taken back from ``last.npz``: its snapshot, the trajectory flags that changed since
    (``"lr 0.001 -> 0.0005"``), and the seconds it had run."""

    snap: Snapshot
    changed_flags: list[str]
    elapsed: float


def fresh(cfg: TrainConfig, mcfg: model.ModelConfig, data: RunData) -> Snapshot:
    """Step 0: initial parameters from stream 0 (or ``--init_from``'s weights), a fresh optimizer."""
    if data.init is not None:  # fine-tuning: its weights, a fresh optimizer, step 0
        params = {k: v.astype(cfg.dtype) for k, v in data.init.params.items()}
    else:
        params = model.init_params(mcfg, np.random.default_rng([cfg.seed, INIT_STREAM]), np.dtype(cfg.dtype))
    rng = np.random.default_rng([cfg.seed, TRAIN_STREAM])
    return Snapshot(step=0, params=params, opt=optim.init_state(params), rng_state=rng.bit_generator.state)


def restore(ckpt: checkpoint.Checkpoint, path: str, cfg: TrainConfig, mcfg: model.ModelConfig, data: RunData) -> Restored:
    """``--resume``: the snapshot ``ckpt`` (read from ``path``) holds, once it is shown to belong to
    this run (same tokenizer, model and dtype); :class:`TrainError` in one line if not."""
    _require_same_run(ckpt, path, cfg, mcfg, data.tokenizer)
    if ckpt.opt_state is None or ckpt.rng_state is None:
        raise TrainError(f"--resume: '{path}' has no optimizer or RNG state to resume from")
    extra = ckpt.extra
    grad_norm = extra.get("grad_norm")
    snap = Snapshot(
        step=ckpt.step,
        params=ckpt.params,
        opt=ckpt.opt_state,
        rng_state=checkpoint.restore_rng(ckpt.rng_state).bit_generator.state,
        loss_sum=float(extra.get("loss_sum", 0.0)),
        loss_count=int(extra.get("loss_count", 0)),
        grad_norm=math.nan if grad_norm is None else float(grad_norm),
        best_val=ckpt.best_val_loss,
        best_step=extra.get("best_step"),
    )
    before, now = ckpt.train_config, asdict(cfg)
    changed = [f"{k} {before[k]} -> {now[k]}" for k in _TRAJECTORY_FLAGS if k in before and before[k] != now[k]]
    return Restored(snap, changed, float(extra.get("elapsed", 0.0)))


def _require_same_run(
    ckpt: checkpoint.Checkpoint, path: str, cfg: TrainConfig, mcfg: model.ModelConfig, tokenizer: tokenizers.Tokenizer
) -> None:
    if ckpt.tokenizer != tokenizer:  # before the model: other data changes a char vocabulary's size
        run_data = ckpt.train_config.get("data")
        raise TrainError(
            f"--resume: the tokenizer made from '{cfg.data}' ({tokenizers.describe(tokenizer)}) differs from "
            f"the one '{path}' was trained with ({tokenizers.describe(ckpt.tokenizer)}): "
            + (
                f"the run was trained on '{run_data}'; resume with --data {run_data}"
                if isinstance(run_data, str) and run_data != cfg.data
                else "the data or --tokenizer/--vocab_size changed"
            )
        )
    expected, got = asdict(mcfg), ckpt.model_config
    if got != expected:
        diffs = [
            f"{_MODEL_FLAGS.get(k, k)} {got.get(k)!r} in the checkpoint, {v!r} now" for k, v in expected.items() if got.get(k) != v
        ] or ["its model config has other fields"]
        raise TrainError(f"--resume: '{path}' was trained with another model: {'; '.join(diffs)}; pass the run's flags")
    checkpoint.validate_against(ckpt, model.param_shapes(mcfg))
    checkpoint.require_finite(ckpt, path)
    dtypes = {str(p.dtype) for p in ckpt.params.values()}
    if dtypes != {cfg.dtype}:
        raise TrainError(
            f"--resume: '{path}' holds {'/'.join(sorted(dtypes))} parameters, --dtype is {cfg.dtype}; pass the run's --dtype"
        )


def save(
    path: str, snap: Snapshot, *, cfg: TrainConfig, mcfg: model.ModelConfig, data: RunData, elapsed: float, with_optimizer: bool
) -> None:
    """Write ``snap`` as a checkpoint (``OSError`` if it cannot be: the old file is then intact)."""
    header = checkpoint.make_header(
        model_config=asdict(mcfg),
        tokenizer=data.tokenizer,
        step=snap.step,
        train_config=asdict(cfg),
        rng=checkpoint.restore_rng(snap.rng_state),
        best_val_loss=snap.best_val,
        extra={
            "loss_sum": snap.loss_sum,
            "loss_count": snap.loss_count,
            "grad_norm": snap.grad_norm if math.isfinite(snap.grad_norm) else None,
            "best_step": snap.best_step,
            "elapsed": elapsed,
            checkpoint.SEEN_TOKENS: checkpoint.pack_seen(data.seen),
        },
    )
    checkpoint.save_checkpoint(path, params=snap.params, header=header, opt_state=snap.opt if with_optimizer else None)
