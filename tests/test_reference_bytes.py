"""Guard for rewrites of the layers (issue 21): a float64 training run gives bit-identical
parameters and optimizer moments. Plain and in-place forms of one formula round alike, so a
rewrite that keeps the arithmetic keeps these bytes; one that reorders a sum does not.

The digests were recorded from the code *before* the layers were rewritten as their formulas
(commit a2ec697), by running this file as a script (``python tests/test_reference_bytes.py``).
Change them only for a deliberate change of the arithmetic, and say so in the commit.

Float64 bytes are a property of the code *and* of NumPy's build: its SIMD loops (tanh, exp) and the
OpenBLAS kernels it bundles differ between NumPy versions and pick different code paths on
different CPUs. So the digests are kept per environment, NumPy's version plus the CPU features it
dispatches on; CI's legs (the newest NumPy and the lowest one pyproject.toml allows) ran on the
recorded ones. Elsewhere the test skips, naming the environment in pytest's summary,
because comparing against another machine's bytes would fail for reasons that say nothing about the code.
"""

from __future__ import annotations

import hashlib
import importlib
import io
from pathlib import Path
from typing import Any

import numpy as np
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

# environment (see _environment) -> run name -> digest. Both were recorded on CI's kind of machine
# (Intel Xeon, AVX-512 with AMX), and both agree between a2ec697 and the rewritten layers.
DIGESTS: dict[str, dict[str, str]] = {
    "NumPy 2.4.6, CPU features e905ca5f": {
        "relu-dropout": "da94ad1aa34e2dc463953fe0213c9fbb3e8b92e19e3ca7adb1ac0dc95dcd94d4",
        "gelu": "19585e62ae665fb5879233f2b84561e1a37e1b8bc31df1f1212423b768947b16",
    },
    "NumPy 1.24.0, CPU features 0ed9b56c": {
        "relu-dropout": "7f2942a54ef4b4f8fe75b462c84b3b151b36c8a92e1e6cd397721b3e498b76d6",
        "gelu": "2cdf8273d4d08f2a27f5a00bfc4e992c3ecaab64397c08b4ecede9b0b27260ce",
    },
}


def _environment() -> str:
    """NumPy's version and a short hash of the CPU features its SIMD dispatch found."""
    try:
        umath = importlib.import_module("numpy._core._multiarray_umath")  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        umath = importlib.import_module("numpy.core._multiarray_umath")
    features: dict[str, bool] = umath.__cpu_features__
    found = ",".join(sorted(name for name, on in features.items() if on))
    return f"NumPy {np.__version__}, CPU features {hashlib.sha256(found.encode()).hexdigest()[:8]}"


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
    env = _environment()
    if env not in DIGESTS:
        pytest.skip(f"no digests recorded for {env} (python tests/test_reference_bytes.py prints them)")
    assert _digest(tmp_path, **RUNS[name]) == DIGESTS[env][name]


if __name__ == "__main__":  # print this environment's digests, to add to DIGESTS
    import tempfile

    print(f"    {_environment()!r}: {{")
    for run in sorted(RUNS):
        with tempfile.TemporaryDirectory() as folder:
            print(f"        {run!r}: {_digest(Path(folder), **RUNS[run])!r},")
    print("    },")
