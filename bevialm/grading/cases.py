"""The grader's fixed, seeded cases and the reference's answers to them.

Every student gets the same cases for a given rubric seed: each pair's fixed
examples from the registry plus ``drawn_cases`` more drawn from the pair's own
``draw_case`` with :class:`~bevialm.registry.RngDraw` (the distribution the
test suite samples with Hypothesis). Points are built as in the test suite:
float64 parameters moved away from their initial values (so a backward that
forgets ``gamma`` cannot pass at ``gamma = 1``) and inputs away from kinks.
The reference runs here, in the grader's process, before any student code.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from bevialm import model
from bevialm.gradcheck import DEFAULT, away_from_init, kink_distance
from bevialm.grading.rubric import Settings
from bevialm.grading.tasks import PointInput
from bevialm.registry import Case, PairSpec, RngDraw
from bevialm.types import Array, IntArray

MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class PairPoint:
    """One case of a pair: the inputs every check uses and the reference's results."""

    label: str
    input: PointInput
    y: Array
    dx: Array | None
    grads: dict[str, Array]
    init: dict[str, Any] | None
    """Keys -> ``[shape, dtype]`` of the reference ``init`` in float64 (None when the pair has no init)."""


def cases(spec: PairSpec, seed: int, drawn: int) -> list[Case]:
    """The registry's examples and stress cases, then ``drawn`` cases drawn from ``seed`` and the
    pair's name (so adding a pair to the registry changes no other pair's cases)."""
    draw = RngDraw(np.random.default_rng([seed, zlib.crc32(spec.name.encode())]))
    return [*spec.examples, *spec.stress, *(spec.draw_case(draw) for _ in range(drawn))]


def describe_case(i: int, case: Case) -> str:
    note = f", {case.note}" if case.note else ""
    return f"case {i + 1}: {case.cfg!r}, input shape {case.shape}{note}"


def point(spec: PairSpec, case: Case, label: str) -> PairPoint:
    """Parameters, input and cotangent for ``case``, redrawn while a kink is too close."""
    bound = spec.bind(case)
    for attempt in range(MAX_ATTEMPTS):
        rng = np.random.default_rng([case.seed, attempt])
        params = away_from_init(spec.init(case.cfg, rng), rng)
        x = spec.make_input(case, rng)
        y, cache = bound.forward(params, x)
        if kink_distance(cache) >= DEFAULT.kink_margin:
            break
    else:  # pragma: no cover - the registry's make_input keeps kinks away
        raise RuntimeError(f"no point away from kinks for {spec.name} {case}")
    dy = np.random.default_rng([case.seed, 7]).standard_normal(np.shape(y))
    dx, grads = bound.backward(params, cache, dy)
    init = None
    if "init" in spec.functions:
        init = {k: [list(v.shape), str(v.dtype)] for k, v in spec.init(case.cfg, np.random.default_rng(0)).items()}
    return PairPoint(label, PointInput(case, params, x, dy), y, dx, dict(grads), init)


def pair_points(spec: PairSpec, settings: Settings) -> list[PairPoint]:
    """The pair's points, the most telling first: cases whose parameters are not square and
    whose input has several rows run before the others, so a transposed matrix shows as a wrong
    shape before a square or 1x1 case can let it through (each keeps its case number)."""
    points = [point(spec, c, describe_case(i, c)) for i, c in enumerate(cases(spec, settings.seed, settings.drawn_cases))]
    return sorted(points, key=lambda p: not telling(p.input.params, p.input.x))


def telling(params: dict[str, Array], x: Array) -> bool:
    """Whether a transposed parameter or a mixed-up axis cannot go unseen: every matrix
    parameter non-square, and an input of several rows."""
    matrices = [v.shape for v in params.values() if np.ndim(v) >= 2]
    return np.ndim(x) >= 2 and x.shape[0] > 1 and all(len(set(shape)) == len(shape) for shape in matrices)


# --- the whole model ------------------------------------------------------------------------

MODEL_CONFIG = model.ModelConfig(
    vocab_size=7, ctx=5, dim=8, n_layers=2, n_heads=2, mlp_hidden=12, activation="relu", dropout=0.1
)
"""Small, but with every feature on: two blocks, two heads, dropout (seeded, the same
masks for the student's pairs as for the reference's)."""

LEARNING_RATE = 0.2
"""Plain gradient descent on one batch: large enough that a few steps visibly lower the loss."""


@dataclass(frozen=True)
class ModelPoint:
    cfg: model.ModelConfig
    params: dict[str, Array]
    idx: IntArray
    targets: IntArray
    seed: int
    loss: float
    grads: dict[str, Array]


def model_point(settings: Settings, cfg: model.ModelConfig = MODEL_CONFIG) -> ModelPoint:
    rng = np.random.default_rng([settings.seed, 1])
    params = away_from_init(model.init_params(cfg, rng, np.float64), rng, scale=0.2)
    idx = rng.integers(0, cfg.vocab_size, size=(2, cfg.ctx))
    targets = rng.integers(0, cfg.vocab_size, size=(2, cfg.ctx))
    seed = int(rng.integers(2**31))
    loss, grads = model.loss_and_grads(params, idx, targets, cfg, rng=_dropout_rng(cfg, seed, 0))
    return ModelPoint(cfg, params, idx, targets, seed, loss, grads)


def _dropout_rng(cfg: model.ModelConfig, seed: int, step: int) -> np.random.Generator | None:
    return np.random.default_rng([seed, step]) if cfg.dropout else None


def reference_training(point: ModelPoint, steps: int, lr: float = LEARNING_RATE) -> Array:
    """The reference's losses before each of ``steps`` gradient steps and after the last."""
    params = dict(point.params)
    losses = []
    for step in range(steps + 1):
        loss, grads = model.loss_and_grads(
            params, point.idx, point.targets, point.cfg, rng=_dropout_rng(point.cfg, point.seed, step)
        )
        losses.append(loss)
        params = {k: v - lr * grads[k] for k, v in params.items()}
    return np.asarray(losses)
