"""Numerically stable softmax over the last axis (playbook 3.4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevialm.types import Array, FloatDType, Grads, Params
from bevialm.validate import check_inputs, require_shape


@dataclass(frozen=True)
class SoftmaxConfig:
    """Softmax has no hyperparameters; the config exists so every pair is called alike."""


@dataclass(frozen=True)
class SoftmaxCache:
    """The output probabilities: the backward pass needs nothing else."""

    y: Array


def softmax(x: Array) -> Array:
    """``exp(x - max) / sum(exp(x - max))`` along the last axis.

    Subtracting the row maximum changes nothing mathematically but keeps
    ``exp`` from overflowing; rows that are entirely ``-inf`` are not allowed.
    """
    e: Array = np.exp(x - x.max(axis=-1, keepdims=True))
    y: Array = e / e.sum(axis=-1, keepdims=True)
    return y


def init(cfg: SoftmaxConfig, rng: np.random.Generator, dtype: FloatDType = np.float32) -> Params:
    """No parameters."""
    return {}


def forward(params: Params, x: Array, cfg: SoftmaxConfig) -> tuple[Array, SoftmaxCache]:
    check_inputs("softmax", x)
    y = softmax(x)
    return y, SoftmaxCache(y)


def backward(params: Params, cache: SoftmaxCache, dy: Array) -> tuple[Array, Grads]:
    """``dx = y * (dy - sum(dy * y))``: the Jacobian ``diag(y) - y y^T`` applied to ``dy``."""
    require_shape("softmax", "dy", dy, cache.y.shape)
    y = cache.y
    dx = y * (dy - np.sum(dy * y, axis=-1, keepdims=True))
    return dx, {}
