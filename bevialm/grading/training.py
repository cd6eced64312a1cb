"""The checks beyond the layer pairs: the model's own forward and backward (playbook chapter 7),
AdamW, the learning-rate schedule and global-norm clipping (chapters 8 and 9).

Three parts, as for the pairs:

- **the reference's cases** (:func:`reference_cases`): fixed, seeded inputs and the
  reference's answers, made in the grader's process before any student code runs;
- **the student's side** (:func:`runner`): calls the student's functions on those inputs through
  ``call(module, function, *args, **kwargs)`` (the grader's session with the check's child)
  and records what came back in an :class:`~bevialm.grading.tasks.Observation`;
- **judging** (:func:`judge`): compares the observation with the reference's answers in
  the grader's process, naming the worst tensor or value and the case.

The optimizer runs in lockstep with the reference: several steps, each from the student's
own previous parameters and state, compared after every step, from the first step (t = 1,
where bias correction matters most), from random states at a large t, and with zero
gradients (where only the decay moves a parameter), over names that decay and names that
are exempt. The schedule is read at its key points; clipping below, at and above the
threshold, and with one huge tensor among small ones (per-tensor clipping fails there).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bevialm import model, optim
from bevialm.gradcheck import away_from_init
from bevialm.grading import bpe_task
from bevialm.grading import cases as pair_cases
from bevialm.grading.compare import (
    Comparison,
    Verdict,
    array_of,
    compare,
    judge_cases,
    summarise,
    tensor_name,
)
from bevialm.grading.rubric import Settings
from bevialm.grading.session import RemoteObject
from bevialm.grading.tasks import Observation, store
from bevialm.types import Array, IntArray

Call = Callable[..., Any]
"""``call(module, function, *args, **kwargs)``: the student's ``function`` of their ``module``
(``"optim"``, ``"model"``), run in the check's child; returns what it returned."""

TRAINING_KINDS: dict[str, tuple[str, ...]] = {
    "model": ("forward", "backward"),
    "adamw": ("decays", "step"),
    "schedule": ("key_points",),
    "clipping": ("global_norm", "clip"),
}
"""The checks of this module, by subject (``model`` also has ``loss_and_grads`` and
``training``, the checks of the student's pairs composed into the model)."""


# --- the reference's cases ----------------------------------------------------------------------


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


# --- the student's side ---------------------------------------------------------------------------


def fields_of(state: Any) -> dict[str, Any] | None:
    """The fields of a dataclass the student returned: the object itself in this process, or
    the arrays a session reports for an object that lives in the child."""
    if isinstance(state, RemoteObject):
        return dict(state.fields) if state.fields is not None else None
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return None


def _store_mapping(obs: Observation, key: str, value: Any) -> None:
    """A dict of arrays under ``key/<name>``; its keys in the metadata (or its type when it is no dict)."""
    if not isinstance(value, Mapping):
        obs.meta["types"][key] = type(value).__name__
        return
    obs.meta["cases"][key] = sorted(str(k) for k in value)
    for name, array in value.items():
        store(obs, f"{key}/{name}", array)


def _run_model(kind: str, cases: TrainingCases, call: Call, obs: Observation, case: Callable[[int], None]) -> None:
    for i, c in enumerate(cases.model):
        case(i)
        logits, cache = call("model", "forward", c.params, c.idx, c.cfg, rng=c.rng())
        if kind == "forward":
            store(obs, f"{i}/logits", logits)
        else:
            _store_mapping(obs, f"{i}/grads", call("model", "backward", c.params, cache, c.dlogits))


def _run_adamw_step(cases: TrainingCases, call: Call, obs: Observation, case: Callable[[int], None]) -> None:
    for i, c in enumerate(cases.adamw):
        case(i)
        params, state = c.params, c.state
        for s, (grads, lr) in enumerate(zip(c.grads, c.lrs, strict=True)):
            params, state = call("optim", "step", params, grads, state, c.cfg, lr)
            _store_mapping(obs, f"{i}/{s}/params", params)
            found = fields_of(state)
            if found is None:
                obs.meta["types"][f"{i}/{s}/state"] = type(state).__name__
                return
            store(obs, f"{i}/{s}/t", found.get("t"))
            _store_mapping(obs, f"{i}/{s}/m", found.get("m"))
            _store_mapping(obs, f"{i}/{s}/v", found.get("v"))
            if not isinstance(params, Mapping):
                return


def _run_decays(cases: TrainingCases, call: Call, obs: Observation, case: Callable[[int], None]) -> None:
    case(0)
    answers = [call("optim", "decays", name) for name, _ in cases.decay_names]
    obs.meta["cases"]["decays"] = [_as_bool(a) for a in answers]


def _as_bool(answer: Any) -> bool | str:
    """A truth value as it may come back (``True``, ``np.True_``, a 0-d boolean array), or what
    came instead, described."""
    if isinstance(answer, bool | np.bool_) or (isinstance(answer, np.ndarray) and answer.shape == () and answer.dtype == bool):
        return bool(answer)
    return _a(type(answer).__name__)


def _run_schedule(cases: TrainingCases, call: Call, obs: Observation, case: Callable[[int], None]) -> None:
    for i, p in enumerate(cases.schedule):
        case(i)
        store(obs, f"{i}/lr", call("optim", "lr_at", *p.args))


def _run_global_norm(cases: TrainingCases, call: Call, obs: Observation, case: Callable[[int], None]) -> None:
    for i, (_, grads, _) in enumerate(cases.norms):
        case(i)
        store(obs, f"{i}/norm", call("optim", "global_norm", grads))


def _run_clip(cases: TrainingCases, call: Call, obs: Observation, case: Callable[[int], None]) -> None:
    for i, c in enumerate(cases.clips):
        case(i)
        result = call("optim", "clip_by_global_norm", c.grads, c.max_norm)
        if not (isinstance(result, tuple) and len(result) == 2):
            obs.meta["types"][f"{i}/result"] = type(result).__name__
            continue
        clipped, norm = result
        _store_mapping(obs, f"{i}/clipped", clipped)
        store(obs, f"{i}/norm", norm)


RUNNERS: dict[tuple[str, str], Callable[[TrainingCases, Call, Observation, Callable[[int], None]], None]] = {
    ("model", "forward"): lambda c, call, obs, case: _run_model("forward", c, call, obs, case),
    ("model", "backward"): lambda c, call, obs, case: _run_model("backward", c, call, obs, case),
    ("adamw", "step"): _run_adamw_step,
    ("adamw", "decays"): _run_decays,
    ("schedule", "key_points"): _run_schedule,
    ("clipping", "global_norm"): _run_global_norm,
    ("clipping", "clip"): _run_clip,
    **{("bpe", k): bpe_task.runner(k) for k in bpe_task.KINDS},
}


def runner(subject: str, kind: str, cases: TrainingCases) -> Callable[[Call, Observation], None]:
    """``run(call, obs)``: check ``subject.kind``'s student code, called through ``call``, its
    results recorded in ``obs``; exceptions propagate (the caller records them, with the case
    reached in ``obs.meta["case"]``)."""

    def run(call: Call, obs: Observation) -> None:
        def case(i: int) -> None:
            obs.meta["case"] = i

        RUNNERS[(subject, kind)](cases, call, obs, case)

    return run


def case_label(subject: str, kind: str, cases: TrainingCases, i: int) -> str:
    """The label of case ``i`` of a check, for an exception's hint."""
    labels: dict[str, list[str]] = {
        "model": [c.label for c in cases.model],
        "adamw": [c.label for c in cases.adamw] if kind == "step" else ["decays(name)"],
        "schedule": [p.label for p in cases.schedule],
        "clipping": [n[0] for n in cases.norms] if kind == "global_norm" else [c.label for c in cases.clips],
    }
    if subject == "bpe":
        return bpe_task.case_label(kind, cases.bpe, i)
    found = labels.get(subject, [])
    return found[i] if 0 <= i < len(found) else ""


# --- judging -----------------------------------------------------------------------------------


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _mapping(obs: Observation, key: str, want: Mapping[str, Array], name: Callable[[str], str]) -> list[Comparison]:
    """Compare the dict stored under ``key`` with ``want``, tensor by tensor."""
    kind = obs.meta["types"].get(key)
    if kind is not None:
        what = key.rpartition("/")[2]
        return [Comparison(what, False, None, f"{what} is {_a(kind)}, expected a dict")]
    keys = set(obs.meta["cases"].get(key, []))
    out = []
    for k, w in want.items():
        if k not in keys:
            out.append(Comparison(name(k), False, None, f"{name(k)} is missing"))
        else:
            got, got_kind = array_of(obs, f"{key}/{k}")
            out.append(compare(name(k), got, w, got_kind))
    extra = sorted(keys - set(want))
    if extra:
        out.append(Comparison(name(extra[0]), False, None, f"unexpected keys {extra}"))
    return out


def _first_failure(verdicts: list[Verdict]) -> Verdict:
    worst = [v[1] for v in verdicts if v[1] is not None]
    top = None if not worst else (math.nan if any(math.isnan(w) for w in worst) else max(worst))
    for v in verdicts:
        if not v[0]:
            return v  # its own error: the failing tensor's, never the largest of those that match
    return True, top, "ok", ""


def _judge_model(kind: str, cases: TrainingCases, obs: Observation) -> Verdict:
    judged: list[tuple[list[Comparison], str]] = []
    for i, c in enumerate(cases.model):
        if kind == "forward":
            got, got_kind = array_of(obs, f"{i}/logits")
            judged.append(([compare("logits", got, c.logits, got_kind)], c.label))
        else:
            judged.append((_mapping(obs, f"{i}/grads", c.grads, tensor_name), c.label))
    return judge_cases(judged)


def _decay_note(name: str, cfg: optim.AdamWConfig) -> str:
    return "decayed" if cfg.decays(name) else "exempt from decay"


def _param_name(cfg: optim.AdamWConfig) -> Callable[[str], str]:
    """``params['lm_head.b'] (exempt from decay)``: a parameter's name in a hint, with its decay."""
    return lambda k: f"params[{k!r}] ({_decay_note(k, cfg)})"


def _judge_adamw_step(cases: TrainingCases, obs: Observation) -> Verdict:
    verdicts: list[Verdict] = []
    case_passed: dict[str, bool] = {}
    for i, c in enumerate(cases.adamw):
        for s, (want_params, want_state) in enumerate(c.after):
            label = f"{c.label}: after step {s + 1}, t = {want_state.t}"
            comparisons = _mapping(obs, f"{i}/{s}/params", want_params, _param_name(c.cfg))
            got_t, t_kind = array_of(obs, f"{i}/{s}/t")
            comparisons.append(compare("state.t", got_t, np.asarray(float(want_state.t)), t_kind))
            comparisons += _mapping(obs, f"{i}/{s}/m", want_state.m, lambda k: f"state.m[{k!r}]")
            comparisons += _mapping(obs, f"{i}/{s}/v", want_state.v, lambda k: f"state.v[{k!r}]")
            state_kind = obs.meta["types"].get(f"{i}/{s}/state")
            if state_kind is not None:
                comparisons.insert(0, Comparison("state", False, None, f"step returned its state as {_a(state_kind)}, expected an AdamWState"))
            passed, worst, hint, details = summarise(comparisons, label)
            if not passed:
                verdicts.append((passed, worst, hint + _decay_pattern(comparisons, c), details))
                break  # later steps start from a wrong state: the first wrong step says most
            verdicts.append((passed, worst, hint, details))
        case_passed[c.label] = verdicts[-1][0]  # its last step passed only when every step did
    passed, worst, hint, details = _first_failure(verdicts)
    fresh, late = cases.adamw[0], cases.adamw[1]
    if not case_passed[fresh.label] and case_passed[late.label]:
        hint += f" [right at t = {late.state.t + 1}, wrong from t = 1: bias correction (1 - beta^t)?]"
    return passed, worst, hint, details


def _decay_pattern(comparisons: list[Comparison], case: AdamWCase) -> str:
    """`` [only the parameters exempt from decay are wrong: ...]`` when the wrong parameters are
    exactly one side of the decay rule (decay applied to the wrong names, or a wrong decay term)."""
    wrong = {c.name for c in comparisons if not c.passed}
    params = {name: _param_name(case.cfg)(name) for name in case.params}
    bad = {name for name, label in params.items() if label in wrong}
    if not bad or len(bad) == len(params) or case.cfg.decay_all:
        return ""
    decayed = {name for name in params if case.cfg.decays(name)}
    moments = {name for name in params for which in "mv" if f"state.{which}[{name!r}]" in wrong}
    if moments and moments <= decayed:
        return " [the moments of decayed parameters are wrong: is weight decay added to the gradient (L2) instead of decoupled, lr * weight_decay * theta?]"
    if bad == decayed:
        return " [only the decayed parameters are wrong: look at the decay term, lr * weight_decay * theta]"
    if bad == set(params) - decayed:
        return " [only the parameters exempt from decay are wrong: does your step decay them?]"
    return ""


def _judge_decays(cases: TrainingCases, obs: Observation) -> Verdict:
    answers = obs.meta["cases"].get("decays", [])
    wrong = [(name, want, got) for (name, want), got in zip(cases.decay_names, answers, strict=False) if got is not want]
    if len(answers) != len(cases.decay_names):
        return False, None, "decays(name) did not answer for every name", ""
    if not wrong:
        return True, None, "ok", ""
    name, want, got = wrong[0]
    if isinstance(got, str):
        return False, None, f"decays({name!r}) returned {got}, expected True or False", ""
    also = f"; also wrong for {', '.join(repr(w[0]) for w in wrong[1:4])}{', ...' if len(wrong) > 4 else ''}" if len(wrong) > 1 else ""
    why = "weight matrices decay" if want else "embeddings, biases and layer-norm gains and shifts are exempt"
    return False, None, f"decays({name!r}) returned {got}, the reference {want} ({why}){also}", "\n".join(f"decays({w[0]!r}): yours {w[2]}, reference {w[1]}" for w in wrong)


def _judge_schedule(cases: TrainingCases, obs: Observation) -> Verdict:
    verdicts: list[Verdict] = []
    for i, p in enumerate(cases.schedule):
        got, kind = array_of(obs, f"{i}/lr")
        base = p.args[1]  # compared in units of base_lr: learning rates are far below the tolerances' atol
        scaled = None if got is None else np.asarray(got, dtype=np.float64) / base
        verdicts.append(summarise([compare("lr / base_lr", scaled, np.asarray(p.lr / base), kind)], p.label))
    return _first_failure(verdicts)


def _judge_global_norm(cases: TrainingCases, obs: Observation) -> Verdict:
    verdicts: list[Verdict] = []
    for i, (label, _, norm) in enumerate(cases.norms):
        got, kind = array_of(obs, f"{i}/norm")
        verdicts.append(summarise([compare("global_norm", got, np.asarray(norm), kind)], label))
    return _first_failure(verdicts)


def _judge_clip(cases: TrainingCases, obs: Observation) -> Verdict:
    verdicts: list[Verdict] = []
    for i, c in enumerate(cases.clips):
        kind = obs.meta["types"].get(f"{i}/result")
        if kind is not None:
            verdicts.append((False, None, f"clip_by_global_norm returned {_a(kind)}, expected (clipped, norm) ({c.label})", ""))
            continue
        comparisons = _mapping(obs, f"{i}/clipped", c.clipped, lambda k: f"clipped[{k!r}]")
        got, got_kind = array_of(obs, f"{i}/norm")
        comparisons.append(compare("norm", got, np.asarray(c.norm), got_kind))
        verdicts.append(summarise(comparisons, c.label))
    return _first_failure(verdicts)


JUDGES: dict[tuple[str, str], Callable[[TrainingCases, Observation], Verdict]] = {
    ("model", "forward"): lambda c, obs: _judge_model("forward", c, obs),
    ("model", "backward"): lambda c, obs: _judge_model("backward", c, obs),
    ("adamw", "step"): _judge_adamw_step,
    ("adamw", "decays"): _judge_decays,
    ("schedule", "key_points"): _judge_schedule,
    ("clipping", "global_norm"): _judge_global_norm,
    ("clipping", "clip"): _judge_clip,
    **{("bpe", k): bpe_task.judge_of(k) for k in bpe_task.KINDS},
}


def judge(subject: str, kind: str, cases: TrainingCases, obs: Observation) -> Verdict:
    """The verdict on check ``subject.kind`` from what the student's code returned."""
    return JUDGES[(subject, kind)](cases, obs)
