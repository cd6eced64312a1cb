"""The benchmark's three training configs, shared by ``bench.py``, ``bench_mpi.py`` and
``matmul_floor.py`` (docs/benchmarks.md describes each)."""

from __future__ import annotations

from typing import Any

CONFIGS: dict[str, dict[str, Any]] = {
    "a": {"label": "playbook quick start", "ctx": 64, "dim": 64, "layers": 1, "heads": 1, "mlp": 512, "batch": 8},
    "b": {"label": "playbook defaults", "ctx": 128, "dim": 128, "layers": 2, "heads": 1, "mlp": 512, "batch": 16},
    "c": {"label": "nanoGPT CPU", "ctx": 64, "dim": 128, "layers": 4, "heads": 4, "mlp": 512, "batch": 12},
}
VOCAB = 65
"""Tiny Shakespeare's character vocabulary."""
