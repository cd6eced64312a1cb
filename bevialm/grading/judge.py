"""Judge what the student's code returned against the reference's answers.

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
code in the child's copy of the submission) give the reference's loss and gradients,
and a few gradient steps lower the loss exactly as the reference's do.

Every comparison uses the tolerances of :class:`bevialm.gradcheck.Tolerances`
(``|yours - reference| <= atol + rtol |reference|``); the student's and the
reference's float64 results differ only by rounding, far inside them. All of it
runs in the grader's process.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bevialm.gradcheck import DEFAULT
from bevialm.grading import cases as reference
from bevialm.grading import training as beyond_pairs
from bevialm.grading.compare import (
    NOT_COMPARABLE,
    Comparison,
    array_of,
    at_index,
    compare,
    judge_cases,
    listed,
    summarise,
    tensor_name,
    worst_of,
)
from bevialm.grading.plan import MODEL, Check
from bevialm.grading.sandbox import Limits, Outcome
from bevialm.grading.tasks import Observation
from bevialm.registry import BY_NAME, PAIRS, PairSpec
from bevialm.types import Array


@dataclass(frozen=True)
class CheckResult:
    check: Check
    passed: bool
    hint: str
    """One line: "ok", or what is wrong, naming the tensor."""
    worst_rel: float | None = None
    """Largest relative error over the entries compared (None when nothing numeric was compared)."""
    details: str = ""
    """More lines for the Gradescope output (captured printing, every failing tensor)."""
    seconds: float = 0.0
    reason: str = "mismatch"
    """Why it failed: ``mismatch`` (wrong numbers or shapes), ``error`` (an exception) or
    ``sandbox`` (a hang, crash, exit or flood)."""
    cause: str = ""
    """For ``error`` and ``sandbox``: what happened, without where (the exception's type and
    message, or how the child ended), to tell one cause failing every check."""

    @property
    def score(self) -> float:
        return self.check.rule.points if self.passed else 0.0


_SHAPE_DTYPE = re.compile(r"\((\((?:\d+(?:, )?)*,?\)), '(\w+)'\)")


def _name_grads(problem: str) -> str:
    """The gradient checker's words in the hint's: ``grad 'W' is ((4, 3), 'float64')`` ->
    ``dW is (4, 3) float64``."""
    named = re.sub(r"grad '([^']+)' is", lambda m: f"{tensor_name(m.group(1))} is", problem)
    return _SHAPE_DTYPE.sub(lambda m: f"{m.group(1)} {m.group(2)}", named)


# --- judging each kind ------------------------------------------------------------------------


def _judge_forward(points: list[reference.PairPoint], obs: Observation) -> tuple[bool, float | None, str, str]:
    cases = []
    for i, p in enumerate(points):
        got, kind = array_of(obs, f"{i}/y")
        cases.append(([compare("y", got, p.y, kind)], p.label))
    return judge_cases(cases, prefix="forward output ")


def _judge_backward(points: list[reference.PairPoint], obs: Observation) -> tuple[bool, float | None, str, str]:
    cases = []
    for i, p in enumerate(points):
        comparisons = []
        if p.dx is not None:
            got, kind = array_of(obs, f"{i}/dx")
            comparisons.append(compare("dx", got, p.dx, kind))
        grads_type = obs.meta["types"].get(f"{i}/grads")
        keys = set(obs.meta["cases"].get(str(i), {}).get("grad_keys", []))
        if grads_type:
            comparisons.append(Comparison("grads", False, None, f"grads is a {grads_type}, expected a dict"))
        for key, want in p.grads.items():
            got, kind = array_of(obs, f"{i}/grad/{key}")
            if key not in keys and not grads_type:
                comparisons.append(Comparison(tensor_name(key), False, None, f"{tensor_name(key)} is missing: grads has no {key!r}"))
            else:
                comparisons.append(compare(tensor_name(key), got, want, kind))
        extra = sorted(keys - set(p.grads))
        if extra:
            comparisons.append(Comparison("grads", False, None, f"grads has unexpected keys {extra}"))
        cases.append((comparisons, p.label))
    return judge_cases(cases)


def _judge_gradcheck(points: list[reference.PairPoint], obs: Observation) -> tuple[bool, float | None, str, str]:
    worst: list[float] = []
    for i, p in enumerate(points):
        found = obs.meta["cases"].get(str(i), {})
        failing: list[tuple[str, str]] = []
        for r in found.get("results", []):
            a, n = float(r["analytic"]), float(r["numeric"])
            if math.isnan(a) or math.isnan(n):
                rel = math.nan
            else:
                rel = abs(a - n) / (abs(a) + abs(n)) if abs(a) + abs(n) > DEFAULT.atol else 0.0
            worst.append(rel)
            if not r["passed"]:
                name = "dx" if r["name"] == "dx" else tensor_name(r["name"])
                failing.append(
                    (name, f"rel err {rel:.1e}{at_index(tuple(r['index']))}: your backward {a:.6g}, "
                    f"finite differences of your forward {n:.6g}")
                )
        problems = [_name_grads(p) for p in found.get("problems", [])]
        if failing or problems:
            lines = [f"{name}: {detail}" for name, detail in failing]
            if problems:  # a wrong shape, key or dtype first: the numbers of such a gradient mean little
                disagree = f"; also, {listed([f[0] for f in failing])} disagree{'s' if len(failing) == 1 else ''} with finite differences" if failing else ""
                return False, NOT_COMPARABLE, f"{problems[0]} ({p.label}){disagree}", "\n".join(problems + lines)
            name, detail = failing[0]
            also = f"; also {listed([f[0] for f in failing[1:]])}" if len(failing) > 1 else ""
            hint = f"your {name} disagrees with finite differences of your own forward ({detail}) ({p.label}){also}"
            rels = [r for r in worst if not math.isnan(r)]
            return False, (max(rels) if rels else math.nan), hint, "\n".join(lines)
    return True, worst_of(worst), "ok", ""


def _judge_purity(points: list[reference.PairPoint], obs: Observation) -> tuple[bool, float | None, str, str]:
    for i, p in enumerate(points):
        found = obs.meta["cases"].get(str(i), {})
        problems = [_name_grads(p) for p in found.get("problems", [])]
        shape, dtype = found.get("y", [None, None])
        if shape is not None and (tuple(shape) != np.shape(p.y) or dtype != str(p.y.dtype)):
            problems.insert(0, f"forward returned y as {tuple(shape)} {dtype}, expected {np.shape(p.y)} {p.y.dtype}")
        if p.init is not None:
            got = found.get("init")
            if got != p.init:
                problems.append(f"init(cfg, rng, np.float64) gave {_describe_params(got)}, expected {_describe_params(p.init)}")
            default = found.get("init_default")
            expected32 = {k: [v[0], "float32"] for k, v in p.init.items()}
            if default != expected32:
                problems.append(f"init(cfg, rng) gave {_describe_params(default)}, expected float32 {_describe_params(expected32)}")
        if problems:
            return False, None, f"{problems[0]} ({p.label})", "\n".join(problems)
    return True, None, "ok", ""


def _describe_params(structure: Any) -> str:
    if not isinstance(structure, dict):
        return "nothing"
    if "type" in structure and len(structure) == 1:
        return f"a {structure['type']}"
    return "{" + ", ".join(f"{k}: {v[0]} {v[1]}" if isinstance(v, list) else f"{k}: {v}" for k, v in sorted(structure.items())) + "}"


def _judge_model(point: reference.ModelPoint, obs: Observation) -> tuple[bool, float | None, str, str]:
    got, kind = array_of(obs, "loss")
    comparisons = [compare("loss", got, np.asarray(point.loss), kind)]
    for key, want in point.grads.items():
        got, kind = array_of(obs, f"grad/{key}")
        comparisons.append(compare(tensor_name(key), got, want, kind) if got is not None or kind else Comparison(tensor_name(key), False, None, f"no gradient for {key!r}"))
    return summarise(comparisons, "the model on one batch")


def _judge_training(expected: Array, obs: Observation) -> tuple[bool, float | None, str, str]:
    got, kind = array_of(obs, "losses")
    passed, rel, hint, details = summarise([compare("losses", got, expected, kind)], "loss after each step")
    if not passed:
        return passed, rel, hint, details
    assert got is not None
    if not got[-1] < got[0]:
        return False, rel, f"the loss did not go down: {got[0]:.4f} -> {got[-1]:.4f}", ""
    return True, rel, "ok", f"loss {' -> '.join(f'{v:.4f}' for v in got)}"


# --- outcomes that are not observations ---------------------------------------------------------


def _failure(outcome: Outcome, limits: Limits) -> str | None:
    if outcome.status == "timeout":
        return f"timed out: {outcome.detail} (an endless loop, or far too slow?)"
    if outcome.status == "crashed":
        return f"crashed: {outcome.detail}"
    if outcome.status == "exited":
        return f"ended without a result: {outcome.detail} (os._exit? sys.exit in another thread?)"
    if outcome.status == "flood":
        return f"output flood: {outcome.detail} in one check; remove debug printing"
    if outcome.status == "unreadable":
        return f"its result could not be read ({outcome.detail})"
    return None


def _error_hint(error: Mapping[str, Any], label: str) -> str:
    at = f" at {error['where']}" if error.get("where") else ""
    if error["type"] == "NotImplementedError":
        return f"not implemented yet (NotImplementedError{at})"
    message = f": {error['message']}" if error.get("message") else ""
    return f"raised {error['type']}{message}{at}{f' ({label})' if label else ''}"


def _judge(
    check: Check,
    outcome: Outcome,
    limits: Limits,
    points: list[reference.PairPoint],
    model_point: reference.ModelPoint | None,
    training: Array | None,
    others: beyond_pairs.TrainingCases | None = None,
) -> CheckResult:
    printed = f"\nit printed ({outcome.output_bytes} bytes):\n{outcome.output[:2000]}" if outcome.output_bytes else ""
    failure = _failure(outcome, limits)
    if failure is not None or outcome.observation is None:
        cause = f"{outcome.status}: {outcome.detail}"
        return CheckResult(check, False, failure or "no result", None, f"{failure}{printed}", outcome.seconds, "sandbox", cause)
    obs = outcome.observation
    if obs.meta["error"]:
        case = obs.meta.get("case")
        label = points[case].label if isinstance(case, int) and 0 <= case < len(points) else ""
        if others is not None and isinstance(case, int) and (check.subject, check.kind) in beyond_pairs.JUDGES:
            label = beyond_pairs.case_label(check.subject, check.kind, others, case)
        hint = _error_hint(obs.meta["error"], label)
        error = obs.meta["error"]
        return CheckResult(check, False, hint, None, f"{hint}{printed}", outcome.seconds, "error", f"{error['type']}: {error['message']}")
    if (check.subject, check.kind) in beyond_pairs.JUDGES:
        assert others is not None
        verdict = beyond_pairs.judge(check.subject, check.kind, others, obs)
    elif check.kind == "forward":
        verdict = _judge_forward(points, obs)
    elif check.kind == "backward":
        verdict = _judge_backward(points, obs)
    elif check.kind == "gradcheck":
        verdict = _judge_gradcheck(points, obs)
    elif check.kind == "purity":
        verdict = _judge_purity(points, obs)
    elif check.kind == "loss_and_grads":
        assert model_point is not None
        verdict = _judge_model(model_point, obs)
    else:
        assert training is not None
        verdict = _judge_training(training, obs)
    passed, worst, hint, details = verdict
    if not passed and worst == 0.0:
        worst = None  # a failed check never shows a relative error of 0
    if not passed and check.subject in BY_NAME:
        hint += _probe_hint(BY_NAME[check.subject], obs)
    return CheckResult(check, passed, hint, worst, f"{details}{printed}".strip(), outcome.seconds)


def _probe_hint(spec: PairSpec, obs: Observation) -> str:
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


def _graded_uses(module_name: str, graded: Mapping[str, frozenset[str]]) -> set[str]:
    """The reference modules whose *graded* functions ``module_name`` calls
    (``linear.forward``, or a name imported from such a module), read from its source."""
    import ast
    import importlib

    module = importlib.import_module(module_name)
    tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
    aliases: dict[str, str] = {}  # local name -> module name
    used: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in graded:
                    aliases[a.asname or a.name] = sub
                elif node.module in graded and a.name in graded[node.module]:
                    used.add(node.module)
    for item in ast.walk(tree):
        if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name):
            target = aliases.get(item.value.id)
            if target is not None and item.attr in graded[target]:
                used.add(target)
    return used - {module_name}


def pair_dependencies() -> dict[str, set[str]]:
    """For each pair, the pairs whose graded functions its module calls, directly or through
    another pair: a failure there explains one here."""
    graded = {spec.module.__name__: frozenset(spec.functions) for spec in PAIRS}
    by_module = {spec.module.__name__: spec.name for spec in PAIRS}
    direct = {m: _graded_uses(m, graded) for m in graded}
    deps: dict[str, set[str]] = {}
    for spec in PAIRS:
        seen: set[str] = set()
        todo = [spec.module.__name__]
        while todo:
            for m in direct.get(todo.pop(), set()):
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        deps[spec.name] = {by_module[m] for m in seen} - {spec.name}
    return deps


CONTRACT = frozenset({"init", "forward", "backward"})


def helper_calls() -> dict[str, dict[str, list[str]]]:
    """For each pair, its graded functions' calls of the pair's *other* graded functions, read
    from the reference source: ``{"attention": {"forward": ["attend"], "backward":
    ["attend_backward"]}}``. A wrong number out of ``forward`` may come from ``attend``."""
    import ast
    import importlib

    out: dict[str, dict[str, list[str]]] = {}
    for spec in PAIRS:
        graded = set(spec.functions)
        module = importlib.import_module(spec.module.__name__)
        tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
        calls: dict[str, list[str]] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in graded:
                called = {
                    c.func.id
                    for c in ast.walk(node)
                    if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id in graded
                }
                calls[node.name] = sorted(called - {node.name})
        out[spec.name] = {k: v for k, v in calls.items() if v}
    return out


def _helper_hint(subject: str, kind: str, helpers: Mapping[str, Mapping[str, list[str]]]) -> str:
    """`` [your forward calls your attend: look there too]`` for a check whose numbers are wrong."""
    uses = helpers.get(subject, {})
    callers = {"forward": ("forward",), "backward": ("backward",), "gradcheck": ("backward",)}.get(kind, ())
    found = [(c, uses[c]) for c in callers if c in uses]
    if not found:
        return ""
    said = "; ".join(f"your {caller} calls your {' and '.join(names)}" for caller, names in found)
    return f" [{said}: look there too]"


def _cross_reference(results: list[CheckResult]) -> list[CheckResult]:
    """Add what one check's result says about another's to the hints of wrong numbers."""
    failed = {(r.check.subject, r.check.kind) for r in results if not r.passed}
    passed = {(r.check.subject, r.check.kind) for r in results if r.passed}
    deps = pair_dependencies()
    helpers = helper_calls()
    out = []
    for r in results:
        if r.passed or r.reason != "mismatch":
            out.append(r)
            continue
        hint = r.hint
        subject, kind = r.check.subject, r.check.kind
        if kind == "gradcheck" and (subject, "forward") in passed and hint.startswith("your "):
            hint = "your forward matches the reference, but " + hint
        if kind == "backward" and (subject, "forward") in failed:
            hint += " [your forward is wrong too: fix it first]"
        if subject != MODEL and not any((d, kind) in failed for d in deps.get(subject, ())):
            hint += _helper_hint(subject, kind, helpers)  # no failing sub-pair to blame first
        if subject == MODEL:
            broken = sorted({s for s, _ in failed if s in BY_NAME})
            if broken:
                hint += f" [fix the failing pairs first: {listed(broken)}]"
        else:
            broken = sorted(d for d in deps.get(subject, ()) if (d, kind) in failed)
            if broken:
                hint += f" [it uses {listed(broken)}, which fail{'s' if len(broken) == 1 else ''} this check too]"
        out.append(replace(r, hint=hint))
    return out
