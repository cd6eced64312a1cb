"""Input validation shared by the pairs: bad shapes and dtypes fail early with a
message that names the layer, the array and the shapes involved, never with a
broadcasting error from deep inside NumPy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bevialm.types import Array


def require_floating(layer: str, name: str, a: Array) -> None:
    """Raise unless ``a`` is a floating-point NumPy array."""
    if not isinstance(a, np.ndarray) or a.dtype.kind != "f":  # kind: far cheaper than np.issubdtype
        kind = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{layer}: {name} must be a floating-point array, got {kind}")


def require_same_dtype(layer: str, x: Array, *params: Array) -> None:
    """Raise when parameters and input differ in dtype (a silent upcast would
    double memory and time in float32 training)."""
    for p in params:
        if p.dtype != x.dtype:
            raise ValueError(
                f"{layer}: input dtype {x.dtype} does not match parameter dtype {p.dtype}; "
                "cast one of them (float64 for checking, float32 for training)"
            )


def require_last_dim(layer: str, name: str, a: Array, size: int) -> None:
    """Raise unless ``a`` has at least one axis and its last axis has ``size`` entries."""
    if a.ndim < 1 or a.shape[-1] != size:
        raise ValueError(
            f"{layer}: {name} has shape {a.shape}, expected (..., {size}) (last dimension {size})"
        )


def require_shape(layer: str, name: str, a: Array, shape: Sequence[int]) -> None:
    """Raise unless ``a`` has exactly ``shape``."""
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{layer}: {name} has shape {a.shape}, expected {tuple(shape)}")


def require_positive(layer: str, **sizes: int) -> None:
    """Raise unless every named size is a positive integer (used by the configs)."""
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
            raise ValueError(f"{layer}: {key} must be a positive integer, got {value!r}")
