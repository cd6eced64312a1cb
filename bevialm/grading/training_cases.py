"""The reference's cases of the checks beyond the layer pairs (:mod:`bevialm.grading.training`):
fixed, seeded inputs and the reference's answers, made in the grader's process before any student
code runs.

The optimizer's cases run several steps each, from the first step (t = 1, where bias correction
matters most), from random states at a large t, and with zero gradients (where only the decay
moves a parameter), over names that decay and names that are exempt. The schedule is read at its
key points; clipping below, at and above the threshold, and with one huge tensor among small
ones (per-tensor clipping fails there).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from bevialm import model, optim
from bevialm.gradcheck import away_from_init
from bevialm.grading import bpe_task
from bevialm.grading import cases as pair_cases
from bevialm.grading.rubric import Settings
from bevialm.types import Array, IntArray


@dataclass(frozen=True)
class ModelCase:
    """The model on one batch: logits and, for a random ``dlogits``, every gradient."""

    label: str
    cfg: model.ModelConfig
    params: dict[str, Array]
    idx: IntArray
    seed: int
    dlogits: Array
    logits: Array
    grads: dict[str, Array]

    def rng(self) -> np.random.Generator | None:
        return np.random.default_rng([self.seed, 0]) if self.cfg.dropout else None


@dataclass(frozen=True)
class AdamWCase:
    """Several AdamW steps from ``state``: the gradients and learning rate of each step, and
    the reference's parameters and state after each."""

    label: str
    cfg: optim.AdamWConfig
    params: dict[str, Array]
    state: optim.AdamWState
    grads: tuple[dict[str, Array], ...]
    lrs: tuple[float | None, ...]
    after: tuple[tuple[dict[str, Array], optim.AdamWState], ...]


@dataclass(frozen=True)
class SchedulePoint:
    label: str
    args: tuple[int, float, int, int, float]
    """``(step, base_lr, warmup, total, min_lr)``, as :func:`bevialm.optim.lr_at` takes them."""
    lr: float


@dataclass(frozen=True)
class ClipCase:
    label: str
    grads: dict[str, Array]
    max_norm: float | None
    clipped: dict[str, Array]
    norm: float


@dataclass(frozen=True)
class TrainingCases:
    """Every case of this module's checks, with the reference's answers."""

    model: tuple[ModelCase, ...]
    adamw: tuple[AdamWCase, ...]
    decay_names: tuple[tuple[str, bool], ...]
    schedule: tuple[SchedulePoint, ...]
    norms: tuple[tuple[str, dict[str, Array], float], ...]
    clips: tuple[ClipCase, ...]
    bpe: bpe_task.BpeCases


def _model_case(label: str, cfg: model.ModelConfig, params: dict[str, Array], idx: IntArray, rng: np.random.Generator) -> ModelCase:
    seed = int(rng.integers(2**31))
    dlogits = rng.standard_normal((*idx.shape, cfg.vocab_size))
    dropout_rng = np.random.default_rng([seed, 0]) if cfg.dropout else None
    logits, cache = model.forward(params, idx, cfg, rng=dropout_rng)
    return ModelCase(label, cfg, params, idx, seed, dlogits, logits, model.backward(params, cache, dlogits))


def model_cases(settings: Settings) -> tuple[ModelCase, ...]:
    """The grading model (two blocks, two heads, dropout) on a full-context batch of two, and
    on one sequence shorter than the context (a position table used only in part)."""
    cfg = pair_cases.MODEL_CONFIG
    rng = np.random.default_rng([settings.seed, 71])
    params = away_from_init(model.init_params(cfg, rng, np.float64), rng, scale=0.2)
    full = rng.integers(0, cfg.vocab_size, size=(2, cfg.ctx))
    short = rng.integers(0, cfg.vocab_size, size=(1, cfg.ctx - 2))
    return (
        _model_case(f"batch of 2, T = ctx = {cfg.ctx}", cfg, params, full, rng),
        _model_case(f"batch of 1, T = {cfg.ctx - 2} < ctx", cfg, params, short, rng),
    )


OPTIMIZER_NAMES = (
    "tok_emb.W",
    "pos_emb.W",
    "block0.ln1.gamma",
    "block0.attn.q.W",
    "block0.attn.q.b",
    "block0.mlp.fc2.W",
    "ln_f.beta",
    "lm_head.W",
    "lm_head.b",
)
"""Parameters of the optimizer's cases: decayed (weight matrices) and exempt (embeddings,
biases, layer-norm gains and shifts) names side by side."""


def _shape(name: str) -> tuple[int, ...]:
    return (4, 3) if name.endswith(".W") else (3,)


def _adamw_case(
    label: str, cfg: optim.AdamWConfig, state: optim.AdamWState, params: dict[str, Array],
    grads: tuple[dict[str, Array], ...], lrs: tuple[float | None, ...],
) -> AdamWCase:  # fmt: skip
    after = []
    p, s = params, state
    for g, lr in zip(grads, lrs, strict=True):
        p, s = optim.step(p, g, s, cfg, lr)
        after.append((p, s))
    return AdamWCase(label, cfg, params, state, grads, lrs, tuple(after))


def adamw_cases(settings: Settings) -> tuple[AdamWCase, ...]:
    rng = np.random.default_rng([settings.seed, 72])
    cfg = optim.AdamWConfig(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)

    def params() -> dict[str, Array]:
        return {n: rng.standard_normal(_shape(n)) for n in OPTIMIZER_NAMES}

    def grads(steps: int, scale: float = 0.5) -> tuple[dict[str, Array], ...]:
        return tuple({n: scale * rng.standard_normal(_shape(n)) for n in OPTIMIZER_NAMES} for _ in range(steps))

    def state(t: int) -> optim.AdamWState:
        m = {n: 0.1 * rng.standard_normal(_shape(n)) for n in OPTIMIZER_NAMES}
        v = {n: 0.01 * rng.random(_shape(n)) + 1e-4 for n in OPTIMIZER_NAMES}
        return optim.AdamWState(t, m, v)

    start = params()
    zero = tuple({n: np.zeros(_shape(n)) for n in OPTIMIZER_NAMES} for _ in range(2))
    return (
        _adamw_case("3 steps from a fresh state (t = 1 first), lr None, 5e-3, 1e-2", cfg, optim.init_state(start), start, grads(3), (None, 5e-3, 1e-2)),
        _adamw_case("2 steps from a random state at t = 10000", cfg, state(10_000), params(), grads(2), (None, 3e-3)),
        _adamw_case("2 steps with zero gradients from a random state at t = 4", cfg, state(4), params(), zero, (None, None)),
        _adamw_case("2 steps with decay_all=True from t = 2", dataclasses.replace(cfg, decay_all=True), state(2), params(), grads(2), (None, None)),
    )  # fmt: skip


DECAY_NAMES = (*OPTIMIZER_NAMES, "W", "b", "gamma", "block3.mlp.fc1.b", "block3.attn.proj.W", "block1.ln2.beta")
"""Names whose decay rule is read one by one: the optimizer's, and a lone layer's."""


SCHEDULE = (3e-4, 10, 100, 3e-5)
"""``(base_lr, warmup, total, min_lr)`` of the schedule's key points."""


def schedule_points() -> tuple[SchedulePoint, ...]:
    base, warmup, total, floor = SCHEDULE
    named = (
        (0, "the first update"),
        (warmup - 1, "the last warmup step"),
        (warmup, "the first cosine step"),
        ((warmup + total) // 2, "the middle of the cosine"),
        (total - 1, "the last cosine step"),
        (total, "total: the floor"),
        (total + 50, "past total"),
    )
    points = [(step, base, warmup, total, floor, what) for step, what in named]
    points += [(step, base, 0, total, 0.0, f"warmup = 0, {what}") for step, what in ((0, "step 0"), (total // 2, "the middle"), (total - 1, "the last step"))]
    return tuple(
        SchedulePoint(f"lr_at({s}, base_lr={b:g}, warmup={w}, total={t}, min_lr={m:g}): {what}", (s, b, w, t, m), optim.lr_at(s, b, w, t, m))
        for s, b, w, t, m, what in points
    )  # fmt: skip


def clipping_cases(settings: Settings) -> tuple[tuple[tuple[str, dict[str, Array], float], ...], tuple[ClipCase, ...]]:
    rng = np.random.default_rng([settings.seed, 73])
    plain = {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    huge = {"tok_emb.W": 1e3 * rng.standard_normal((4, 3)), "lm_head.b": 1e-3 * rng.standard_normal(3), "ln_f.gamma": 1e-3 * rng.standard_normal(3)}
    single = {"W": rng.standard_normal((2, 2)).astype(np.float32)}
    norms = tuple((label, g, optim.global_norm(g)) for label, g in (("two tensors", plain), ("one huge tensor among small ones", huge), ("float32", single), ("no tensors", {})))
    n = optim.global_norm(plain)
    clips = []
    for label, grads, max_norm in (
        ("max_norm above the norm: unchanged", plain, 2 * n),
        ("max_norm equal to the norm: unchanged", plain, n),
        ("max_norm below the norm: every tensor scaled by max_norm / norm", plain, n / 4),
        ("one huge tensor among small ones, max_norm 1", huge, 1.0),
        ("max_norm None: no clipping", plain, None),
    ):
        clipped, norm = optim.clip_by_global_norm(grads, max_norm)
        clips.append(ClipCase(label, grads, max_norm, dict(clipped), norm))
    return norms, tuple(clips)  # fmt: skip


def reference_cases(settings: Settings) -> TrainingCases:
    norms, clips = clipping_cases(settings)
    return TrainingCases(
        model_cases(settings),
        adamw_cases(settings),
        tuple((n, optim.decays(n)) for n in DECAY_NAMES),
        schedule_points(),
        norms,
        clips,
        bpe_task.bpe_cases(settings),
    )
