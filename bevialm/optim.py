"""AdamW (playbook chapter 8) as a pure step over ``(params, grads, state)``, the
learning-rate schedule (linear warmup, then cosine decay to a floor) and
global-norm gradient clipping.

One AdamW step, for every parameter ``theta`` with gradient ``g``, at step ``t``
(1 for the first update)::

    m     = beta1 m + (1 - beta1) g
    v     = beta2 v + (1 - beta2) g^2
    m_hat = m / (1 - beta1^t)
    v_hat = v / (1 - beta2^t)
    theta = theta - lr m_hat / (sqrt(v_hat) + eps) - lr wd theta_old

The decay term uses the parameter *before* this step's update and is not part
of the gradient, so it is not rescaled by Adam's per-coordinate denominator
(decoupled weight decay, Loshchilov & Hutter). Which parameters decay is a rule
on names, :func:`decays`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bevialm.flat_params import FlatTensors, Layout
from bevialm.types import Array, Grads, Params

EMBEDDINGS = frozenset({"tok_emb", "pos_emb"})
"""Owners of ``.W`` tables that are looked up, not multiplied: exempt from decay."""


def decays(name: str) -> bool:
    """Whether the parameter ``name`` gets weight decay by default.

    The rule: decay exactly the weight matrices of the linear maps, i.e. names
    whose last component is ``W`` (``"block0.attn.q.W"``, ``"lm_head.W"``, a
    lone layer's ``"W"``), except the embedding tables ``"tok_emb.W"`` and
    ``"pos_emb.W"``. Biases (``.b``), layer-norm gains and shifts (``.gamma``,
    ``.beta``) and embeddings are exempt: shrinking them toward zero does not
    limit the model's capacity the way shrinking a matrix does, and only hurts.
    """
    parts = name.split(".")
    return parts[-1] == "W" and not (len(parts) >= 2 and parts[-2] in EMBEDDINGS)


@dataclass(frozen=True)
class AdamWConfig:
    """AdamW hyperparameters; the defaults are the playbook's table 8.3.

    ``lr`` is the base learning rate (each :func:`step` may be given the
    scheduled one). ``decay_all=True`` decays every parameter, as the playbook
    literally writes it; the default exempts what :func:`decays` exempts.
    """

    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_all: bool = False

    def __post_init__(self) -> None:
        for key in ("beta1", "beta2"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"adamw: {key} must lie in [0, 1), got {value}")
        for key in ("lr", "eps", "weight_decay"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"adamw: {key} must be a finite number >= 0, got {value}")

    def decays(self, name: str) -> bool:
        """Whether ``name`` is decayed under this config (everything, if ``decay_all``)."""
        return self.decay_all or decays(name)


@dataclass(frozen=True)
class AdamWState:
    """The number of steps taken ``t`` and the first and second moments, keyed like the params."""

    t: int
    m: dict[str, Array]
    v: dict[str, Array]


def init_state(params: Params) -> AdamWState:
    """Step 0: zero moments with each parameter's shape and dtype."""
    return AdamWState(
        t=0,
        m={k: np.zeros_like(p) for k, p in params.items()},
        v={k: np.zeros_like(p) for k, p in params.items()},
    )


def _check_keys(params: Params, grads: Mapping[str, Array], state: AdamWState) -> None:
    for what, other in (("grads", grads), ("optimizer state m", state.m), ("optimizer state v", state.v)):
        _check_like(params, what, other)


def _check_like(params: Params, what: str, other: Mapping[str, Array]) -> None:
    """``other`` (the gradients, or a moment) has the params' keys, and each entry their shape and dtype."""
    if other.keys() != params.keys():
        missing = sorted(params.keys() - other.keys())
        extra = sorted(other.keys() - params.keys())
        raise ValueError(f"adamw: {what} keys differ from the params: missing {missing}, unexpected {extra}")
    short = what.removeprefix("optimizer state ").removesuffix("s")  # "grad", "m", "v"
    for k, p in params.items():
        a = other[k]
        if a.shape != p.shape or a.dtype != p.dtype:
            raise ValueError(f"adamw: {short} of '{k}' is {a.dtype}{a.shape}, the parameter is {p.dtype}{p.shape}")


def step(
    params: Params, grads: Mapping[str, Array], state: AdamWState, cfg: AdamWConfig, lr: float | None = None
) -> tuple[dict[str, Array], AdamWState]:
    """One AdamW update: new params and new state; the inputs are never modified.

    ``lr`` is this step's learning rate (from :func:`lr_at`), ``cfg.lr`` when
    None. Every parameter, gradient and moment must share one shape and dtype:
    float32 in, float32 out (all scalars are cast to the parameter's dtype).
    """
    _check_keys(params, grads, state)
    lr = cfg.lr if lr is None else lr
    if not (math.isfinite(lr) and lr >= 0.0):
        raise ValueError(f"adamw: lr must be a finite number >= 0, got {lr}")
    t = state.t + 1
    correction1 = 1.0 - cfg.beta1**t
    correction2 = 1.0 - cfg.beta2**t
    new_params: dict[str, Array] = {}
    new_m: dict[str, Array] = {}
    new_v: dict[str, Array] = {}
    for k, theta in params.items():
        g = grads[k]
        c = theta.dtype.type
        m = np.multiply(state.m[k], c(cfg.beta1))
        tmp = np.multiply(g, c(1.0 - cfg.beta1))
        m += tmp
        v = np.multiply(state.v[k], c(cfg.beta2))
        np.multiply(g, g, out=tmp)
        tmp *= c(1.0 - cfg.beta2)
        v += tmp
        # tmp <- sqrt(v_hat) + eps, then lr * m_hat / tmp with both corrections folded into one scalar
        np.divide(v, c(correction2), out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += c(cfg.eps)
        np.divide(m, tmp, out=tmp)
        tmp *= c(lr / correction1)
        wd = cfg.weight_decay if cfg.decays(k) else 0.0
        new = np.multiply(theta, c(1.0 - lr * wd))  # theta - lr wd theta_old
        new -= tmp
        new_params[k], new_m[k], new_v[k] = new, m, v
    return new_params, AdamWState(t=t, m=new_m, v=new_v)


DECAYED, EXEMPT = "decayed.W", "exempt.b"
"""The two kinds of :func:`flat_step`'s buffers (``"0.decayed.W"``, ``"1.decayed.W"``, ...,
``"0.exempt.b"``), named so that :func:`decays` decays the first kind only."""


def decay_group(name: str) -> str:
    """The kind of :func:`flat_step` buffer that parameter ``name`` lives in."""
    return DECAYED if decays(name) else EXEMPT


def flat_step(
    params: Params, grads: Mapping[str, Array], state: AdamWState, cfg: AdamWConfig, lr: float | None = None
) -> tuple[dict[str, Array], AdamWState]:
    """:func:`step` over two buffers instead of every tensor: the same bits in a few passes.

    The trainer's step. The tensors that decay are laid end to end in one buffer and the exempt
    ones in another (:mod:`bevialm.flat_params`), and :func:`step` itself updates the two
    buffers as two "tensors" named :data:`DECAYED` and :data:`EXEMPT`: the formula is written
    once, and every operation in it is element-wise, so each element gets the bits it gets
    from :func:`step` on its own tensor. The new parameters and moments are
    :class:`FlatTensors`, so the next step finds them laid out already; anything else (the
    first step, a resumed run, gradients as plain dicts) is copied into the parameters'
    layout. Parameters of mixed dtypes take :func:`step` tensor by tensor.
    """
    layout = params.layout if isinstance(params, FlatTensors) else None
    laid_out = [isinstance(x, FlatTensors) and x.layout == layout for x in (grads, state.m, state.v)]
    if layout is None or not laid_out[1:] == [True, True]:
        _check_keys(params, grads, state)
        if len({p.dtype for p in params.values()}) > 1:
            return step(params, grads, state, cfg, lr)
        layout = layout or Layout.of(params, decay_group)
    elif not laid_out[0]:  # laid-out params and moments, plain gradients (one shard): check those
        _check_like(params, "grads", grads)
    p, g, m, v = (layout.pack(x).parts for x in (params, grads, state.m, state.v))
    new, after = step(p, g, AdamWState(state.t, m, v), cfg, lr)
    return FlatTensors(layout, new), AdamWState(after.t, FlatTensors(layout, after.m), FlatTensors(layout, after.v))


def lr_at(step: int, base_lr: float, warmup: int, total: int, min_lr: float) -> float:
    """The learning rate of update number ``step`` (0-based: the first update is step 0).

    - warmup, ``step < warmup``: linear from 0, ``base_lr * (step + 1) / warmup``, so
      the first update already moves (``base_lr / warmup``) and update ``warmup - 1``
      uses the full ``base_lr``;
    - cosine, ``warmup <= step < total``: ``min_lr + (base_lr - min_lr) (1 + cos(pi p)) / 2``
      with ``p = (step - warmup) / (total - warmup)``, from ``base_lr`` at ``step == warmup``
      down toward ``min_lr``;
    - floor, ``step >= total``: ``min_lr``.

    ``warmup=0`` starts the cosine at once; ``total`` is usually the number of steps.
    """
    if step < 0 or warmup < 0 or total < 0:
        raise ValueError(f"lr schedule: step, warmup and total must be >= 0, got {step}, {warmup}, {total}")
    if not (0.0 <= min_lr <= base_lr and math.isfinite(base_lr)):
        raise ValueError(f"lr schedule: need 0 <= min_lr <= base_lr, got min_lr={min_lr}, base_lr={base_lr}")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def global_norm(grads: Mapping[str, Array]) -> float:
    """``sqrt(sum of every squared gradient entry)`` over all tensors, as a Python float."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def clip_by_global_norm(grads: Mapping[str, Array], max_norm: float | None) -> tuple[Grads, float]:
    """``(clipped, norm)``: the gradients scaled so their global norm is at most ``max_norm``.

    ``norm`` is the global norm *before* clipping (what a log should show). All
    tensors are scaled by the same factor ``max_norm / norm``, so the update's
    direction is kept. ``max_norm`` None or ``<= 0`` disables clipping; so does a
    non-finite norm, which is returned for the caller to stop on. The inputs are
    never modified; unclipped tensors are returned as they are (not copied).
    """
    norm = global_norm(grads)
    if max_norm is None or max_norm <= 0 or not math.isfinite(norm) or norm <= max_norm:
        return (grads if isinstance(grads, FlatTensors) else dict(grads)), norm
    scale = max_norm / norm
    if isinstance(grads, FlatTensors):  # one pass per buffer; the same bits as tensor by tensor
        return FlatTensors(grads.layout, {k: np.multiply(g, g.dtype.type(scale)) for k, g in grads.parts.items()}), norm
    return {k: np.multiply(g, g.dtype.type(scale)) for k, g in grads.items()}, norm
