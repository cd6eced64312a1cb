"""The pre-norm transformer block (playbook 6.5 and 15.2)::

    h = x + dropout(attn(ln1(x)))
    y = h + mlp(ln2(h))            # the MLP ends with its own dropout

Each sub-layer reads a normalised copy of the residual stream and *adds* its
result to it; the stream itself is never normalised. So the gradient of the
output reaches the input through the identity path unchanged, plus whatever
the branches add (``docs/block.md``). Dropout on each branch's output, before
the addition, is GPT-2's placement; it draws from the explicit ``rng``
(attention branch first, then the MLP's) and is off when ``rng`` is None.

Composed from the layer norm, attention, dropout and MLP pairs: the backward
calls their backward functions and derives nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bevialm.layers import attention, dropout, layernorm, mlp
from bevialm.layers.dropout import DropoutCache, DropoutConfig
from bevialm.layers.mlp import Activation, MLPCache, MLPConfig
from bevialm.params import scope, unscope
from bevialm.types import Array, FloatDType, Grads, Params
from bevialm.validate import check_inputs, require_shape

LAYER = "block"


@dataclass(frozen=True)
class BlockConfig:
    """One block: ``n_heads``-head causal attention over ``dim`` features (at most ``ctx``
    positions) and a ``dim -> mlp_hidden -> dim`` MLP, with layer norms of epsilon ``ln_eps``."""

    dim: int
    n_heads: int
    ctx: int
    mlp_hidden: int
    activation: Activation = "relu"
    dropout: float = 0.0
    ln_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        # Building the sub-configs validates every field, each with its own layer's message.
        _ = (self.ln1, self.attn, self.mlp)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """In the order :func:`init` draws them."""
        return {
            **unscope(self.ln1.param_shapes(), "ln1."),
            **unscope(self.attn.param_shapes(), "attn."),
            **unscope(self.ln2.param_shapes(), "ln2."),
            **unscope(self.mlp.param_shapes(), "mlp."),
        }

    @cached_property
    def ln1(self) -> layernorm.LayerNormConfig:
        return layernorm.LayerNormConfig(self.dim, self.ln_eps)

    @cached_property
    def ln2(self) -> layernorm.LayerNormConfig:
        return self.ln1

    @cached_property
    def attn(self) -> attention.AttentionConfig:
        return attention.AttentionConfig(self.dim, self.n_heads, self.ctx, self.init_std)

    @cached_property
    def mlp(self) -> MLPConfig:
        return MLPConfig(self.dim, self.mlp_hidden, self.activation, self.dropout, self.init_std)

    @cached_property
    def drop(self) -> DropoutConfig:
        """The dropout on the attention branch (the MLP's is inside the MLP)."""
        return DropoutConfig(self.dropout)


@dataclass(frozen=True)
class BlockCache:
    """The sub-pairs' caches in forward order (``mlp`` holds the ReLU cache, if any)."""

    ln1: layernorm.LayerNormCache
    attn: attention.AttentionCache
    attn_drop: DropoutCache
    ln2: layernorm.LayerNormCache
    mlp: MLPCache


def init(cfg: BlockConfig, rng: np.random.Generator, dtype: FloatDType = np.float32) -> Params:
    """``ln1.gamma/beta``, ``attn.{q,k,v,proj}.{W,b}``, ``ln2.gamma/beta``, ``mlp.fc{1,2}.{W,b}``."""
    return {
        **unscope(layernorm.init(cfg.ln1, rng, dtype), "ln1."),
        **unscope(attention.init(cfg.attn, rng, dtype), "attn."),
        **unscope(layernorm.init(cfg.ln2, rng, dtype), "ln2."),
        **unscope(mlp.init(cfg.mlp, rng, dtype), "mlp."),
    }


def forward(
    params: Params, x: Array, cfg: BlockConfig, *, rng: np.random.Generator | None = None
) -> tuple[Array, BlockCache]:
    """The block on ``x`` of shape ``(B, T, dim)``; ``rng=None`` is evaluation (no dropout)."""
    check_inputs(LAYER, x, cfg.dim, rng=rng)
    a, ln1_cache = layernorm.forward(scope(params, "ln1."), x, cfg.ln1)
    a, attn_cache = attention.forward(scope(params, "attn."), a, cfg.attn)
    a, drop_cache = dropout.forward({}, a, cfg.drop, rng=rng)
    h = x + a
    m, ln2_cache = layernorm.forward(scope(params, "ln2."), h, cfg.ln2)
    m, mlp_cache = mlp.forward(scope(params, "mlp."), m, cfg.mlp, rng=rng)
    return h + m, BlockCache(ln1_cache, attn_cache, drop_cache, ln2_cache, mlp_cache)


def backward(params: Params, cache: BlockCache, dy: Array) -> tuple[Array, Grads]:
    """Each residual addition passes its gradient to both summands unchanged:
    ``dh = dy + ln2'(mlp'(dy))`` and ``dx = dh + ln1'(attn'(dropout'(dh)))``."""
    require_shape(LAYER, "dy", dy, cache.ln1.xhat.shape)
    dm, mlp_grads = mlp.backward(scope(params, "mlp."), cache.mlp, dy)
    dh_mlp, ln2_grads = layernorm.backward(scope(params, "ln2."), cache.ln2, dm)
    dh = dh_mlp + dy
    da, _ = dropout.backward({}, cache.attn_drop, dh)
    da, attn_grads = attention.backward(scope(params, "attn."), cache.attn, da)
    dx_attn, ln1_grads = layernorm.backward(scope(params, "ln1."), cache.ln1, da)
    dx = dx_attn + dh
    return dx, {
        **unscope(ln1_grads, "ln1."),
        **unscope(attn_grads, "attn."),
        **unscope(ln2_grads, "ln2."),
        **unscope(mlp_grads, "mlp."),
    }
