"""The grader's list of tasks: every thing a student can be asked to write (the layer pairs of
:mod:`bevialm.registry`, the model that composes them, AdamW, the schedule, clipping, the BPE merge
step), each with the reference functions it names and an example call.

The grader grades these, the skeleton generator blanks their functions (or hands them out
filled in when an assignment leaves a task out), and the rubric names them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from bevialm import bpe, model, optim
from bevialm.registry import PAIRS, PairSpec
from bevialm.types import Array


@dataclass(frozen=True)
class TaskSpec:
    """One thing a student can be asked to write: functions of one reference module.

    The grader grades it, the skeleton generator blanks its functions (or hands them
    out filled in when an assignment leaves the task out), the rubric names it.
    """

    name: str
    module: ModuleType
    functions: tuple[str, ...]
    """The module's functions the student writes."""
    example: Callable[[], object]
    """Calls the functions once on a small float64 example, through the module's attributes
    (so a caller can trace each call's argument and result shapes)."""
    pair: PairSpec | None = None
    """The pair's full description, for tasks that are layer pairs."""


def _pair_example(spec: PairSpec) -> Callable[[], object]:
    def run() -> object:
        case = max(spec.examples, key=lambda c: (len(set(c.shape)), len(c.shape)))  # the most telling shapes
        rng = np.random.default_rng(case.seed)
        bound = spec.bind(case)
        params = spec.module.init(case.cfg, rng, np.float64) if "init" in spec.functions else spec.init(case.cfg, rng)
        y, cache = bound.forward(params, spec.make_input(case, rng))
        return bound.backward(params, cache, np.ones_like(y, dtype=np.float64))

    return run


EXAMPLE_MODEL = model.ModelConfig(vocab_size=5, ctx=4, dim=4, n_layers=1, n_heads=2, mlp_hidden=8)
"""A tiny model for the model task's example call."""


def _model_example() -> object:
    rng = np.random.default_rng(0)
    params = model.init_params(EXAMPLE_MODEL, rng, np.float64)
    idx = rng.integers(0, EXAMPLE_MODEL.vocab_size, size=(2, 3))
    return model.loss_and_grads(params, idx, np.roll(idx, -1, axis=1), EXAMPLE_MODEL)


def _optimizer_params() -> dict[str, Array]:
    rng = np.random.default_rng(0)
    return {"lm_head.W": rng.standard_normal((3, 2)), "lm_head.b": rng.standard_normal(2)}


def _adamw_example() -> object:
    params = _optimizer_params()
    grads = {k: np.ones_like(v) for k, v in params.items()}
    decayed = [k for k in params if optim.decays(k)]
    return decayed, optim.step(params, grads, optim.init_state(params), optim.AdamWConfig(), lr=1e-3)


def _schedule_example() -> object:
    return optim.lr_at(5, 3e-4, warmup=10, total=100, min_lr=3e-5)


def _clipping_example() -> object:
    grads = _optimizer_params()
    return optim.global_norm(grads), optim.clip_by_global_norm(grads, 1.0)


def _bpe_example() -> object:
    merges = bpe.train("aaabdaaabac", 259)
    ids = bpe.encode("aaabdaaabac", merges)
    return bpe.get_stats(ids), bpe.merge(ids, (100, 256), 259), bpe.decode(ids, merges)


PAIR_TASKS: tuple[TaskSpec, ...] = tuple(
    TaskSpec(spec.name, spec.module, spec.functions, _pair_example(spec), spec) for spec in PAIRS
)

TASKS: tuple[TaskSpec, ...] = (
    *PAIR_TASKS,
    # the playbook's model (chapter 7): forward, backward and the loss, composed of the student's own pairs
    TaskSpec("model", model, ("forward", "backward", "loss_and_grads"), _model_example),
    # the optimizer (chapters 8 and 9): AdamW with its decay rule, the schedule, clipping
    TaskSpec("adamw", optim, ("decays", "step"), _adamw_example),
    TaskSpec("schedule", optim, ("lr_at",), _schedule_example),
    TaskSpec("clipping", optim, ("global_norm", "clip_by_global_norm"), _clipping_example),
    # the tokenizer's merge step (docs/tokenizer.md), in minbpe's exercise shape
    TaskSpec("bpe", bpe, ("get_stats", "merge", "train", "encode", "decode"), _bpe_example),
)
"""Everything the grader grades and the skeleton hands out, pairs first."""

TASK_BY_NAME: dict[str, TaskSpec] = {task.name: task for task in TASKS}
