"""The playbook's CharTransformerLM (chapter 7) as pure functions over one flat parameter mapping.

Forward, for token indices ``idx`` of shape ``(B, T)`` with ``T <= ctx``::

    x = tok_emb(idx) + pos_emb(arange(T))     # (B, T, dim)
    x = dropout(x)                            # GPT-2 style; only with an rng and dropout > 0
    for i in range(n_layers):
        x = block{i}(x)                       # pre-norm attention + MLP, with residuals
    x = ln_f(x)
    logits = lm_head(x)                       # (B, T, vocab_size)

:func:`backward` runs the same pairs' backward functions in reverse and returns
a gradient for every parameter; nothing is derived here that a pair already
derives. ``docs/model.md`` has the parameter table and both orders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bevialm import losses
from bevialm.layers import block, dropout, embedding, layernorm, linear, mlp
from bevialm.layers.block import BlockConfig
from bevialm.layers.dropout import DropoutConfig
from bevialm.params import scope, unscope
from bevialm.types import Array, FloatDType, Grads, IntArray, Params
from bevialm.validate import check_params, checked_at_entry, require_positive, require_rng, require_shape

LAYER = "model"


@dataclass(frozen=True)
class ModelConfig:
    """The model's shape; defaults are the playbook's (Appendix C), with one head as in its code.

    ``init_std`` is the standard deviation of every weight matrix and embedding
    table at initialisation (GPT-2's 0.02).
    """

    vocab_size: int
    ctx: int = 128
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 1
    mlp_hidden: int = 512
    activation: mlp.Activation = "relu"
    dropout: float = 0.0
    ln_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        require_positive(
            LAYER,
            vocab_size=self.vocab_size,
            ctx=self.ctx,
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            mlp_hidden=self.mlp_hidden,
        )
        if self.dim % self.n_heads:
            raise ValueError(f"{LAYER}: n_heads ({self.n_heads}) must divide dim ({self.dim})")
        mlp.check_activation(LAYER, self.activation)
        dropout.check_probability(LAYER, "dropout", self.dropout)
        if not (isinstance(self.ln_eps, int | float) and self.ln_eps > 0):
            raise ValueError(f"{LAYER}: ln_eps must be positive, got {self.ln_eps!r}")
        if not (isinstance(self.init_std, int | float) and math.isfinite(self.init_std) and self.init_std >= 0):
            raise ValueError(f"{LAYER}: init_std must be a finite number >= 0, got {self.init_std!r}")

    @cached_property
    def tok_emb(self) -> embedding.EmbeddingConfig:
        return embedding.EmbeddingConfig(self.vocab_size, self.dim, self.init_std)

    @cached_property
    def pos_emb(self) -> embedding.EmbeddingConfig:
        return embedding.EmbeddingConfig(self.ctx, self.dim, self.init_std)

    @cached_property
    def drop(self) -> DropoutConfig:
        """The dropout on the summed embeddings."""
        return DropoutConfig(self.dropout)

    @cached_property
    def block(self) -> BlockConfig:
        """Every block has the same config."""
        return BlockConfig(
            self.dim,
            self.n_heads,
            self.ctx,
            self.mlp_hidden,
            self.activation,
            self.dropout,
            self.ln_eps,
            self.init_std,
        )

    @cached_property
    def ln_f(self) -> layernorm.LayerNormConfig:
        return layernorm.LayerNormConfig(self.dim, self.ln_eps)

    @cached_property
    def lm_head(self) -> linear.LinearConfig:
        return linear.LinearConfig(self.dim, self.vocab_size, self.init_std)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape, in the order :func:`init_params` draws them."""
        blocks = self.block.param_shapes()
        return {
            **unscope(self.tok_emb.param_shapes(), "tok_emb."),
            **unscope(self.pos_emb.param_shapes(), "pos_emb."),
            **{k: s for i in range(self.n_layers) for k, s in unscope(blocks, block_prefix(i)).items()},
            **unscope(self.ln_f.param_shapes(), "ln_f."),
            **unscope(self.lm_head.param_shapes(), "lm_head."),
        }


@dataclass(frozen=True)
class ModelCache:
    """Everything :func:`backward` needs: the pairs' caches in forward order, plus the
    config the forward pass used."""

    tok_emb: embedding.EmbeddingCache
    pos_emb: embedding.EmbeddingCache
    drop: dropout.DropoutCache
    blocks: tuple[block.BlockCache, ...]
    ln_f: layernorm.LayerNormCache
    lm_head: linear.LinearCache
    cfg: ModelConfig
    idx_shape: tuple[int, int]


def block_prefix(i: int) -> str:
    """``"block{i}."``, the prefix of block ``i``'s parameters."""
    return f"block{i}."


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the order :func:`init_params` draws them
    (``cfg.param_shapes()``: each layer's config gives its own)."""
    return cfg.param_shapes()


def count_params(cfg: ModelConfig) -> int:
    """The number of scalar parameters of a model with this config."""
    return sum(math.prod(shape) for shape in param_shapes(cfg).values())


def init_params(cfg: ModelConfig, rng: np.random.Generator, dtype: FloatDType = np.float32) -> dict[str, Array]:
    """A fresh flat mapping of every parameter (see :func:`param_shapes` for names and shapes).

    Weight matrices and embedding tables are drawn from N(0, ``init_std``²),
    biases are 0, layer-norm gammas 1 and betas 0; drawn in name order from ``rng``.
    """
    params: dict[str, Array] = {
        **unscope(embedding.init(cfg.tok_emb, rng, dtype), "tok_emb."),
        **unscope(embedding.init(cfg.pos_emb, rng, dtype), "pos_emb."),
    }
    for i in range(cfg.n_layers):
        params.update(unscope(block.init(cfg.block, rng, dtype), block_prefix(i)))
    params.update(unscope(layernorm.init(cfg.ln_f, rng, dtype), "ln_f."))
    params.update(unscope(linear.init(cfg.lm_head, rng, dtype), "lm_head."))
    return params


def _check_params(params: Params, cfg: ModelConfig) -> None:
    expected = param_shapes(cfg)
    if set(params) != set(expected):
        missing, extra = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
        raise ValueError(f"{LAYER}: parameters do not match the config: missing {missing}, unexpected {extra}")
    check_params(LAYER, params, expected)
    dtypes = {p.dtype for p in params.values()}  # str() of a dtype is slow: only for the message
    if len(dtypes) != 1 or params["lm_head.W"].dtype.kind != "f":
        got = ", ".join(sorted(map(str, dtypes)))
        raise ValueError(f"{LAYER}: the parameters must share one floating-point dtype, got {got}")


def _check_idx(idx: IntArray, cfg: ModelConfig) -> None:
    if not isinstance(idx, np.ndarray) or not np.issubdtype(idx.dtype, np.integer):
        kind = idx.dtype if isinstance(idx, np.ndarray) else type(idx).__name__
        raise ValueError(f"{LAYER}: idx must be an integer array of token indices, got {kind}")
    if idx.ndim != 2 or not 0 < idx.shape[1] <= cfg.ctx:
        raise ValueError(
            f"{LAYER}: idx has shape {idx.shape}, expected (B, T) with 1 <= T <= ctx = {cfg.ctx}"
        )


def forward(
    params: Params,
    idx: IntArray,
    cfg: ModelConfig,
    *,
    rng: np.random.Generator | None = None,
) -> tuple[Array, ModelCache]:
    """Next-token logits ``(B, T, vocab_size)`` for token indices ``idx`` of shape ``(B, T)``.

    ``rng`` drives every dropout mask (embeddings first, then the blocks in
    order); None is evaluation mode, where the forward pass is deterministic.
    """
    _check_params(params, cfg)
    _check_idx(idx, cfg)
    require_rng(LAYER, rng)
    with checked_at_entry():  # the arrays below are built here from checked ones: no per-layer checks
        return _forward(params, idx, cfg, rng)


def _forward(params: Params, idx: IntArray, cfg: ModelConfig, rng: np.random.Generator | None) -> tuple[Array, ModelCache]:
    tok, tok_cache = embedding.forward(scope(params, "tok_emb."), idx, cfg.tok_emb)
    positions = np.arange(idx.shape[1])
    pos, pos_cache = embedding.forward(scope(params, "pos_emb."), positions, cfg.pos_emb)
    x: Array = tok + pos  # (B, T, C) + (T, C)
    x, drop_cache = dropout.forward({}, x, cfg.drop, rng=rng)
    block_cfg = cfg.block
    block_caches = []
    for i in range(cfg.n_layers):
        x, block_cache = block.forward(scope(params, block_prefix(i)), x, block_cfg, rng=rng)
        block_caches.append(block_cache)
    x, ln_cache = layernorm.forward(scope(params, "ln_f."), x, cfg.ln_f)
    logits: Array
    logits, head_cache = linear.forward(scope(params, "lm_head."), x, cfg.lm_head)
    cache = ModelCache(tok_cache, pos_cache, drop_cache, tuple(block_caches), ln_cache, head_cache, cfg, (idx.shape[0], idx.shape[1]))
    return logits, cache


def backward(params: Params, cache: ModelCache, dlogits: Array) -> Grads:
    """The gradient of every parameter, given ``dlogits = dL/dlogits`` of shape ``(B, T, vocab_size)``.

    Reverse order of :func:`forward`: lm_head, ln_f, the blocks from last to
    first, the embedding dropout, then both embeddings. The position table's
    gradient is the upstream gradient summed over the batch (every sequence
    uses the same positions); rows past ``T`` get zero.
    """
    cfg = cache.cfg
    require_shape(LAYER, "dlogits", dlogits, (*cache.idx_shape, cfg.vocab_size))
    grads: Grads = {}
    dx, g = linear.backward(scope(params, "lm_head."), cache.lm_head, dlogits)
    grads.update(unscope(g, "lm_head."))
    dx, g = layernorm.backward(scope(params, "ln_f."), cache.ln_f, dx)
    grads.update(unscope(g, "ln_f."))
    for i in reversed(range(cfg.n_layers)):
        dx, g = block.backward(scope(params, block_prefix(i)), cache.blocks[i], dx)
        grads.update(unscope(g, block_prefix(i)))
    dx, _ = dropout.backward({}, cache.drop, dx)
    _, g = embedding.backward(scope(params, "pos_emb."), cache.pos_emb, dx.sum(axis=0))
    grads.update(unscope(g, "pos_emb."))
    _, g = embedding.backward(scope(params, "tok_emb."), cache.tok_emb, dx)
    grads.update(unscope(g, "tok_emb."))
    return {name: grads[name] for name in params}  # the parameters' order


def loss_and_grads(
    params: Params,
    idx: IntArray,
    targets: IntArray,
    cfg: ModelConfig,
    *,
    rng: np.random.Generator | None = None,
) -> tuple[float, Grads]:
    """Mean cross-entropy of next tokens ``targets`` (shape ``(B, T)``) and its gradient for every parameter."""
    logits, cache = forward(params, idx, cfg, rng=rng)
    loss, loss_cache = losses.cross_entropy(logits, targets)
    dlogits: Array = losses.cross_entropy_backward(loss_cache)
    return float(loss), backward(params, cache, dlogits)


def attention_maps(cache: ModelCache) -> list[Array]:
    """Each block's attention weights, ``(B, n_heads, T, T)``, first block first (for drawing)."""
    return [block_cache.attn.weights for block_cache in cache.blocks]
