"""ReLU (playbook 6.6): ``max(x, 0)``; the gradient passes only where the input was positive."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bevialm.types import Array, FloatDType, Grads, Params
from bevialm.validate import check_inputs, require_shape


@dataclass(frozen=True)
class ReluConfig:
    """ReLU has no hyperparameters; the config exists so every pair is called alike."""


@dataclass(frozen=True)
class ReluCache:
    """The input: the backward pass needs only where it was positive (playbook 6.6)."""

    x: Array

    def kink_distance(self) -> float:
        """How close any input came to the kink at 0 (used by the gradient checker)."""
        return float(np.min(np.abs(self.x))) if self.x.size else math.inf


def init(cfg: ReluConfig, rng: np.random.Generator, dtype: FloatDType = np.float32) -> Params:
    """No parameters."""
    return {}


def forward(params: Params, x: Array, cfg: ReluConfig) -> tuple[Array, ReluCache]:
    """``y = max(x, 0)``."""
    check_inputs("relu", x)
    y = np.maximum(x, 0)
    return y, ReluCache(x)


def backward(params: Params, cache: ReluCache, dy: Array) -> tuple[Array, Grads]:
    """Gradient passes where ``x > 0`` and is zero elsewhere: ``dx = dy * (x > 0)``."""
    require_shape("relu", "dy", dy, cache.x.shape)
    dx = dy * (cache.x > 0)
    return dx, {}
