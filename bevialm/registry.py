"""The one registry of layer pairs (the grader's list of tasks, which includes them, is
:mod:`bevialm.grading.task_list`).

Every pair is described once here: its module, how to draw configs and input
shapes (fixed examples and a random ``draw_case``), how to make its input and
parameters, and how to bind its config into the contract's shape
``forward(params, x)`` / ``backward(params, cache, dy)``. The test suite, the
grader and the student-skeleton generator all iterate over :data:`PAIRS`, so a
pair added here is tested everywhere, and a pair not added here cannot be used
by the model without a test noticing (see ``tests/test_pairs.py``).

Config and shape spaces are written against the tiny :class:`Draw` protocol,
so the same description feeds Hypothesis (``tests/strategies.py``) and a
seeded NumPy generator (:class:`RngDraw`, used by the grader).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, TypeVar

import numpy as np

from bevialm import losses
from bevialm.gradcheck import Backward, Forward, avoid_kinks
from bevialm.layers import attention, block, dropout, embedding, gelu, layernorm, linear, mlp, relu, softmax
from bevialm.types import Array, Grads, Params

T = TypeVar("T")


class Draw(Protocol):
    """Where a case's random choices come from (Hypothesis or a seeded generator)."""

    def integer(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``, both ends included."""
        ...

    def choice(self, options: Sequence[T]) -> T:
        """One of ``options``."""
        ...


class RngDraw:
    """:class:`Draw` backed by a NumPy generator: reproducible cases for a given seed."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def choice(self, options: Sequence[T]) -> T:
        return options[int(self.rng.integers(len(options)))]


@dataclass(frozen=True)
class Case:
    """One checking case: a config, the input's shape, and a seed for the input's values.

    ``scale`` and ``shift`` make a stress case's input ``shift + scale * N(0, 1)``
    (see :data:`PairSpec.stress`); ``note`` says what the case stresses, for reports.
    """

    cfg: Any
    shape: tuple[int, ...]
    seed: int = 0
    scale: float = 1.0
    shift: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class Bound:
    """A pair with its case bound in: exactly the contract's two functions."""

    forward: Forward
    backward: Backward


@dataclass(frozen=True)
class Probe:
    """One call of a helper that a pair's graded functions use (``causal_mask(3, 3)``): the grader
    makes it on the student's module too, so a wrong number can be traced to the helper."""

    function: str
    args: tuple[Any, ...]

    def describe(self) -> str:
        shown = ", ".join(f"x of shape {a.shape}" if isinstance(a, np.ndarray) else repr(a) for a in self.args)
        return f"{self.function}({shown})"


@dataclass(frozen=True)
class PairSpec:
    """Everything the tests, the grader and the skeleton generator need to know about one pair."""

    name: str
    module: ModuleType
    """The module that defines ``init``, ``forward`` and ``backward`` (or the loss functions)."""
    draw_case: Callable[[Draw], Case]
    """Draws a random config and input shape (small enough for element-wise checks)."""
    examples: tuple[Case, ...]
    """Fixed cases for the parametrised tests."""
    init: Callable[[Any, np.random.Generator], Params]
    make_input: Callable[[Case, np.random.Generator], Array]
    """Float64 (or integer) input for a case, away from kinks."""
    bind: Callable[[Case], Bound]
    kinks: tuple[float, ...] = ()
    """Input values where the pair is not differentiable (kept away from by ``make_input``)."""
    functions: tuple[str, ...] = ("init", "forward", "backward")
    """The module's functions a student implements."""
    stress: tuple[Case, ...] = ()
    """Fixed cases at the edges where a plausible implementation breaks (logits of 1e3, a
    tiny layer-norm input, T = 1, batch 1, odd head counts); the grader always runs them,
    the test suite checks them like the examples."""
    probes: tuple[Probe, ...] = ()
    """Calls of the module's helpers (not graded themselves) that name a helper as the fault."""


def layer_bind(module: ModuleType, *, seeded: bool = False) -> Callable[[Case], Bound]:
    """Bind a layer module's config: ``forward(params, x, cfg)`` becomes ``forward(params, x)``.

    ``seeded`` pairs take an ``rng`` (dropout and the composites containing it): every
    forward call gets a fresh generator seeded with the case's seed, so the dropout
    mask is the same on every call and the bound pair is a deterministic function
    that finite differences can check.
    """

    def bind(case: Case) -> Bound:
        def fwd(params: Params, x: Array) -> tuple[Array, Any]:
            if seeded:
                y, cache = module.forward(params, x, case.cfg, rng=np.random.default_rng(case.seed))
            else:
                y, cache = module.forward(params, x, case.cfg)
            return y, cache

        def bwd(params: Params, cache: Any, dy: Array) -> tuple[Array | None, Grads]:
            dx, grads = module.backward(params, cache, dy)
            return dx, grads

        return Bound(fwd, bwd)

    return bind


def normal_input(kinks: tuple[float, ...] = ()) -> Callable[[Case, np.random.Generator], Array]:
    """Standard-normal float64 input of the case's shape, moved away from ``kinks``."""

    def make(case: Case, rng: np.random.Generator) -> Array:
        x = rng.standard_normal(case.shape)
        if case.scale != 1.0 or case.shift != 0.0:
            x = case.shift + case.scale * x
        return avoid_kinks(x, kinks) if kinks else x

    return make


def _lead(draw: Draw) -> tuple[int, ...]:
    """Leading dimensions: none, (B,), or (B, T)."""
    rank = draw.integer(0, 2)
    return tuple(draw.integer(1, 4) for _ in range(rank))


def _draw_linear(draw: Draw) -> Case:
    cfg = linear.LinearConfig(draw.integer(1, 6), draw.integer(1, 6))
    return Case(cfg, (*_lead(draw), cfg.d_in), draw.integer(0, 2**16))


LAYERNORM_MIN_DIM = 4
"""Every layer norm the checks draw normalises at least 4 features: over 2 its output is
+-1 up to eps whatever the input, its input gradient is about 1e-4, and a wrong backward
shows up only just above the tolerance."""


def _draw_layernorm(draw: Draw) -> Case:
    cfg = layernorm.LayerNormConfig(draw.integer(LAYERNORM_MIN_DIM, 8))
    return Case(cfg, (*_lead(draw), cfg.dim), draw.integer(0, 2**16))


def _draw_embedding(draw: Draw) -> Case:
    cfg = embedding.EmbeddingConfig(draw.integer(1, 8), draw.integer(1, 5))
    return Case(cfg, (draw.integer(1, 3), draw.integer(1, 6)), draw.integer(0, 2**16))


def _draw_elementwise(cfg: Any) -> Callable[[Draw], Case]:
    def draw_case(draw: Draw) -> Case:
        return Case(cfg, (*_lead(draw), draw.integer(1, 6)), draw.integer(0, 2**16))

    return draw_case


def _embedding_input(case: Case, rng: np.random.Generator) -> Array:
    # Few distinct ids on purpose: repeated indices must accumulate.
    return rng.integers(0, case.cfg.num, size=case.shape)


@dataclass(frozen=True)
class CrossEntropyConfig:
    """Cross-entropy over ``vocab`` classes; the targets are drawn per case from its seed."""

    vocab: int


def _ce_targets(case: Case) -> Array:
    return np.random.default_rng(case.seed + 1).integers(0, case.cfg.vocab, size=case.shape[:-1])


def _ce_bind(case: Case) -> Bound:
    targets = _ce_targets(case)

    def fwd(params: Params, x: Array) -> tuple[Array, Any]:
        return losses.cross_entropy(x, targets)

    def bwd(params: Params, cache: Any, dy: Array) -> tuple[Array | None, Grads]:
        return losses.cross_entropy_backward(cache, dy), {}

    return Bound(fwd, bwd)


def _draw_ce(draw: Draw) -> Case:
    cfg = CrossEntropyConfig(draw.integer(2, 7))
    return Case(cfg, (draw.integer(1, 3), draw.integer(1, 5), cfg.vocab), draw.integer(0, 2**16))


def no_params(cfg: Any, rng: np.random.Generator) -> Params:
    return {}


def _draw_heads(draw: Draw, min_dim: int = 1) -> tuple[int, int]:
    """``(dim, n_heads)``: ``n_heads`` in {1, 2, 3, 4} dividing ``dim``, ``min_dim <= dim <= 9``
    (three heads: a head count that is not a power of two)."""
    n_heads = draw.choice((1, 2, 3, 4))
    head_dim = draw.integer(max(1, -(-min_dim // n_heads)), 9 // n_heads)
    return n_heads * head_dim, n_heads


def _draw_attention(draw: Draw) -> Case:
    dim, n_heads = _draw_heads(draw)
    cfg = attention.AttentionConfig(dim, n_heads, draw.integer(1, 5))
    return Case(cfg, (draw.integer(1, 3), draw.integer(1, cfg.ctx), dim), draw.integer(0, 2**16))


DROPOUT_RATES = (0.0, 0.25, 0.5)


def _draw_dropout(draw: Draw) -> Case:
    cfg = dropout.DropoutConfig(draw.choice(DROPOUT_RATES))
    return Case(cfg, (*_lead(draw), draw.integer(1, 6)), draw.integer(0, 2**16))


def _draw_mlp(draw: Draw) -> Case:
    cfg = mlp.MLPConfig(
        draw.integer(1, 8), draw.integer(1, 8), draw.choice(mlp.ACTIVATIONS), draw.choice(DROPOUT_RATES)
    )
    return Case(cfg, (*_lead(draw), cfg.dim), draw.integer(0, 2**16))


def _draw_block(draw: Draw) -> Case:
    dim, n_heads = _draw_heads(draw, min_dim=LAYERNORM_MIN_DIM)  # the block's layer norms
    cfg = block.BlockConfig(
        dim,
        n_heads,
        draw.integer(1, 5),
        draw.integer(1, 8),
        draw.choice(mlp.ACTIVATIONS),
        draw.choice(DROPOUT_RATES),
    )
    return Case(cfg, (draw.integer(1, 2), draw.integer(1, cfg.ctx), dim), draw.integer(0, 2**16))


def _logit_shifts(cfg: Any, *shapes: tuple[int, ...]) -> tuple[Case, ...]:
    """Logits shifted by +1000 and by -1000: ``exp`` overflows to inf, or underflows to 0, unless
    the row maximum is subtracted first. Softmax and cross-entropy are invariant under a shift of a
    whole row, so each case is the standard-normal case in disguise and finite differences are as
    well conditioned (|x| ~ 1e3 rounds the step h = 1e-6 by at most 1e-13, a relative 1e-7)."""
    return (
        Case(cfg, shapes[0], 11, shift=1e3, note="logits near +1000 (exp overflows unless the row max is subtracted)"),
        Case(cfg, shapes[1], 12, shift=-1e3, note="logits near -1000 (exp underflows unless the row max is subtracted)"),
    )


PAIRS: tuple[PairSpec, ...] = (
    PairSpec(
        name="linear",
        module=linear,
        draw_case=_draw_linear,
        examples=(
            Case(linear.LinearConfig(3, 4), (3,), 1),
            Case(linear.LinearConfig(5, 2), (2, 5), 2),
            Case(linear.LinearConfig(4, 6), (2, 3, 4), 3),
            Case(linear.LinearConfig(1, 1), (2, 2, 2, 1), 4),
        ),
        stress=(Case(linear.LinearConfig(3, 4), (1, 1, 3), 11, note="batch 1, T = 1"),),
        init=lambda cfg, rng: linear.init(cfg, rng, np.float64),
        make_input=normal_input(),
        bind=layer_bind(linear),
    ),
    PairSpec(
        name="layernorm",
        module=layernorm,
        draw_case=_draw_layernorm,
        examples=(
            Case(layernorm.LayerNormConfig(4), (4,), 1),
            Case(layernorm.LayerNormConfig(6), (2, 3, 6), 2),
            Case(layernorm.LayerNormConfig(4), (5, 4), 3),
        ),
        # Scales where a layer norm's eps and its 1/std show: the output is scale-invariant,
        # so finite differences are as well conditioned as at scale 1 (the input gradient
        # shrinks as 1/scale and stays far above atol at 1e3).
        stress=(
            Case(layernorm.LayerNormConfig(6), (3, 6), 11, scale=1e3, note="input scale 1e3"),
            Case(
                layernorm.LayerNormConfig(5),
                (2, 2, 5),
                12,
                scale=1e-2,
                note="input scale 1e-2: the variance, about 1e-4, is close to eps = 1e-5 (inside the square root)",
            ),
        ),
        init=lambda cfg, rng: layernorm.init(cfg, rng, np.float64),
        make_input=normal_input(),
        bind=layer_bind(layernorm),
    ),
    PairSpec(
        name="embedding",
        module=embedding,
        draw_case=_draw_embedding,
        examples=(
            Case(embedding.EmbeddingConfig(5, 3), (2, 4), 1),
            Case(embedding.EmbeddingConfig(2, 4), (3, 6), 2),  # many repeated indices
            Case(embedding.EmbeddingConfig(7, 2), (7,), 3),
        ),
        init=lambda cfg, rng: embedding.init(cfg, rng, np.float64),
        make_input=_embedding_input,
        bind=layer_bind(embedding),
    ),
    PairSpec(
        name="relu",
        module=relu,
        draw_case=_draw_elementwise(relu.ReluConfig()),
        examples=(Case(relu.ReluConfig(), (7,), 1), Case(relu.ReluConfig(), (2, 3, 4), 2)),
        init=no_params,
        make_input=normal_input((0.0,)),
        bind=layer_bind(relu),
        kinks=(0.0,),
    ),
    PairSpec(
        name="gelu",
        module=gelu,
        draw_case=_draw_elementwise(gelu.GeluConfig()),
        examples=(Case(gelu.GeluConfig(), (7,), 1), Case(gelu.GeluConfig(), (2, 3, 4), 2)),
        init=no_params,
        make_input=normal_input(),
        bind=layer_bind(gelu),
    ),
    PairSpec(
        name="softmax",
        module=softmax,
        draw_case=_draw_elementwise(softmax.SoftmaxConfig()),
        examples=(Case(softmax.SoftmaxConfig(), (5,), 1), Case(softmax.SoftmaxConfig(), (2, 3, 4), 2)),
        init=no_params,
        make_input=normal_input(),
        bind=layer_bind(softmax),
        # the numerically stable softmax itself (playbook 3.4) is part of the exercise
        functions=("init", "forward", "backward", "softmax"),
        stress=_logit_shifts(softmax.SoftmaxConfig(), (2, 3, 5), (4, 6)),
    ),
    PairSpec(
        name="cross_entropy",
        module=losses,
        draw_case=_draw_ce,
        examples=(
            Case(CrossEntropyConfig(5), (2, 3, 5), 1),
            Case(CrossEntropyConfig(2), (1, 1, 2), 2),
            Case(CrossEntropyConfig(7), (3, 4, 7), 3),
        ),
        init=no_params,
        make_input=normal_input(),
        bind=_ce_bind,
        functions=("cross_entropy", "cross_entropy_backward"),
        stress=_logit_shifts(CrossEntropyConfig(5), (2, 3, 5), (1, 4, 5)),
    ),
    # Attention examples have T >= 2: with one key the weights are constant and
    # the q and k gradients vanish, which would hide a wrong backward.
    PairSpec(
        name="attention",
        module=attention,
        draw_case=_draw_attention,
        examples=(
            Case(attention.AttentionConfig(4, 2, 4), (2, 3, 4), 1),  # shorter than ctx
            Case(attention.AttentionConfig(3, 1, 3), (1, 3, 3), 2),  # one head, full ctx
            Case(attention.AttentionConfig(4, 4, 3), (2, 2, 4), 3),  # head_dim 1
        ),
        probes=(
            Probe("causal_mask", (1, 1)),
            Probe("causal_mask", (4, 4)),
            Probe("split_heads", (np.arange(2 * 3 * 6, dtype=np.float64).reshape(2, 3, 6), 3)),
            Probe("merge_heads", (np.arange(2 * 3 * 3 * 2, dtype=np.float64).reshape(2, 3, 3, 2),)),
        ),
        stress=(
            # one key: the weights are 1, so only the v path and dx are checked (dq = dk = 0)
            Case(attention.AttentionConfig(6, 3, 5), (1, 1, 6), 11, note="T = 1, batch 1, three heads"),
            Case(attention.AttentionConfig(6, 3, 5), (1, 4, 6), 12, note="batch 1, three heads, T = 4 < ctx = 5"),
        ),
        init=lambda cfg, rng: attention.init(cfg, rng, np.float64),
        make_input=normal_input(),
        bind=layer_bind(attention),
        # The scaled, masked softmax core is the heart of the exercise: students write it too.
        functions=("init", "forward", "backward", "attend", "attend_backward"),
    ),
    PairSpec(
        name="dropout",
        module=dropout,
        draw_case=_draw_dropout,
        examples=(
            Case(dropout.DropoutConfig(0.5), (2, 3, 4), 1),
            Case(dropout.DropoutConfig(0.0), (5,), 2),
            Case(dropout.DropoutConfig(0.25), (3, 4), 3),
        ),
        init=no_params,
        make_input=normal_input(),
        bind=layer_bind(dropout, seeded=True),
    ),
    PairSpec(
        name="mlp",
        module=mlp,
        draw_case=_draw_mlp,
        examples=(
            Case(mlp.MLPConfig(3, 5, "relu"), (2, 3, 3), 1),
            Case(mlp.MLPConfig(4, 6, "gelu"), (2, 4), 2),
            Case(mlp.MLPConfig(3, 4, "relu", dropout=0.25), (2, 2, 3), 3),
            Case(mlp.MLPConfig(2, 3, "gelu", dropout=0.5), (3, 2), 4),
        ),
        init=lambda cfg, rng: mlp.init(cfg, rng, np.float64),
        make_input=normal_input(),
        bind=layer_bind(mlp, seeded=True),
    ),
    PairSpec(
        name="block",
        module=block,
        draw_case=_draw_block,
        examples=(
            # Tiny on purpose: each example is checked once per parameter tensor with a
            # deliberately wrong backward. Four heads are covered by attention's examples.
            # Four features: a layer norm over two is nearly constant (see LAYERNORM_MIN_DIM).
            Case(block.BlockConfig(4, 2, 4, 2, "relu"), (1, 3, 4), 1),  # two heads, shorter than ctx
            Case(block.BlockConfig(4, 1, 3, 3, "gelu", dropout=0.25), (2, 3, 4), 2),
        ),
        stress=(Case(block.BlockConfig(6, 3, 4, 5, "gelu"), (1, 1, 6), 11, note="T = 1, batch 1, three heads"),),
        init=lambda cfg, rng: block.init(cfg, rng, np.float64),
        make_input=normal_input(),
        bind=layer_bind(block, seeded=True),
    ),
)

BY_NAME: dict[str, PairSpec] = {spec.name: spec for spec in PAIRS}
