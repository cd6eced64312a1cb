"""The judges of the pairs' checks and of the pairs composed into the model.

For every pair of the registry (see :mod:`bevialm.grading.cases` for the cases):

- ``forward``: the output matches the reference's;
- ``backward``: fed the student's *own* cache, ``dx`` and every gradient match the reference's;
- ``gradcheck``: the student's pair is consistent with itself under finite differences
  (:func:`bevialm.gradcheck.vjp_check`, run by the grader on the outputs the child
  returns at the points the grader sends), which tells "your forward is right, your
  ``dW`` is not" apart from a wrong forward;
- ``purity``: inputs, params, cotangent and cache unchanged, repeated calls agree, grads
  with the keys, shapes and dtypes of the params, float32 stays float32, ``init`` right.

Then the whole model: the student's pairs composed into the reference model (given
code in the child's copy of the submission) give the reference's loss and gradients
(``loss_and_grads``), and a few gradient steps lower the loss exactly as the
reference's do (``training``).

Every comparison uses the tolerances of :class:`bevialm.gradcheck.Tolerances`
(``|yours - reference| <= atol + rtol |reference|``); the student's and the
reference's float64 results differ only by rounding, far inside them. All of it
runs in the grader's process.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

import numpy as np

from bevialm.gradcheck import DEFAULT
from bevialm.grading import cases as reference
from bevialm.grading.compare import (
    NOT_COMPARABLE,
    PROBES_DIFFER,
    Comparison,
    Verdict,
    at_index,
    compare,
    judge_cases,
    listed,
    summarise,
    tensor_name,
    worst_of,
)
from bevialm.grading.observation import Findings, Observation, array_of
from bevialm.registry import PairSpec
from bevialm.types import Array

_SHAPE_DTYPE = re.compile(r"\((\((?:\d+(?:, )?)*,?\)), '(\w+)'\)")


def _name_grads(problem: str) -> str:
    """The gradient checker's words in the hint's: ``grad 'W' is ((4, 3), 'float64')`` ->
    ``dW is (4, 3) float64``."""
    named = re.sub(r"grad '([^']+)' is", lambda m: f"{tensor_name(m.group(1))} is", problem)
    return _SHAPE_DTYPE.sub(lambda m: f"{m.group(1)} {m.group(2)}", named)


def judge_forward(points: list[reference.PairPoint], obs: Observation) -> Verdict:
    cases = []
    for i, p in enumerate(points):
        got, kind = array_of(obs, f"{i}/y")
        cases.append(([compare("y", got, p.y, kind)], p.label))
    return judge_cases(cases, prefix="forward output ")


def _grads_comparisons(i: int, p: reference.PairPoint, obs: Observation) -> list[Comparison]:
    grads_type = obs.types.get(f"{i}/grads")
    keys = set(obs.keys.get(f"{i}/grads", []))
    comparisons = [Comparison("grads", False, None, f"grads is a {grads_type}, expected a dict")] if grads_type else []
    for key, want in p.grads.items():
        got, kind = array_of(obs, f"{i}/grads/{key}")
        if key not in keys and not grads_type:
            comparisons.append(Comparison(tensor_name(key), False, None, f"{tensor_name(key)} is missing: grads has no {key!r}"))
        else:
            comparisons.append(compare(tensor_name(key), got, want, kind))
    extra = sorted(keys - set(p.grads))
    if extra:
        comparisons.append(Comparison("grads", False, None, f"grads has unexpected keys {extra}"))
    return comparisons


def judge_backward(points: list[reference.PairPoint], obs: Observation) -> Verdict:
    cases = []
    for i, p in enumerate(points):
        comparisons = []
        if p.dx is not None:
            got, kind = array_of(obs, f"{i}/dx")
            comparisons.append(compare("dx", got, p.dx, kind))
        cases.append((comparisons + _grads_comparisons(i, p, obs), p.label))
    return judge_cases(cases)


def _disagreements(found: Findings, worst: list[float]) -> list[tuple[str, str]]:
    """The tensors of one case that disagree with finite differences (their relative errors
    added to ``worst``)."""
    failing: list[tuple[str, str]] = []
    for r in found.results:
        a, n = float(r.analytic), float(r.numeric)
        if math.isnan(a) or math.isnan(n):
            rel = math.nan
        else:
            rel = abs(a - n) / (abs(a) + abs(n)) if abs(a) + abs(n) > DEFAULT.atol else 0.0
        worst.append(rel)
        if not r.passed:
            name = "dx" if r.name == "dx" else tensor_name(r.name)
            failing.append(
                (name, f"rel err {rel:.1e}{at_index(tuple(r.worst_index))}: your backward {a:.6g}, "
                f"finite differences of your forward {n:.6g}")
            )  # fmt: skip
    return failing


def judge_gradcheck(points: list[reference.PairPoint], obs: Observation) -> Verdict:
    worst: list[float] = []
    for i, p in enumerate(points):
        found = obs.findings.get(i, Findings())
        if found.probes_differ:
            hint = (
                f"your forward gave other outputs at the gradient check's points ({found.probes_differ}) than the "
                f"reference's forward on the same inputs, though it is right at the case's own point ({p.label}): "
                "a forward must compute the same function however it is called"
            )
            return Verdict(False, None, hint, cause=PROBES_DIFFER)
        failing = _disagreements(found, worst)
        problems = [_name_grads(p) for p in found.problems]
        if not (failing or problems):
            continue
        lines = [f"{name}: {detail}" for name, detail in failing]
        if problems:  # a wrong shape, key or dtype first: the numbers of such a gradient mean little
            disagree = f"; also, {listed([f[0] for f in failing])} disagree{'s' if len(failing) == 1 else ''} with finite differences" if failing else ""
            return Verdict(False, NOT_COMPARABLE, f"{problems[0]} ({p.label}){disagree}", "\n".join(problems + lines))
        name, detail = failing[0]
        also = f"; also {listed([f[0] for f in failing[1:]])}" if len(failing) > 1 else ""
        hint = f"your {name} disagrees with finite differences of your own forward ({detail}) ({p.label}){also}"
        rels = [r for r in worst if not math.isnan(r)]
        return Verdict(False, max(rels) if rels else math.nan, hint, "\n".join(lines))
    return Verdict(True, worst_of(worst))


def judge_purity(points: list[reference.PairPoint], obs: Observation) -> Verdict:
    for i, p in enumerate(points):
        found = obs.findings.get(i, Findings())
        problems = [_name_grads(p) for p in found.problems]
        if found.y is not None and (found.y[0] != np.shape(p.y) or found.y[1] != str(p.y.dtype)):
            problems.insert(0, f"forward returned y as {found.y[0]} {found.y[1]}, expected {np.shape(p.y)} {p.y.dtype}")
        if p.init is not None:
            if found.init != p.init:
                problems.append(f"init(cfg, rng, np.float64) gave {_describe_params(found.init)}, expected {_describe_params(p.init)}")
            expected32 = {k: [v[0], "float32"] for k, v in p.init.items()}
            if found.init_default != expected32:
                problems.append(f"init(cfg, rng) gave {_describe_params(found.init_default)}, expected float32 {_describe_params(expected32)}")
        if problems:
            return Verdict(False, None, f"{problems[0]} ({p.label})", "\n".join(problems))
    return Verdict(True)


def _describe_params(structure: Any) -> str:
    if not isinstance(structure, dict):
        return "nothing"
    if "type" in structure and len(structure) == 1:
        return f"a {structure['type']}"
    return "{" + ", ".join(f"{k}: {v[0]} {v[1]}" if isinstance(v, list) else f"{k}: {v}" for k, v in sorted(structure.items())) + "}"


def probe_hint(spec: PairSpec, obs: Observation) -> str:
    """`` [your causal_mask(4, 4) differs from the reference's: fix it first]`` when a helper the
    pair's functions use gives other results than the reference's helper (see ``PairSpec.probes``)."""
    for j, probe in enumerate(spec.probes):
        got, kind = array_of(obs, f"probe/{j}")
        if got is None and kind is None:
            continue  # not probed in this check
        want = np.asarray(getattr(spec.module, probe.function)(*probe.args))
        if got is None:
            what = kind if kind and kind.startswith("raised") else f"returned a {kind}"
            return f" [your {probe.describe()} {what}: fix it first]"
        if got.shape != want.shape or got.dtype.kind != want.dtype.kind or not np.allclose(got, want, rtol=DEFAULT.rtol, atol=DEFAULT.atol):
            return f" [your {probe.describe()} differs from the reference's: fix it first]"
    return ""


def with_probe_hint(spec: PairSpec, verdict: Verdict, obs: Observation) -> Verdict:
    """A failed verdict with what the pair's helpers say about it (see :func:`probe_hint`)."""
    return verdict if verdict.passed else replace(verdict, hint=verdict.hint + probe_hint(spec, obs))


def judge_model(point: reference.ModelPoint, obs: Observation) -> Verdict:
    got, kind = array_of(obs, "loss")
    comparisons = [compare("loss", got, np.asarray(point.loss), kind)]
    for key, want in point.grads.items():
        got, kind = array_of(obs, f"grad/{key}")
        comparisons.append(compare(tensor_name(key), got, want, kind) if got is not None or kind else Comparison(tensor_name(key), False, None, f"no gradient for {key!r}"))
    return summarise(comparisons, "the model on one batch")


def judge_training(expected: Array, obs: Observation) -> Verdict:
    got, kind = array_of(obs, "losses")
    verdict = summarise([compare("losses", got, expected, kind)], "loss after each step")
    if not verdict.passed:
        return verdict
    assert got is not None
    if not got[-1] < got[0]:
        return Verdict(False, verdict.worst_rel, f"the loss did not go down: {got[0]:.4f} -> {got[-1]:.4f}")
    return Verdict(True, verdict.worst_rel, "ok", f"loss {' -> '.join(f'{v:.4f}' for v in got)}")
