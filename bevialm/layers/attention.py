"""Causal multi-head self-attention (playbook 3.3 and 6.4).

Forward, for ``x`` of shape ``(B, T, C)`` with ``H`` heads of ``hd = C / H`` features:

1. project: ``q = x Wq + bq``, ``k = x Wk + bk``, ``v = x Wv + bv`` (three linear pairs);
2. split heads: ``(B, T, C) -> (B, H, T, hd)``;
3. scores ``S = q k^T / sqrt(hd)``, shape ``(B, H, T, T)``;
4. causal mask: ``S[i, j] = -inf`` for every key ``j`` after query ``i``;
5. weights ``A = softmax(S)`` over the keys (the softmax pair);
6. ``o = A v``, merge heads back to ``(B, T, C)``, project: ``y = o Wp + bp``.

Steps 3-5 and the product with ``v`` are :func:`attend`, the scaled, masked
softmax core; :func:`split_heads`, :func:`merge_heads`, :func:`project` and
:func:`attend` are public so an incremental decoder with a key/value cache can
run the same projections and the same core on one new token at a time (its
queries are the last positions of the keys it attends to; :func:`causal_mask`
handles that offset). ``docs/attention.md`` derives the backward pass.

All heads run at once as batched matrix products over ``(B, H)``: there is no
Python loop over batch, time or heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from bevialm.layers import linear, softmax
from bevialm.params import scope, unscope
from bevialm.types import Array, FloatDType, Grads, Params
from bevialm.validate import check_inputs, require_positive, require_shape

LAYER = "attention"

PROJECTIONS = ("q", "k", "v", "proj")
"""The four linear sub-pairs, by local name (their parameters are ``q.W``, ``q.b``, ...)."""

_SOFTMAX = softmax.SoftmaxConfig()


@dataclass(frozen=True)
class AttentionConfig:
    """``n_heads`` heads over ``dim`` features for sequences of at most ``ctx`` positions."""

    dim: int
    n_heads: int
    ctx: int
    init_std: float = 0.02

    def __post_init__(self) -> None:
        require_positive(LAYER, dim=self.dim, n_heads=self.n_heads, ctx=self.ctx)
        if self.dim % self.n_heads:
            raise ValueError(f"{LAYER}: n_heads ({self.n_heads}) must divide dim ({self.dim})")

    # Derived values and sub-configs are built once per config, not on every forward call:
    # cached_property writes to the instance __dict__, which a frozen dataclass allows.
    @cached_property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @cached_property
    def linear(self) -> linear.LinearConfig:
        """The config of each of the four projections (all ``dim -> dim``)."""
        return linear.LinearConfig(self.dim, self.dim, self.init_std)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``q``, ``k``, ``v``, ``proj``: each a ``dim -> dim`` linear layer's ``W`` and ``b``."""
        return {k: s for name in PROJECTIONS for k, s in unscope(self.linear.param_shapes(), name + ".").items()}


@dataclass(frozen=True)
class CoreCache:
    """What :func:`attend_backward` needs: the per-head queries, keys and values
    ``(B, H, T, hd)`` and the softmax's cache, whose output is the attention weights."""

    q: Array
    k: Array
    v: Array
    softmax: softmax.SoftmaxCache

    @property
    def weights(self) -> Array:
        return self.softmax.y


@dataclass(frozen=True)
class AttentionCache:
    """The four projections' caches, the core's cache, and ``weights``: the attention
    weights of shape ``(B, H, T, T)`` (``weights[b, h, i, j]`` is how much query ``i``
    of head ``h`` takes from key ``j``; the same array as ``core.weights``, not a copy)."""

    q: linear.LinearCache
    k: linear.LinearCache
    v: linear.LinearCache
    core: CoreCache
    proj: linear.LinearCache
    weights: Array
    n_heads: int

    @property
    def head_outputs(self) -> Array:
        """Each head's output ``A v`` before the output projection, ``(B, H, T, hd)`` (a view)."""
        x2d, (b, t) = self.proj.x2d, self.proj.lead_shape
        return split_heads(x2d.reshape(b, t, -1), self.n_heads)


def split_heads(x: Array, n_heads: int) -> Array:
    """``(B, T, C) -> (B, H, T, C / H)``: head ``h`` owns features ``h*hd .. (h+1)*hd - 1``.

    Returns a view (no copy); the batched products below accept it as it is.
    """
    b, t, c = x.shape
    return x.reshape(b, t, n_heads, c // n_heads).transpose(0, 2, 1, 3)


def merge_heads(x: Array) -> Array:
    """``(B, H, T, hd) -> (B, T, H * hd)``, the inverse of :func:`split_heads` (a copy, or a
    view when the layout allows, e.g. one head; callers never modify it either way)."""
    b, h, t, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * hd)


@lru_cache(maxsize=64)
def causal_mask(t_q: int, t_k: int) -> Array:
    """Boolean ``(t_q, t_k)``, True where query ``i`` must not see key ``j``.

    The queries are the *last* ``t_q`` of the ``t_k`` positions (query ``i`` sits
    at position ``t_k - t_q + i``), so ``t_q == t_k`` is ordinary causal
    self-attention and ``t_q == 1`` is one new token against a key/value cache
    (nothing masked). Key 0 is always visible, so no row is entirely ``-inf``.
    Masks are memoised per shape and returned read-only.
    """
    if not 0 < t_q <= t_k:
        raise ValueError(f"{LAYER}: need 0 < queries <= keys, got {t_q} queries and {t_k} keys")
    mask = np.triu(np.ones((t_q, t_k), dtype=bool), k=t_k - t_q + 1)
    mask.flags.writeable = False
    return mask


@lru_cache(maxsize=64)
def _additive_mask(t_q: int, t_k: int, dtype: np.dtype[Any]) -> Array:
    """:func:`causal_mask` as 0 / -inf in ``dtype``: adding it is one fast broadcast pass,
    where assigning through a boolean mask gathers indices first."""
    mask = np.where(causal_mask(t_q, t_k), -np.inf, 0.0).astype(dtype)
    mask.flags.writeable = False
    return mask


def attend(q: Array, k: Array, v: Array) -> tuple[Array, CoreCache]:
    """The core: ``softmax(mask(q k^T / sqrt(hd))) v`` for every batch entry and head at once.

    ``q`` is ``(B, H, Tq, hd)``, ``k`` and ``v`` are ``(B, H, Tk, hd)`` with
    ``Tq <= Tk`` (see :func:`causal_mask`); returns ``(B, H, Tq, hd)``. The
    softmax is the softmax pair's, so its gradient is not derived twice.
    """
    heads_match = q.ndim == k.ndim == 4 and (q.shape[:2], q.shape[3]) == (k.shape[:2], k.shape[3])
    if not heads_match or k.shape != v.shape:
        raise ValueError(
            f"{LAYER}: attend needs q (B, H, Tq, hd) and k, v (B, H, Tk, hd), "
            f"got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    scores = q @ k.swapaxes(-1, -2) * scale
    if q.shape[2] > 1:  # one query (a decoder's newest token) sees every key: nothing to mask
        scores = scores + _additive_mask(q.shape[2], k.shape[2], q.dtype)  # -inf above the diagonal
    weights, softmax_cache = softmax.forward({}, scores, _SOFTMAX)
    return weights @ v, CoreCache(q, k, v, softmax_cache)


def attend_backward(cache: CoreCache, dout: Array) -> tuple[Array, Array, Array]:
    """``(dq, dk, dv)`` from ``dout`` of :func:`attend`'s output shape.

    With ``A`` the weights and ``s = 1/sqrt(hd)``: ``dv = A^T dout``,
    ``dA = dout v^T``, ``dS`` from the softmax pair's backward (it is 0 at
    masked entries, where ``A`` is 0, so the mask needs no backward of its
    own), then ``dq = s dS k`` and ``dk = s dS^T q``.
    """
    weights = cache.weights
    require_shape(LAYER, "dout", dout, (*weights.shape[:3], cache.v.shape[-1]))
    dv = weights.swapaxes(-1, -2) @ dout
    dweights = dout @ cache.v.swapaxes(-1, -2)
    dscores, _ = softmax.backward({}, cache.softmax, dweights)
    scale = dout.dtype.type(1.0 / math.sqrt(cache.q.shape[-1]))
    dq = dscores @ cache.k * scale  # scale the (T, hd) products, smaller than the (T, T) scores
    dk = dscores.swapaxes(-1, -2) @ cache.q * scale
    return dq, dk, dv


def project(params: Params, name: str, x: Array, cfg: AttentionConfig) -> tuple[Array, linear.LinearCache]:
    """Run projection ``name`` (one of :data:`PROJECTIONS`) of the attention ``params`` on ``x``."""
    return linear.forward(scope(params, name + "."), x, cfg.linear)


def init(cfg: AttentionConfig, rng: np.random.Generator, dtype: FloatDType = np.float32) -> Params:
    """``q``, ``k``, ``v`` and ``proj``, each ``W (dim, dim)`` ~ N(0, init_std²) and ``b`` zeros, drawn in that order."""
    params: dict[str, Array] = {}
    for name in PROJECTIONS:
        params.update(unscope(linear.init(cfg.linear, rng, dtype), name + "."))
    return params


def forward(params: Params, x: Array, cfg: AttentionConfig) -> tuple[Array, AttentionCache]:
    """Causal self-attention over ``x`` of shape ``(B, T, dim)`` with ``1 <= T <= ctx``."""
    check_inputs(LAYER, x, cfg.dim, ctx=cfg.ctx)
    q, q_cache = project(params, "q", x, cfg)
    k, k_cache = project(params, "k", x, cfg)
    v, v_cache = project(params, "v", x, cfg)
    h = cfg.n_heads
    out, core = attend(split_heads(q, h), split_heads(k, h), split_heads(v, h))
    y, proj_cache = project(params, "proj", merge_heads(out), cfg)
    return y, AttentionCache(q_cache, k_cache, v_cache, core, proj_cache, core.weights, h)


def backward(params: Params, cache: AttentionCache, dy: Array) -> tuple[Array, Grads]:
    """Backward through the output projection, the core, and the three input projections.

    ``x`` feeds all three of ``q``, ``k`` and ``v``, so ``dx`` is the sum of
    the three projections' input gradients.
    """
    dim = cache.proj.x2d.shape[1]
    require_shape(LAYER, "dy", dy, (*cache.proj.lead_shape, dim))
    d_merged, grads_proj = linear.backward(scope(params, "proj."), cache.proj, dy)
    dq, dk, dv = attend_backward(cache.core, split_heads(d_merged, cache.n_heads))
    dx_q, grads_q = linear.backward(scope(params, "q."), cache.q, merge_heads(dq))
    dx_k, grads_k = linear.backward(scope(params, "k."), cache.k, merge_heads(dk))
    dx_v, grads_v = linear.backward(scope(params, "v."), cache.v, merge_heads(dv))
    dx = dx_q + dx_k + dx_v  # x feeds all three projections
    return dx, {
        **unscope(grads_q, "q."),
        **unscope(grads_k, "k."),
        **unscope(grads_v, "v."),
        **unscope(grads_proj, "proj."),
    }
