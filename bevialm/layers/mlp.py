"""The transformer's position-wise feed-forward network: ``fc1 -> activation -> fc2 (-> dropout)``.

Every position is transformed on its own (the linear layers work over any
leading dimensions), widening to ``hidden`` features, applying ReLU (the
playbook's choice) or GELU (GPT-2's), and projecting back to ``dim``. When the
MLP is a residual branch of a block, the trailing dropout is GPT-2's dropout
on that branch's output.

Composed from the linear, activation and dropout pairs: the backward calls
their backward functions in reverse order and derives nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from bevialm.layers import dropout, gelu, linear, relu
from bevialm.layers.dropout import DropoutCache, DropoutConfig
from bevialm.params import scope, unscope
from bevialm.types import Array, FloatDType, Grads, Params
from bevialm.validate import check_inputs, require_positive, require_shape

LAYER = "mlp"

Activation = Literal["relu", "gelu"]
ACTIVATIONS: tuple[Activation, ...] = ("relu", "gelu")


def check_activation(layer: str, activation: str) -> None:
    """Raise unless ``activation`` is one the MLP knows (shared by the block and model configs)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"{layer}: activation must be one of {ACTIVATIONS}, got {activation!r}")


@dataclass(frozen=True)
class MLPConfig:
    """``dim -> hidden -> dim``; weights N(0, ``init_std``²), biases 0; ``dropout`` on the output."""

    dim: int
    hidden: int
    activation: Activation = "relu"
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        require_positive(LAYER, dim=self.dim, hidden=self.hidden)
        check_activation(LAYER, self.activation)
        DropoutConfig(self.dropout)  # validates p with dropout's own message

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**unscope(self.fc1.param_shapes(), "fc1."), **unscope(self.fc2.param_shapes(), "fc2.")}

    @cached_property
    def fc1(self) -> linear.LinearConfig:
        return linear.LinearConfig(self.dim, self.hidden, self.init_std)

    @cached_property
    def fc2(self) -> linear.LinearConfig:
        return linear.LinearConfig(self.hidden, self.dim, self.init_std)

    @cached_property
    def drop(self) -> DropoutConfig:
        return DropoutConfig(self.dropout)


@dataclass(frozen=True)
class MLPCache:
    """The sub-pairs' caches. ``act`` is the ReLU or GELU cache; a ReLU cache offers
    ``kink_distance()``, which :func:`bevialm.gradcheck.kink_distance` finds through this one."""

    fc1: linear.LinearCache
    act: relu.ReluCache | gelu.GeluCache
    fc2: linear.LinearCache
    drop: DropoutCache


def init(cfg: MLPConfig, rng: np.random.Generator, dtype: FloatDType = np.float32) -> Params:
    """``fc1.W`` ``(dim, hidden)``, ``fc1.b``, ``fc2.W`` ``(hidden, dim)``, ``fc2.b``."""
    return {
        **unscope(linear.init(cfg.fc1, rng, dtype), "fc1."),
        **unscope(linear.init(cfg.fc2, rng, dtype), "fc2."),
    }


def forward(
    params: Params, x: Array, cfg: MLPConfig, *, rng: np.random.Generator | None = None
) -> tuple[Array, MLPCache]:
    """``y = dropout(act(x @ W1 + b1) @ W2 + b2)`` over ``x`` of shape ``(..., dim)``.

    The dropout draws from ``rng`` only when ``cfg.dropout > 0``; ``rng=None`` is evaluation.
    """
    check_inputs(LAYER, x, cfg.dim, rng=rng)
    h, fc1_cache = linear.forward(scope(params, "fc1."), x, cfg.fc1)
    act_cache: relu.ReluCache | gelu.GeluCache
    if cfg.activation == "relu":
        a, act_cache = relu.forward({}, h, relu.ReluConfig())
    else:
        a, act_cache = gelu.forward({}, h, gelu.GeluConfig())
    y, fc2_cache = linear.forward(scope(params, "fc2."), a, cfg.fc2)
    y, drop_cache = dropout.forward({}, y, cfg.drop, rng=rng)
    return y, MLPCache(fc1_cache, act_cache, fc2_cache, drop_cache)


def backward(params: Params, cache: MLPCache, dy: Array) -> tuple[Array, Grads]:
    """The sub-pairs' backward passes in reverse: dropout, fc2, activation, fc1."""
    require_shape(LAYER, "dy", dy, cache.drop.shape)
    dy, _ = dropout.backward({}, cache.drop, dy)
    da, fc2_grads = linear.backward(scope(params, "fc2."), cache.fc2, dy)
    if isinstance(cache.act, relu.ReluCache):
        dh, _ = relu.backward({}, cache.act, da)
    else:
        dh, _ = gelu.backward({}, cache.act, da)
    dx, fc1_grads = linear.backward(scope(params, "fc1."), cache.fc1, dh)
    return dx, {**unscope(fc1_grads, "fc1."), **unscope(fc2_grads, "fc2.")}
