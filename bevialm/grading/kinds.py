"""Every kind of check in one table: the reference's answer, the student's run, the judge.

A check is ``SUBJECT.KIND`` (``linear.backward``, ``adamw.step``); its row of
:data:`CHECK_KINDS` says, for the grader's loop (:func:`bevialm.grading.grade.grade`):

- ``answer(references, subject)``: the reference's cases and answers, made in the grader's
  process before any student code runs (:class:`References` makes each once per grading);
- ``task(check_id, subject, answer, settings)``: what to run of the student's code
  (a :data:`~bevialm.grading.tasks.Task`, run in the check's child by the sandbox);
- ``judge(answer, observation)``: the :class:`~bevialm.grading.compare.Verdict` on what came back;
- ``case_label(answer, i)``: case ``i``'s name, for the hint of an exception raised there.

The judges live by subject: :mod:`~bevialm.grading.pair_judges` (the pairs, and the pairs
composed into the model), :mod:`~bevialm.grading.training` (the model's own functions, AdamW,
the schedule, clipping) and :mod:`~bevialm.grading.bpe_task` (the BPE merge step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from bevialm.grading import bpe_task, pair_judges, training
from bevialm.grading import cases as reference
from bevialm.grading.compare import Verdict
from bevialm.grading.observation import Observation
from bevialm.grading.plan import MODEL
from bevialm.grading.rubric import Settings
from bevialm.grading.tasks import ModelTask, PairTask, Task, TrainingTask
from bevialm.grading.training_cases import TrainingCases, reference_cases
from bevialm.registry import BY_NAME, PAIRS, PairSpec
from bevialm.types import Array


class References:
    """The reference's answers for one grading, each made once, when a check first needs it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pairs: dict[str, PairAnswer] = {}

    def pair(self, name: str) -> PairAnswer:
        if name not in self._pairs:
            spec = BY_NAME[name]
            self._pairs[name] = PairAnswer(spec, reference.pair_points(spec, self.settings))
        return self._pairs[name]

    @cached_property
    def model_point(self) -> reference.ModelPoint:
        return reference.model_point(self.settings)

    @cached_property
    def model_training(self) -> tuple[reference.ModelPoint, Array]:
        """The model's point and the reference's losses along its gradient steps from there."""
        return self.model_point, reference.reference_training(self.model_point, self.settings.training_steps)

    @cached_property
    def beyond_pairs(self) -> TrainingCases:
        return reference_cases(self.settings)


@dataclass(frozen=True)
class PairAnswer:
    spec: PairSpec
    points: list[reference.PairPoint]


@dataclass(frozen=True)
class CheckKind:
    """One kind of check (see the module's docstring)."""

    answer: Callable[[References, str], Any]
    task: Callable[[str, str, Any, Settings], Task]
    judge: Callable[[Any, Observation], Verdict]
    case_label: Callable[[Any, int], str] = field(default=lambda answer, i: "")


def _label(cases: Sequence[Any], i: int) -> str:
    return str(cases[i].label) if 0 <= i < len(cases) else ""


# --- the pairs ----------------------------------------------------------------------------------


def _pair_kind(kind: str, judge: Callable[[list[reference.PairPoint], Observation], Verdict]) -> CheckKind:
    return CheckKind(
        answer=lambda refs, subject: refs.pair(subject),
        task=lambda check_id, subject, a, settings: PairTask(check_id, kind, subject, tuple(p.input for p in a.points), settings.gradcheck_entries),
        judge=lambda a, obs: pair_judges.with_probe_hint(a.spec, judge(a.points, obs), obs),
        case_label=lambda a, i: _label(a.points, i),
    )


PAIR_ROWS: dict[str, CheckKind] = {
    "forward": _pair_kind("forward", pair_judges.judge_forward),
    "backward": _pair_kind("backward", pair_judges.judge_backward),
    "gradcheck": _pair_kind("gradcheck", pair_judges.judge_gradcheck),
    "purity": _pair_kind("purity", pair_judges.judge_purity),
}


# --- the student's pairs composed into the model -------------------------------------------------


def _model_task(check_id: str, kind: str, point: reference.ModelPoint, steps: int) -> ModelTask:
    return ModelTask(check_id, kind, point.cfg, point.params, point.idx, point.targets, point.seed, steps, reference.LEARNING_RATE)


COMPOSED_ROWS: dict[str, CheckKind] = {
    "loss_and_grads": CheckKind(
        answer=lambda refs, subject: refs.model_point,
        task=lambda check_id, subject, point, settings: _model_task(check_id, "loss_and_grads", point, 0),
        judge=pair_judges.judge_model,
    ),
    "training": CheckKind(
        answer=lambda refs, subject: refs.model_training,
        task=lambda check_id, subject, a, settings: _model_task(check_id, "training", a[0], settings.training_steps),
        judge=lambda a, obs: pair_judges.judge_training(a[1], obs),
    ),
}


# --- beyond the pairs: the model's own functions, the optimizer, the tokenizer --------------------

Run = Callable[[TrainingCases, training.Call, Observation], None]


def _beyond(subject: str, kind: str, run: Run, judge: Callable[[TrainingCases, Observation], Verdict], labels: Callable[[TrainingCases], Sequence[Any]]) -> CheckKind:
    def task(check_id: str, _: str, cases: TrainingCases, settings: Settings) -> TrainingTask:
        return TrainingTask(check_id, subject, kind, lambda call, obs: run(cases, call, obs))

    return CheckKind(lambda refs, _: refs.beyond_pairs, task, judge, lambda cases, i: _label(labels(cases), i))


@dataclass(frozen=True)
class _Named:
    label: str


def _bpe(kind: str) -> CheckKind:
    return _beyond(
        "bpe", kind,
        lambda cases, call, obs: bpe_task.run(kind, cases.bpe, call, obs),
        lambda cases, obs: bpe_task.judge(kind, cases.bpe, obs),
        lambda cases: cases.bpe.by_kind.get(kind, ()),
    )  # fmt: skip


BEYOND_PAIRS_ROWS: dict[tuple[str, str], CheckKind] = {
    (MODEL, "forward"): _beyond(MODEL, "forward", training.run_model_forward, training.judge_model_forward, lambda c: c.model),
    (MODEL, "backward"): _beyond(MODEL, "backward", training.run_model_backward, training.judge_model_backward, lambda c: c.model),
    ("adamw", "step"): _beyond("adamw", "step", training.run_adamw_step, training.judge_adamw_step, lambda c: c.adamw),
    ("adamw", "decays"): _beyond("adamw", "decays", training.run_decays, training.judge_decays, lambda c: [_Named("decays(name)")]),
    ("schedule", "key_points"): _beyond("schedule", "key_points", training.run_schedule, training.judge_schedule, lambda c: c.schedule),
    ("clipping", "global_norm"): _beyond("clipping", "global_norm", training.run_global_norm, training.judge_global_norm, lambda c: [_Named(n[0]) for n in c.norms]),
    ("clipping", "clip"): _beyond("clipping", "clip", training.run_clip, training.judge_clip, lambda c: c.clips),
    **{("bpe", kind): _bpe(kind) for kind in bpe_task.KINDS},
}  # fmt: skip


CHECK_KINDS: dict[tuple[str, str], CheckKind] = {
    **{(spec.name, kind): row for spec in PAIRS for kind, row in PAIR_ROWS.items()},
    **{(MODEL, kind): row for kind, row in COMPOSED_ROWS.items()},
    **BEYOND_PAIRS_ROWS,
}
"""Every check the grader can run, by ``(subject, kind)``."""
