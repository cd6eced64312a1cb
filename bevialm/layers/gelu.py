"""GELU in the tanh form used by GPT-2: a smooth ReLU with no kink."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bevialm.types import Array, FloatDType, Grads, Params
from bevialm.validate import require_floating, require_shape

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
    """``y = 0.5 x (1 + tanh(k (x + c x^3)))`` with ``k = sqrt(2/pi)``, ``c = 0.044715``."""
    require_floating("gelu", "x", x)
    k, c = x.dtype.type(_GELU_K), x.dtype.type(_GELU_C)
    # np.multiply, not x * x: NumPy 1.24's type stubs give x * x a bool dtype (CI tests that NumPy too)
    u: Array = np.multiply(x, x)  # u = k (x + c x^3) = k x (1 + c x^2), built in place in one temporary
    u *= c
    u += 1
    u *= x
    u *= k
    t = np.tanh(u, out=u)
    y = t + 1
    y *= x
    y *= x.dtype.type(0.5)
    return y, GeluCache(x, t)


def backward(params: Params, cache: GeluCache, dy: Array) -> tuple[Array, Grads]:
    """``dy * (0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2))``."""
    require_shape("gelu", "dy", dy, cache.x.shape)
    x, t = cache.x, cache.t
    k, c = x.dtype.type(_GELU_K), x.dtype.type(_GELU_C)
    half = x.dtype.type(0.5)
    local = t * t  # built in place: 0.5 x (1 - t^2) k (1 + 3 c x^2) + 0.5 (1 + t)
    np.subtract(1, local, out=local)
    local *= x
    local *= half * k
    poly: Array = np.multiply(x, x)
    poly *= 3 * c
    poly += 1
    local *= poly
    np.add(t, 1, out=poly)
    poly *= half
    local += poly
    local *= dy
    return local, {}
