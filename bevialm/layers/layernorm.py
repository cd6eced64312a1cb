"""Layer normalisation over the last axis: ``y = gamma * (x - mean) / sqrt(var + eps) + beta``.

Each row (one token's features) is normalised on its own, so the layer behaves
the same for any batch size. ``gamma`` starts at 1 and ``beta`` at 0: "start
normalised, learn to de-normalise if it helps" (playbook 3.6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevialm.types import Array, FloatDType, Grads, Params
from bevialm.validate import (
    require_floating,
    require_last_dim,
    require_positive,
    require_same_dtype,
    require_shape,
)

LAYER = "layernorm"


@dataclass(frozen=True)
class LayerNormConfig:
    """Normalise ``dim`` features; ``eps`` keeps the division finite for constant rows."""

    dim: int
    eps: float = 1e-5

    def __post_init__(self) -> None:
        require_positive(LAYER, dim=self.dim)
        if not self.eps > 0:
            raise ValueError(f"{LAYER}: eps must be positive, got {self.eps!r}")


@dataclass(frozen=True)
class LayerNormCache:
    """The normalised input ``xhat`` and the reciprocal standard deviation per row."""

    xhat: Array
    rstd: Array


def init(cfg: LayerNormConfig, rng: np.random.Generator, dtype: FloatDType = np.float32) -> Params:
    """``gamma`` ones and ``beta`` zeros, each of shape ``(dim,)``; ``rng`` is unused (no randomness)."""
    return {"gamma": np.ones(cfg.dim, dtype=dtype), "beta": np.zeros(cfg.dim, dtype=dtype)}


def forward(params: Params, x: Array, cfg: LayerNormConfig) -> tuple[Array, LayerNormCache]:
    gamma, beta = params["gamma"], params["beta"]
    require_floating(LAYER, "x", x)
    require_shape(LAYER, "gamma", gamma, (cfg.dim,))
    require_shape(LAYER, "beta", beta, (cfg.dim,))
    require_last_dim(LAYER, "x", x, cfg.dim)
    require_same_dtype(LAYER, x, gamma, beta)
    x2d = x.reshape(-1, cfg.dim)
    inv_dim = x.dtype.type(1.0 / cfg.dim)
    mean = x2d.sum(axis=1, keepdims=True)
    mean *= inv_dim
    xc = x2d - mean
    var = np.einsum("nd,nd->n", xc, xc)[:, None]  # row sums of squares without an (N, D) temporary
    var *= inv_dim
    var += x.dtype.type(cfg.eps)
    rstd = 1.0 / np.sqrt(var)
    xhat = xc
    xhat *= rstd  # xc is a fresh temporary: normalise it in place
    y = xhat * gamma
    y += beta
    return y.reshape(x.shape), LayerNormCache(xhat.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1))


def backward(params: Params, cache: LayerNormCache, dy: Array) -> tuple[Array, Grads]:
    """With ``g = dy * gamma``: ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``.

    The two mean terms come from the mean and the variance depending on every
    entry of the row (see ``docs/layernorm.md`` for the derivation).
    """
    gamma = params["gamma"]
    require_shape(LAYER, "dy", dy, cache.xhat.shape)
    xhat = cache.xhat
    dim = xhat.shape[-1]
    dy2d, xhat2d = dy.reshape(-1, dim), xhat.reshape(-1, dim)
    grads = {"gamma": np.einsum("nd,nd->d", dy2d, xhat2d), "beta": dy2d.sum(axis=0)}
    g: Array = np.multiply(dy2d, gamma)  # not dy2d * gamma: NumPy 1.24's stubs type that as bool
    inv_dim = g.dtype.type(1.0 / dim)
    mean_g = g.sum(axis=1, keepdims=True)
    mean_g *= inv_dim
    mean_gx = np.einsum("nd,nd->n", g, xhat2d)[:, None]
    mean_gx *= inv_dim
    dx = g  # a fresh product: build dx in place
    dx -= mean_g
    dx -= xhat2d * mean_gx
    dx *= cache.rstd.reshape(-1, 1)
    return dx.reshape(dy.shape), grads
