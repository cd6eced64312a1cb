"""Layer normalisation over the last axis: ``y = gamma * (x - mean) / sqrt(var + eps) + beta``.

Each row (one token's features) is normalised on its own, so the layer behaves
the same for any batch size. ``gamma`` starts at 1 and ``beta`` at 0: "start
normalised, learn to de-normalise if it helps" (playbook 3.6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevialm.types import Array, FloatDType, Grads, Params
from bevialm.validate import check_inputs, require_positive, require_shape

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

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"gamma": (self.dim,), "beta": (self.dim,)}


@dataclass(frozen=True)
class LayerNormCache:
    """The normalised input ``xhat`` and the reciprocal standard deviation per row."""

    xhat: Array
    rstd: Array


def init(cfg: LayerNormConfig, rng: np.random.Generator, dtype: FloatDType = np.float32) -> Params:
    """``gamma`` ones and ``beta`` zeros, each of shape ``(dim,)``; ``rng`` is unused (no randomness)."""
    return {"gamma": np.ones(cfg.dim, dtype=dtype), "beta": np.zeros(cfg.dim, dtype=dtype)}


def mean(a: Array) -> Array:
    """The mean over the last axis, kept as an axis of size 1 (so it broadcasts back over the row).

    Written as ``sum * (1/D)``: the arithmetic the float64 reference bytes were recorded with
    (``sum / D`` rounds differently when ``D`` is not a power of two).
    """
    m: Array = a.sum(axis=-1, keepdims=True) * a.dtype.type(1.0 / a.shape[-1])
    return m


def mean_of_product(a: Array, b: Array) -> Array:
    """``mean(a * b)`` over the last axis, without building the product (einsum sums it row by row)."""
    m: Array = np.einsum("...d,...d->...", a, b)[..., None] * a.dtype.type(1.0 / a.shape[-1])
    return m


def forward(params: Params, x: Array, cfg: LayerNormConfig) -> tuple[Array, LayerNormCache]:
    """``y = gamma * xhat + beta`` with ``xhat = (x - mean(x)) * rstd``, ``rstd = 1 / sqrt(var + eps)``."""
    check_inputs(LAYER, x, cfg.dim, cfg=cfg, params=params)
    gamma, beta = params["gamma"], params["beta"]
    xc = x - mean(x)
    var = mean_of_product(xc, xc)
    rstd = 1.0 / np.sqrt(var + cfg.eps)
    # In place (plain form: xhat = xc * rstd; y = xhat * gamma + beta): saves 4.0% of a training
    # step in bench config (b), 2.1% in (c), interleaved A/B (docs/contributing.md);
    # tests/test_pairs.py holds it equal to the plain form.
    xhat = xc
    xhat *= rstd
    y = xhat * gamma
    y += beta
    return y, LayerNormCache(xhat, rstd)


def backward(params: Params, cache: LayerNormCache, dy: Array) -> tuple[Array, Grads]:
    """With ``g = dy * gamma``: ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``.

    The two mean terms come from the mean and the variance depending on every
    entry of the row (see ``docs/layernorm.md`` for the derivation).
    """
    require_shape(LAYER, "dy", dy, cache.xhat.shape)
    gamma, xhat, rstd = params["gamma"], cache.xhat, cache.rstd
    dy2d, xhat2d = dy.reshape(-1, dy.shape[-1]), xhat.reshape(-1, dy.shape[-1])  # (N, D): one row per token
    dgamma = np.einsum("nd,nd->d", dy2d, xhat2d)  # sum over the rows of dy * xhat
    dbeta = dy2d.sum(axis=0)
    g: Array = np.multiply(dy, gamma)  # not dy * gamma: NumPy 1.24's stubs type that as bool
    dx = (g - mean(g) - xhat * mean_of_product(g, xhat)) * rstd
    return dx, {"gamma": dgamma, "beta": dbeta}
