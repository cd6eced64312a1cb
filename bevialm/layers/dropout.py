"""Inverted dropout: zero each entry with probability ``p`` and scale the survivors by ``1 / (1 - p)``.

Scaling at training time ("inverted" dropout) keeps every activation's
expected value unchanged, so evaluation is the plain identity and needs no
rescaling. The mask comes from the caller's explicit ``rng``; ``rng=None``
means evaluation mode. Because the mask is the only randomness, a test can
make the pair deterministic (and so check it with finite differences) by
handing every call a fresh generator with the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

from bevialm.types import Array, FloatDType, Grads, Params
from bevialm.validate import check_inputs, require_shape

LAYER = "dropout"


@dataclass(frozen=True)
class DropoutConfig:
    """Drop probability ``p`` in ``[0, 1)``; ``p = 1`` would drop everything and divide by zero."""

    p: float

    def __post_init__(self) -> None:
        check_probability(LAYER, "p", self.p)


def check_probability(layer: str, name: str, p: object) -> None:
    """Raise unless ``p`` is a real number in ``[0, 1)`` (shared with the model's config)."""
    if isinstance(p, bool) or not isinstance(p, Real) or not (math.isfinite(float(p)) and 0 <= float(p) < 1):
        raise ValueError(f"{layer}: {name} must be a probability in [0, 1), got {p!r}")


@dataclass(frozen=True)
class DropoutCache:
    """The scaled keep-mask (entries 0 or ``1/(1-p)``, in the input's dtype), or None when the
    pair was the identity; and the input shape, so backward can reject a wrong cotangent."""

    mask: Array | None
    shape: tuple[int, ...]


def init(cfg: DropoutConfig, rng: np.random.Generator, dtype: FloatDType = np.float32) -> Params:
    """No parameters."""
    return {}


def forward(
    params: Params, x: Array, cfg: DropoutConfig, *, rng: np.random.Generator | None = None
) -> tuple[Array, DropoutCache]:
    """``y = x * mask`` with ``mask = keep / (1 - p)``, ``keep ~ Bernoulli(1 - p)`` drawn from ``rng``.

    With ``p == 0`` or ``rng is None`` this is the identity and draws nothing
    from ``rng``; it returns ``x`` itself rather than a copy (pairs never modify
    the arrays they are given, so sharing is safe, and evaluation and p = 0
    training skip a full copy of the activations per call). The uniforms are drawn in float64 whatever the dtype, so a
    float32 and a float64 run with the same seed drop the same entries.
    """
    check_inputs(LAYER, x, rng=rng)
    if rng is None or cfg.p == 0:
        return x, DropoutCache(None, x.shape)
    keep = rng.random(x.shape) >= cfg.p
    mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - cfg.p))
    return x * mask, DropoutCache(mask, x.shape)


def backward(params: Params, cache: DropoutCache, dy: Array) -> tuple[Array, Grads]:
    """``dx = dy * mask``: dropped entries get no gradient, kept ones the same ``1/(1-p)`` scale.

    In the identity case ``dx`` is ``dy`` itself, not a copy (pairs never modify
    the arrays they are given, so sharing is safe and saves a copy per call).
    """
    require_shape(LAYER, "dy", dy, cache.shape)
    if cache.mask is None:
        return dy, {}
    return dy * cache.mask, {}
