"""Embedding: look up row ``idx`` of a ``(num, dim)`` table.

Forward is indexing; backward adds each upstream gradient row into the table
row it came from. A token that appears several times collects the sum of its
gradients (playbook 6.1); we sum with a sort and ``np.add.reduceat``, which
gives the same result as ``np.add.at`` and is much faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevialm.types import Array, FloatDType, Grads, IntArray, Params
from bevialm.validate import check_indices, require_positive, require_shape

LAYER = "embedding"


@dataclass(frozen=True)
class EmbeddingConfig:
    """A table of ``num`` rows (vocabulary size, or context length for positions) of ``dim`` features."""

    num: int
    dim: int
    init_std: float = 0.02

    def __post_init__(self) -> None:
        require_positive(LAYER, num=self.num, dim=self.dim)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"W": (self.num, self.dim)}


@dataclass(frozen=True)
class EmbeddingCache:
    """The indices that were looked up; the table shape is in ``params``."""

    idx: IntArray


def init(cfg: EmbeddingConfig, rng: np.random.Generator, dtype: FloatDType = np.float32) -> Params:
    """``W`` of shape ``(num, dim)`` drawn from N(0, init_std²)."""
    return {"W": (rng.standard_normal((cfg.num, cfg.dim)) * cfg.init_std).astype(dtype)}


def forward(params: Params, idx: IntArray, cfg: EmbeddingConfig) -> tuple[Array, EmbeddingCache]:
    """``y[..., :] = W[idx[...], :]`` for integer ``idx`` of any shape."""
    check_indices(LAYER, idx, cfg, params)
    W = params["W"]
    return W[idx], EmbeddingCache(idx)


def backward(params: Params, cache: EmbeddingCache, dy: Array) -> tuple[None, Grads]:
    """``dW[r] = sum of dy[p] over every position p with idx[p] == r``; there is no ``dx``."""
    W = params["W"]
    require_shape(LAYER, "dy", dy, (*cache.idx.shape, W.shape[1]))
    flat = cache.idx.ravel()
    order = np.argsort(flat, kind="stable")
    rows, starts = np.unique(flat[order], return_index=True)
    dW = np.zeros_like(W)
    if flat.size:
        dW[rows] = np.add.reduceat(dy.reshape(-1, W.shape[1])[order], starts, axis=0)
    return None, {"W": dW}
