"""Grade a student's package against the reference: plan the checks, run them, judge them.

For every pair of the registry (see :mod:`bevialm.grading.cases` for the cases):

- ``forward``: the output matches the reference's;
- ``backward``: fed the student's *own* cache, ``dx`` and every gradient match the reference's;
- ``gradcheck``: the student's pair is consistent with itself under finite differences
  (:func:`bevialm.gradcheck.vjp_check`), which tells "your forward is right, your
  ``dW`` is not" apart from a wrong forward;
- ``purity``: inputs, params, cotangent and cache unchanged, repeated calls agree, grads
  with the keys, shapes and dtypes of the params, float32 stays float32, ``init`` right.

Then the whole model: the student's pairs composed into the reference model
(:class:`bevialm.model.LayerSet`) give the reference's loss and gradients, and a few
gradient steps lower the loss exactly as the reference's do.

Every comparison uses the tolerances of :class:`bevialm.gradcheck.Tolerances`
(``|yours - reference| <= atol + rtol |reference|``); the student's and the
reference's float64 results differ only by rounding, far inside them.
"""

from __future__ import annotations

import fnmatch
import math
import re
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bevialm.gradcheck import DEFAULT, Tolerances, relative_error
from bevialm.grading import cases as reference
from bevialm.grading.rubric import KIND_TITLES, TASK_KINDS, Rubric, Rule, default_rubric
from bevialm.grading.sandbox import Limits, Outcome, run_in_process, run_sandboxed
from bevialm.grading.student import PACKAGE, find_package_root, missing_files, reference_imports
from bevialm.grading.tasks import ModelTask, Observation, PairTask, Submission, Task, TrainingTask
from bevialm.registry import BY_NAME, PAIRS, PairSpec
from bevialm.types import Array

MODEL = "model"
COMPOSED = frozenset(f"{MODEL}.{kind}" for kind in ("loss_and_grads", "training"))


class GradeError(Exception):
    """Grading cannot run (bad options); the message is one line."""


@dataclass(frozen=True)
class Check:
    id: str
    subject: str
    kind: str
    number: str
    rule: Rule

    @property
    def title(self) -> str:
        return f"{self.id}: {KIND_TITLES[self.kind]}"


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

    @property
    def score(self) -> float:
        return self.check.rule.points if self.passed else 0.0


@dataclass(frozen=True)
class GradeReport:
    submission: Path
    root: Path
    results: list[CheckResult]
    rubric: Rubric
    reference_uses: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0
    visible_only: bool = False
    sandboxed: bool = True

    @property
    def score(self) -> float:
        return sum(r.score for r in self.results)

    @property
    def max_score(self) -> float:
        return sum(r.check.rule.points for r in self.results)


# --- planning -----------------------------------------------------------------------------------


def subjects() -> list[tuple[str, tuple[str, ...]]]:
    return list(TASK_KINDS.items())


def all_checks(rubric: Rubric) -> list[Check]:
    return [
        Check(f"{subject}.{kind}", subject, kind, f"{i + 1}.{j + 1}", rubric.rule(f"{subject}.{kind}"))
        for i, (subject, kinds) in enumerate(subjects())
        for j, kind in enumerate(kinds)
    ]


def _matches(check: Check, pattern: str) -> bool:
    return pattern in (check.id, check.subject, check.kind) or fnmatch.fnmatchcase(check.id, pattern)


def plan_checks(rubric: Rubric, *, visible_only: bool = False, only: Sequence[str] = ()) -> list[Check]:
    """The checks to run: enabled in the rubric, visible if asked, and matching ``only``
    (check ids, pair names, kinds or glob patterns such as ``*.backward``)."""
    checks = all_checks(rubric)
    rubric.validate_checks({c.id for c in checks})
    for pattern in only:
        if not any(_matches(c, pattern) for c in checks):
            raise GradeError(f"--only {pattern!r} matches no check (try a pair name such as 'linear', or a kind such as 'backward')")
    return [
        c
        for c in checks
        if c.rule.enabled
        and rubric.graded(c.subject, c.kind)
        and (not visible_only or c.rule.visibility == "visible")
        and (not only or any(_matches(c, p) for p in only))
    ]


# --- comparing ----------------------------------------------------------------------------------


def tensor_name(key: str) -> str:
    """``dW`` for parameter ``W``; ``d(q.W)`` for a dotted name."""
    return f"d({key})" if "." in key else f"d{key}"


@dataclass(frozen=True)
class Comparison:
    name: str
    passed: bool
    worst_rel: float | None
    problem: str = ""


def _where(index: tuple[int, ...]) -> str:
    return f" at {list(index)}" if index else ""


def compare(name: str, got: Array | None, want: Array, got_type: str | None, tol: Tolerances = DEFAULT) -> Comparison:
    """Judge one tensor of the student's against the reference's."""
    if got is None:
        kind = f"a {got_type}" if got_type else "missing"
        return Comparison(name, False, None, f"{name} is {kind}, expected an array of shape {np.shape(want)}")
    if got.shape != np.shape(want):
        return Comparison(name, False, None, f"{name} has shape {got.shape}, the reference's has {np.shape(want)}")
    a = np.asarray(got, dtype=np.float64)
    n = np.asarray(want, dtype=np.float64)
    if a.size == 0:
        return Comparison(name, True, 0.0)
    bad_values = ~np.isfinite(a)
    if bad_values.any():
        what = "NaN" if np.isnan(a).any() else "inf"
        return Comparison(name, False, math.nan, f"{name} contains {what} ({int(bad_values.sum())} of {a.size} entries)")
    err = np.abs(a - n)
    allowed = tol.atol + tol.rtol * np.abs(n)
    meaningful = np.abs(a) + np.abs(n) > tol.atol
    rel = np.where(meaningful, relative_error(a, n, tol.tiny), 0.0)
    worst_rel = float(rel.max())
    if (err <= allowed).all():
        return Comparison(name, True, worst_rel)
    flat = int(np.argmax(err / allowed))
    index = tuple(int(i) for i in np.unravel_index(flat, a.shape))
    return Comparison(
        name,
        False,
        worst_rel,
        f"{name} differs from the reference (rel err {rel.flat[flat]:.1e}{_where(index)}: "
        f"yours {a.flat[flat]:.6g}, reference {n.flat[flat]:.6g})",
    )


_SHAPE_DTYPE = re.compile(r"\((\((?:\d+(?:, )?)*,?\)), '(\w+)'\)")


def _name_grads(problem: str) -> str:
    """The gradient checker's words in the hint's: ``grad 'W' is ((4, 3), 'float64')`` ->
    ``dW is (4, 3) float64``."""
    named = re.sub(r"grad '([^']+)' is", lambda m: f"{tensor_name(m.group(1))} is", problem)
    return _SHAPE_DTYPE.sub(lambda m: f"{m.group(1)} {m.group(2)}", named)


def _badness(c: Comparison) -> float:
    """How wrong a failed comparison is, for naming the worst first: a missing, misshapen or
    non-finite tensor ranks above any finite relative error."""
    return math.inf if c.worst_rel is None or math.isnan(c.worst_rel) else c.worst_rel


_GROUPED = re.compile(r"^d\(([^.()]+)\.")


def _groups(comparisons: list[Comparison]) -> str:
    """`` [wrong: q, v; right: k, proj]`` when the gradients of some parameter groups (attention's
    projections, a block's sub-layers, the model's embeddings) are wrong and others right."""
    status: dict[str, bool] = {}
    for c in comparisons:
        m = _GROUPED.match(c.name)
        if m:
            status[m.group(1)] = status.get(m.group(1), True) and c.passed
    wrong = [g for g, ok in status.items() if not ok]
    right = [g for g, ok in status.items() if ok]
    return f" [wrong: {', '.join(wrong)}; right: {', '.join(right)}]" if wrong and right else ""


def _summarise(comparisons: list[Comparison], label: str) -> tuple[bool, float | None, str, str]:
    """(passed, worst_rel, hint, details) over the tensors of one check."""
    rels = [c.worst_rel for c in comparisons if c.worst_rel is not None]
    worst = max(rels, key=lambda v: (not math.isnan(v), v)) if rels else None
    if any(math.isnan(v) for v in rels):
        worst = math.nan
    failed = sorted((c for c in comparisons if not c.passed), key=_badness, reverse=True)
    if not failed:
        return True, worst, "ok", ""
    names: list[str] = []
    for c in failed:
        if c.name not in names:
            names.append(c.name)
    fine = sorted({c.name for c in comparisons} - set(names))
    also = f"; also wrong: {_names(names[1:])}" if len(names) > 1 else ""
    suffix = f"; {', '.join(fine)} {'match' if len(fine) > 1 else 'matches'}" if fine and len(fine) <= 4 else ""
    hint = f"{failed[0].problem} ({label}){also}{suffix}{_groups(comparisons)}"
    return False, worst, hint, "\n".join(f"{c.problem}" for c in failed[:20])


# --- judging each kind ------------------------------------------------------------------------


def _array(obs: Observation, key: str) -> tuple[Array | None, str | None]:
    return obs.arrays.get(key), obs.meta["types"].get(key)


def _worst_case(verdicts: list[tuple[bool, float | None, str, str]]) -> tuple[bool, float | None, str, str]:
    """Over a check's cases: passed when all did, else the hint of the case with the largest
    relative error (a stress case that fails by far is named before a case that fails barely)."""
    worst = _max([v[1] for v in verdicts if v[1] is not None])
    failed = [v for v in verdicts if not v[0]]
    if not failed:
        return True, worst, "ok", ""
    rank = [math.inf if v[1] is None or math.isnan(v[1]) else v[1] for v in failed]
    _, _, hint, details = failed[rank.index(max(rank))]
    return False, worst, hint, details


def _judge_forward(points: list[reference.PairPoint], obs: Observation) -> tuple[bool, float | None, str, str]:
    verdicts = []
    for i, p in enumerate(points):
        got, kind = _array(obs, f"{i}/y")
        passed, rel, hint, details = _summarise([compare("y", got, p.y, kind)], p.label)
        verdicts.append((passed, rel, f"forward output {hint}", details))
    return _worst_case(verdicts)


def _max(values: list[float]) -> float | None:
    if not values:
        return None
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _judge_backward(points: list[reference.PairPoint], obs: Observation) -> tuple[bool, float | None, str, str]:
    verdicts = []
    for i, p in enumerate(points):
        comparisons = []
        if p.dx is not None:
            got, kind = _array(obs, f"{i}/dx")
            comparisons.append(compare("dx", got, p.dx, kind))
        grads_type = obs.meta["types"].get(f"{i}/grads")
        keys = set(obs.meta["cases"].get(str(i), {}).get("grad_keys", []))
        if grads_type:
            comparisons.append(Comparison("grads", False, None, f"grads is a {grads_type}, expected a dict"))
        for key, want in p.grads.items():
            got, kind = _array(obs, f"{i}/grad/{key}")
            if key not in keys and not grads_type:
                comparisons.append(Comparison(tensor_name(key), False, None, f"{tensor_name(key)} is missing: grads has no {key!r}"))
            else:
                comparisons.append(compare(tensor_name(key), got, want, kind))
        extra = sorted(keys - set(p.grads))
        if extra:
            comparisons.append(Comparison("grads", False, None, f"grads has unexpected keys {extra}"))
        verdicts.append(_summarise(comparisons, p.label))
    return _worst_case(verdicts)


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
                    (name, f"rel err {rel:.1e}{_where(tuple(r['index']))}: your backward {a:.6g}, "
                    f"finite differences of your forward {n:.6g}")
                )
        problems = [_name_grads(p) for p in found.get("problems", [])]
        if failing or problems:
            if failing:
                name, detail = failing[0]
                also = f"; also {_names([f[0] for f in failing[1:]])}" if len(failing) > 1 else ""
                hint = f"your {name} disagrees with finite differences of your own forward ({detail}) ({p.label}){also}"
            else:
                hint = f"{problems[0]} ({p.label})"
            lines = [f"{name}: {detail}" for name, detail in failing]
            return False, _max(worst), hint, "\n".join(lines + problems)
    return True, _max(worst), "ok", ""


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
    got, kind = _array(obs, "loss")
    comparisons = [compare("loss", got, np.asarray(point.loss), kind)]
    for key, want in point.grads.items():
        got, kind = _array(obs, f"grad/{key}")
        comparisons.append(compare(tensor_name(key), got, want, kind) if got is not None or kind else Comparison(tensor_name(key), False, None, f"no gradient for {key!r}"))
    return _summarise(comparisons, "the model on one batch")


def _judge_training(expected: Array, obs: Observation) -> tuple[bool, float | None, str, str]:
    got, kind = _array(obs, "losses")
    passed, rel, hint, details = _summarise([compare("losses", got, expected, kind)], "loss after each step")
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


# --- running ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    rubric: Rubric = field(default_factory=default_rubric)
    seed: int | None = None
    visible_only: bool = False
    only: tuple[str, ...] = ()
    sandbox: bool = True
    jobs: int = 1
    time_limit: float | None = None
    package: str = PACKAGE


def grade(submission: Path, options: Options = Options(), progress: Callable[[CheckResult], None] | None = None) -> GradeReport:
    """Grade the package in ``submission``. Raises :class:`GradeError`,
    :class:`~bevialm.grading.student.SubmissionError` or
    :class:`~bevialm.grading.rubric.RubricError` only when grading cannot run."""
    start = time.monotonic()
    rubric = options.rubric
    settings = rubric.settings if options.seed is None else replace(rubric.settings, seed=options.seed)
    root = find_package_root(submission)
    checks = plan_checks(rubric, visible_only=options.visible_only, only=options.only)
    limits = Limits(
        options.time_limit if options.time_limit is not None else settings.time_limit,
        settings.memory_limit_mb,
        settings.output_limit_kb,
    )

    # The reference runs first, before any student code, so nothing the student does can change it.
    from bevialm.grading import training as beyond  # imports this module's comparisons

    points = {c.subject: reference.pair_points(_spec(c.subject), settings) for c in checks if c.subject in BY_NAME}
    model_point = reference.model_point(settings) if any(c.id in COMPOSED for c in checks) else None
    others = beyond.reference_cases(settings) if any((c.subject, c.kind) in beyond.RUNNERS for c in checks) else None
    training = (
        reference.reference_training(model_point, settings.training_steps)
        if model_point is not None and any(c.id == f"{MODEL}.training" for c in checks)
        else None
    )
    tasks: list[Task] = []
    for c in checks:
        if (c.subject, c.kind) in beyond.RUNNERS:
            assert others is not None
            tasks.append(TrainingTask(c.id, c.subject, c.kind, others))
        elif c.subject == MODEL:
            assert model_point is not None
            mp = model_point
            tasks.append(ModelTask(c.id, c.kind, mp.cfg, mp.params, mp.idx, mp.targets, mp.seed, settings.training_steps if c.kind == "training" else 0, reference.LEARNING_RATE))
        else:
            tasks.append(PairTask(c.id, c.kind, c.subject, tuple(p.input for p in points[c.subject]), settings.gradcheck_entries))

    # Read the submission's source before any of it runs: a check could rewrite its own files
    # (to hide an import of the reference) before a later scan.
    reference_uses, missing = reference_imports(root), missing_files(root)
    target = Submission(str(root.resolve()), options.package)
    outcomes = run_sandboxed(tasks, target, limits, options.jobs) if options.sandbox else run_in_process(tasks, target)

    results = []
    for c, outcome in zip(checks, outcomes, strict=True):
        result = _judge(c, outcome, limits, points.get(c.subject, []), model_point, training, others)
        results.append(result)
        if progress is not None:
            progress(result)
    return GradeReport(
        submission,
        root,
        _cross_reference(results),
        rubric,
        reference_uses,
        missing,
        time.monotonic() - start,
        options.visible_only,
        options.sandbox,
    )


def _spec(name: str) -> Any:
    return next(s for s in PAIRS if s.name == name)


def _judge(
    check: Check,
    outcome: Outcome,
    limits: Limits,
    points: list[reference.PairPoint],
    model_point: reference.ModelPoint | None,
    training: Array | None,
    others: Any = None,
) -> CheckResult:
    from bevialm.grading import training as beyond

    printed = f"\nit printed ({outcome.output_bytes} bytes):\n{outcome.output[:2000]}" if outcome.output_bytes else ""
    failure = _failure(outcome, limits)
    if failure is not None or outcome.observation is None:
        return CheckResult(check, False, failure or "no result", None, f"{failure}{printed}", outcome.seconds, "sandbox")
    obs = outcome.observation
    if obs.meta["error"]:
        case = obs.meta.get("case")
        label = points[case].label if isinstance(case, int) and 0 <= case < len(points) else ""
        if others is not None and isinstance(case, int) and (check.subject, check.kind) in beyond.RUNNERS:
            label = beyond.case_label(check.subject, check.kind, others, case)
        hint = _error_hint(obs.meta["error"], label)
        return CheckResult(check, False, hint, None, f"{hint}{printed}", outcome.seconds, "error")
    if (check.subject, check.kind) in beyond.JUDGES:
        verdict = beyond.judge(check.subject, check.kind, others, obs)
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
    if not passed and check.subject in BY_NAME:
        hint += _probe_hint(BY_NAME[check.subject], obs)
    return CheckResult(check, passed, hint, worst, f"{details}{printed}".strip(), outcome.seconds)


def _probe_hint(spec: PairSpec, obs: Observation) -> str:
    """`` [your causal_mask(4, 4) differs from the reference's: fix it first]`` when a helper the
    pair's functions use gives other results than the reference's helper (see ``PairSpec.probes``)."""
    for j, probe in enumerate(spec.probes):
        got, kind = _array(obs, f"probe/{j}")
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


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


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
                hint += f" [fix the failing pairs first: {_names(broken)}]"
        else:
            broken = sorted(d for d in deps.get(subject, ()) if (d, kind) in failed)
            if broken:
                hint += f" [it uses {_names(broken)}, which fail{'s' if len(broken) == 1 else ''} this check too]"
        out.append(replace(r, hint=hint))
    return out


# --- the terminal table ---------------------------------------------------------------------------


def _points(value: float) -> str:
    return f"{value:g}"


def format_rel(value: float | None) -> str:
    if value is None:
        return "-"
    return "nan" if math.isnan(value) else f"{value:.1e}"


WHEN_SHOWN = {
    "after_due_date": "shown after the due date",
    "after_published": "shown once grades are published",
    "hidden": "never shown to students",
}
"""What a student is told about the checks left out of their table, by visibility."""


def _not_shown(results: Iterable[CheckResult]) -> list[str]:
    """One line per visibility of the checks left out: "2 more checks are shown after the due
    date". A hidden check is never announced as shown later."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.check.rule.visibility] = counts.get(r.check.rule.visibility, 0) + 1
    return [
        f"{n} more {'check is' if n == 1 else 'checks are'} {WHEN_SHOWN[vis]}"
        for vis, n in sorted(counts.items(), key=lambda item: list(WHEN_SHOWN).index(item[0]))
    ]


def format_report(report: GradeReport, width: int = 140, *, visible_rows_only: bool = False) -> str:
    """The terminal table. ``visible_rows_only`` leaves out checks the rubric does not make
    ``visible`` (and their points), for output students see before grades are published."""
    shown = [r for r in report.results if not visible_rows_only or r.check.rule.visibility == "visible"]
    lines = [f"BeviaLLM grading of {report.root}" + ("" if report.sandboxed else " (in-process: no sandbox)")]
    if report.missing:
        lines.append(f"note: the package lacks {', '.join(report.missing)}")
    id_width = max([len(r.check.id) for r in shown] + [5])
    header = f"{'check':<{id_width}}  {'points':>7}  {'rel err':>7}  hint"
    lines += [header, "-" * min(width, len(header) + 40)]
    indent = " " * (id_width + 20)
    for r in shown:
        pts = f"{_points(r.score)}/{_points(r.check.rule.points)}"
        row = f"{r.check.id:<{id_width}}  {pts:>7}  {format_rel(r.worst_rel):>7}  {r.hint}"
        # Wrapped, never cut: the end of a hint ("[it uses linear, which fails ...]") matters most.
        lines += textwrap.wrap(row, max(width, len(indent) + 40), subsequent_indent=indent, break_on_hyphens=False)
    lines.append("-" * min(width, len(header) + 40))
    scope = " (visible checks only)" if report.visible_only or len(shown) < len(report.results) else ""
    passed = sum(r.passed for r in shown)
    score = sum(r.score for r in shown)
    total = sum(r.check.rule.points for r in shown)
    lines.append(
        f"score {_points(score)}/{_points(total)}{scope}: {passed} of {len(shown)} checks passed in {report.seconds:.1f} s"
    )
    lines += _not_shown(r for r in report.results if r not in shown)
    if report.reference_uses:
        lines.append("FLAGGED: this package uses the reference implementation instead of its own:")
        lines += [f"  {u}" for u in report.reference_uses]
    return "\n".join(lines)
