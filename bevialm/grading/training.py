"""The checks beyond the layer pairs: the model's own forward and backward (playbook chapter 7),
AdamW, the learning-rate schedule and global-norm clipping (chapters 8 and 9).

Each check has a runner and a judge here (its row of :data:`bevialm.grading.kinds.CHECK_KINDS`
puts them together with the reference's cases, from :mod:`bevialm.grading.training_cases`):

- **the student's side** (``run_*``): calls the student's functions on the cases through
  ``call(module, function, *args, **kwargs)`` (the grader's session with the check's child)
  and records what came back in an :class:`~bevialm.grading.observation.Observation`;
- **judging** (``judge_*``): compares the observation with the reference's answers in
  the grader's process, naming the worst tensor or value and the case.

The optimizer runs in lockstep with the reference: several steps, each from the student's
own previous parameters and state, compared after every step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bevialm import optim
from bevialm.grading.compare import Comparison, Verdict, compare, judge_cases, summarise, tensor_name
from bevialm.grading.observation import Observation, array_of, store, store_mapping
from bevialm.grading.session import RemoteObject
from bevialm.grading.training_cases import AdamWCase, TrainingCases
from bevialm.types import Array

Call = Callable[..., Any]
"""``call(module, function, *args, **kwargs)``: the student's ``function`` of their ``module``
(``"optim"``, ``"model"``), run in the check's child; returns what it returned."""


# --- the student's side ---------------------------------------------------------------------------


def fields_of(state: Any) -> dict[str, Any] | None:
    """The fields of a dataclass the student returned: the object itself in this process, or
    the arrays a session reports for an object that lives in the child."""
    if isinstance(state, RemoteObject):
        return dict(state.fields) if state.fields is not None else None
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return None


def run_model_forward(cases: TrainingCases, call: Call, obs: Observation) -> None:
    for i, c in enumerate(cases.model):
        obs.case = i
        logits, _ = call("model", "forward", c.params, c.idx, c.cfg, rng=c.rng())
        store(obs, f"{i}/logits", logits)


def run_model_backward(cases: TrainingCases, call: Call, obs: Observation) -> None:
    for i, c in enumerate(cases.model):
        obs.case = i
        _, cache = call("model", "forward", c.params, c.idx, c.cfg, rng=c.rng())
        store_mapping(obs, f"{i}/grads", call("model", "backward", c.params, cache, c.dlogits))


def run_adamw_step(cases: TrainingCases, call: Call, obs: Observation) -> None:
    for i, c in enumerate(cases.adamw):
        obs.case = i
        params, state = c.params, c.state
        for s, (grads, lr) in enumerate(zip(c.grads, c.lrs, strict=True)):
            params, state = call("optim", "step", params, grads, state, c.cfg, lr)
            store_mapping(obs, f"{i}/{s}/params", params)
            found = fields_of(state)
            if found is None:
                obs.types[f"{i}/{s}/state"] = type(state).__name__
                return
            store(obs, f"{i}/{s}/t", found.get("t"))
            store_mapping(obs, f"{i}/{s}/m", found.get("m"))
            store_mapping(obs, f"{i}/{s}/v", found.get("v"))
            if not isinstance(params, Mapping):
                return


def run_decays(cases: TrainingCases, call: Call, obs: Observation) -> None:
    obs.case = 0
    obs.answers += [_as_bool(call("optim", "decays", name)) for name, _ in cases.decay_names]


def _as_bool(answer: Any) -> bool | str:
    """A truth value as it may come back (``True``, ``np.True_``, a 0-d boolean array), or what
    came instead, described."""
    if isinstance(answer, bool | np.bool_) or (isinstance(answer, np.ndarray) and answer.shape == () and answer.dtype == bool):
        return bool(answer)
    return _a(type(answer).__name__)


def run_schedule(cases: TrainingCases, call: Call, obs: Observation) -> None:
    for i, p in enumerate(cases.schedule):
        obs.case = i
        store(obs, f"{i}/lr", call("optim", "lr_at", *p.args))


def run_global_norm(cases: TrainingCases, call: Call, obs: Observation) -> None:
    for i, (_, grads, _) in enumerate(cases.norms):
        obs.case = i
        store(obs, f"{i}/norm", call("optim", "global_norm", grads))


def run_clip(cases: TrainingCases, call: Call, obs: Observation) -> None:
    for i, c in enumerate(cases.clips):
        obs.case = i
        result = call("optim", "clip_by_global_norm", c.grads, c.max_norm)
        if not (isinstance(result, tuple) and len(result) == 2):
            obs.types[f"{i}/result"] = type(result).__name__
            continue
        clipped, norm = result
        store_mapping(obs, f"{i}/clipped", clipped)
        store(obs, f"{i}/norm", norm)


# --- judging -----------------------------------------------------------------------------------


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _mapping(obs: Observation, key: str, want: Mapping[str, Array], name: Callable[[str], str]) -> list[Comparison]:
    """Compare the dict stored under ``key`` with ``want``, tensor by tensor."""
    kind = obs.types.get(key)
    if kind is not None:
        what = key.rpartition("/")[2]
        return [Comparison(what, False, None, f"{what} is {_a(kind)}, expected a dict")]
    keys = set(obs.keys.get(key, []))
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
    worst = [v.worst_rel for v in verdicts if v.worst_rel is not None]
    top = None if not worst else (math.nan if any(math.isnan(w) for w in worst) else max(worst))
    for v in verdicts:
        if not v.passed:
            return v  # its own error: the failing tensor's, never the largest of those that match
    return Verdict(True, top)


def judge_model_forward(cases: TrainingCases, obs: Observation) -> Verdict:
    judged = []
    for i, c in enumerate(cases.model):
        got, got_kind = array_of(obs, f"{i}/logits")
        judged.append(([compare("logits", got, c.logits, got_kind)], c.label))
    return judge_cases(judged)


def judge_model_backward(cases: TrainingCases, obs: Observation) -> Verdict:
    return judge_cases([(_mapping(obs, f"{i}/grads", c.grads, tensor_name), c.label) for i, c in enumerate(cases.model)])


def _decay_note(name: str, cfg: optim.AdamWConfig) -> str:
    return "decayed" if cfg.decays(name) else "exempt from decay"


def _param_name(cfg: optim.AdamWConfig) -> Callable[[str], str]:
    """``params['lm_head.b'] (exempt from decay)``: a parameter's name in a hint, with its decay."""
    return lambda k: f"params[{k!r}] ({_decay_note(k, cfg)})"


def judge_adamw_step(cases: TrainingCases, obs: Observation) -> Verdict:
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
            state_kind = obs.types.get(f"{i}/{s}/state")
            if state_kind is not None:
                comparisons.insert(0, Comparison("state", False, None, f"step returned its state as {_a(state_kind)}, expected an AdamWState"))
            verdict = summarise(comparisons, label)
            if not verdict.passed:
                verdicts.append(dataclasses.replace(verdict, hint=verdict.hint + _decay_pattern(comparisons, c)))
                break  # later steps start from a wrong state: the first wrong step says most
            verdicts.append(verdict)
        case_passed[c.label] = verdicts[-1].passed  # its last step passed only when every step did
    verdict = _first_failure(verdicts)
    fresh, late = cases.adamw[0], cases.adamw[1]
    if not case_passed[fresh.label] and case_passed[late.label]:
        verdict = dataclasses.replace(verdict, hint=verdict.hint + f" [right at t = {late.state.t + 1}, wrong from t = 1: bias correction (1 - beta^t)?]")
    return verdict


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


def judge_decays(cases: TrainingCases, obs: Observation) -> Verdict:
    answers = obs.answers
    wrong = [(name, want, got) for (name, want), got in zip(cases.decay_names, answers, strict=False) if got is not want]
    if len(answers) != len(cases.decay_names):
        return Verdict(False, None, "decays(name) did not answer for every name")
    if not wrong:
        return Verdict(True)
    name, want, got = wrong[0]
    if isinstance(got, str):
        return Verdict(False, None, f"decays({name!r}) returned {got}, expected True or False")
    also = f"; also wrong for {', '.join(repr(w[0]) for w in wrong[1:4])}{', ...' if len(wrong) > 4 else ''}" if len(wrong) > 1 else ""
    why = "weight matrices decay" if want else "embeddings, biases and layer-norm gains and shifts are exempt"
    details = "\n".join(f"decays({w[0]!r}): yours {w[2]}, reference {w[1]}" for w in wrong)
    return Verdict(False, None, f"decays({name!r}) returned {got}, the reference {want} ({why}){also}", details)


def judge_schedule(cases: TrainingCases, obs: Observation) -> Verdict:
    verdicts: list[Verdict] = []
    for i, p in enumerate(cases.schedule):
        got, kind = array_of(obs, f"{i}/lr")
        base = p.args[1]  # compared in units of base_lr: learning rates are far below the tolerances' atol
        scaled = None if got is None else np.asarray(got, dtype=np.float64) / base
        verdicts.append(summarise([compare("lr / base_lr", scaled, np.asarray(p.lr / base), kind)], p.label))
    return _first_failure(verdicts)


def judge_global_norm(cases: TrainingCases, obs: Observation) -> Verdict:
    verdicts: list[Verdict] = []
    for i, (label, _, norm) in enumerate(cases.norms):
        got, kind = array_of(obs, f"{i}/norm")
        verdicts.append(summarise([compare("global_norm", got, np.asarray(norm), kind)], label))
    return _first_failure(verdicts)


def judge_clip(cases: TrainingCases, obs: Observation) -> Verdict:
    verdicts: list[Verdict] = []
    for i, c in enumerate(cases.clips):
        kind = obs.types.get(f"{i}/result")
        if kind is not None:
            verdicts.append(Verdict(False, None, f"clip_by_global_norm returned {_a(kind)}, expected (clipped, norm) ({c.label})"))
            continue
        comparisons = _mapping(obs, f"{i}/clipped", c.clipped, lambda k: f"clipped[{k!r}]")
        got, got_kind = array_of(obs, f"{i}/norm")
        comparisons.append(compare("norm", got, np.asarray(c.norm), got_kind))
        verdicts.append(summarise(comparisons, c.label))
    return _first_failure(verdicts)


