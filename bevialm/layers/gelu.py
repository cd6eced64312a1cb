"""GELU in the tanh form used by GPT-2: a smooth ReLU with no kink."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bevialm.types import Array, FloatDType, Grads, Params
from bevialm.validate import check_inputs, require_shape

# sqrt(2/pi) and the cubic coefficient of the tanh approximation (Hendrycks & Gimpel 2016).
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


@dataclass(frozen=True)
class GeluConfig:
    """GELU has no hyperparameters; the config exists so every pair is called alike."""


@dataclass(frozen=True)
class GeluCache:
    """The input and ``tanh(k (x + c x^3))``, reused by the backward pass."""

    x: Array
    t: Array


def init(cfg: GeluConfig, rng: np.random.Generator, dtype: FloatDType = np.float32) -> Params:
    """No parameters."""
    return {}


def forward(params: Params, x: Array, cfg: GeluConfig) -> tuple[Array, GeluCache]:
    """``y = 0.5 x (1 + t)`` with ``t = tanh(k (x + c x^3))``, ``k = sqrt(2/pi)``, ``c = 0.044715``."""
    check_inputs("gelu", x)
    k, c = x.dtype.type(_GELU_K), x.dtype.type(_GELU_C)
    t = np.tanh(x * (1 + c * np.square(x)) * k)  # k (x + c x^3), as k x (1 + c x^2)
    y = 0.5 * x * (1 + t)
    return y, GeluCache(x, t)


def backward(params: Params, cache: GeluCache, dy: Array) -> tuple[Array, Grads]:
    """``dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2))``."""
    require_shape("gelu", "dy", dy, cache.x.shape)
    x, t = cache.x, cache.t
    k, c = x.dtype.type(_GELU_K), x.dtype.type(_GELU_C)
    dydx = 0.5 * (1 + t) + (1 - np.square(t)) * x * (0.5 * k) * (1 + 3 * c * np.square(x))
    return dy * dydx, {}
