"""Guard for rewrites of the layers (issue 21): a float64 training run gives bit-identical
parameters and optimizer moments. Plain and in-place forms of one formula round alike, so a
rewrite that keeps the arithmetic keeps these bytes; one that reorders a sum does not.

The digests were recorded from the code *before* the layers were rewritten as their formulas
(commit a2ec697), by running :func:`_digest` on each config below and printing the result.
Change them only for a deliberate change of the arithmetic, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest

from bevialm import train
from bevialm.checkpoint import load_checkpoint
from bevialm.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent

# Widths that are not powers of two, so a mean taken as sum * (1/D) and one taken as sum / D differ.
RUNS: dict[str, dict[str, Any]] = {
    "relu-dropout": {"dim": 12, "heads": 3, "mlp_hidden": 20, "activation": "relu", "dropout": 0.1},
    "gelu": {"dim": 12, "heads": 2, "mlp_hidden": 24, "activation": "gelu", "dropout": 0.0},
}

DIGESTS = {
    "relu-dropout": "da94ad1aa34e2dc463953fe0213c9fbb3e8b92e19e3ca7adb1ac0dc95dcd94d4",
    "gelu": "19585e62ae665fb5879233f2b84561e1a37e1b8bc31df1f1212423b768947b16",
}


def _digest(out: Path, **model: Any) -> str:
    cfg = TrainConfig(
        data=str(ROOT / "data.txt"), ctx=10, layers=2, batch=3, steps=6, lr=3e-3, warmup=2, log_every=0,
        eval_every=3, eval_iters=1, sample_len=0, dtype="float64", seed=7, out=str(out), **model,
    )
    train.train(cfg, stdout=io.StringIO())
    ckpt = load_checkpoint(out / "last.npz")
    assert ckpt.opt_state is not None
    h = hashlib.sha256()
    for name in sorted(ckpt.params):
        for array in (ckpt.params[name], ckpt.opt_state.m[name], ckpt.opt_state.v[name]):
            h.update(name.encode() + array.tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(RUNS))
def test_float64_training_bytes_are_pinned(name: str, tmp_path: Path) -> None:
    assert _digest(tmp_path, **RUNS[name]) == DIGESTS[name]
