"""Input validation shared by the pairs: bad shapes and dtypes fail early with a
message that names the layer, the array and the shapes involved, never with a
broadcasting error from deep inside NumPy."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import numpy as np

from bevialm.types import Array, Params


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


class HasParamShapes(Protocol):
    """A layer config that names its parameters' shapes (every config with parameters)."""

    def param_shapes(self) -> dict[str, tuple[int, ...]]: ...


NO_RNG: Any = object()
"""Default of :func:`check_inputs`'s ``rng``: the pair takes no random generator."""


def check_params(layer: str, params: Params, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """The one shape check for parameters: each named parameter has the shape ``shapes`` gives."""
    for name, shape in shapes.items():
        if name not in params:
            raise ValueError(f"{layer}: parameter {name!r} is missing (got {sorted(params)})")
        require_shape(layer, name, params[name], shape)


_CHECKED: ContextVar[bool] = ContextVar("bevialm_inputs_checked", default=False)
"""True inside :func:`checked_at_entry` (per thread: two threads of one program each have their own)."""


@contextmanager
def checked_at_entry() -> Iterator[None]:
    """Inside, :func:`check_inputs` returns at once: for a composite (the model, the decoder)
    that has checked its own inputs at its entry, so that every pair it calls with the arrays
    it built itself does not check them again (a few microseconds a call, hundreds of calls a
    step). A pair called from anywhere else still checks its inputs."""
    token = _CHECKED.set(True)
    try:
        yield
    finally:
        _CHECKED.reset(token)


def check_inputs(
    layer: str,
    x: Array,
    width: int | None = None,
    *,
    cfg: HasParamShapes | None = None,
    params: Params | None = None,
    ctx: int | None = None,
    rng: object = NO_RNG,
) -> None:
    """The one check at the top of a forward pass, in this order: ``x`` is a floating array;
    each parameter has the shape ``cfg.param_shapes()`` gives; ``x`` ends in ``width`` features;
    with ``ctx``, ``x`` is ``(B, T, width)`` with ``1 <= T <= ctx``; the parameters share ``x``'s
    dtype; ``rng`` is a Generator or None. Composite pairs leave the parameters to their sub-pairs.
    Nothing inside :func:`checked_at_entry`."""
    if _CHECKED.get():
        return
    require_floating(layer, "x", x)
    if cfg is not None and params is not None:
        check_params(layer, params, cfg.param_shapes())
    if width is not None:
        require_last_dim(layer, "x", x, width)
    if ctx is not None and (x.ndim != 3 or not 0 < x.shape[1] <= ctx):
        raise ValueError(f"{layer}: x has shape {x.shape}, expected (B, T, {width}) with 1 <= T <= ctx = {ctx}")
    if params is not None:
        require_same_dtype(layer, x, *params.values())
    if rng is not NO_RNG:
        require_rng(layer, rng)


def require_rng(layer: str, rng: object) -> None:
    """Raise unless ``rng`` is a NumPy Generator or None (evaluation: no dropout)."""
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"{layer}: rng must be a numpy.random.Generator or None (evaluation), got {type(rng).__name__}"
        )


def check_indices(layer: str, idx: Any, cfg: Any, params: Params) -> None:
    """The one check at the top of an embedding lookup: the table has the config's shape and
    ``idx`` is an integer array of rows in ``[0, cfg.num)``."""
    check_params(layer, params, cfg.param_shapes())
    if not isinstance(idx, np.ndarray) or not np.issubdtype(idx.dtype, np.integer):
        kind = idx.dtype if isinstance(idx, np.ndarray) else type(idx).__name__
        raise ValueError(f"{layer}: indices must be an integer array, got {kind}")
    if idx.size and (idx.min() < 0 or idx.max() >= cfg.num):
        raise ValueError(f"{layer}: indices must lie in [0, {cfg.num}), got values from {idx.min()} to {idx.max()}")
