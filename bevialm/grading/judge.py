"""Turn what a check's run came to into its result, and cross-reference the results.

A check's own judge (its row of :data:`bevialm.grading.kinds.CHECK_KINDS`) gives the verdict
on what the student's code returned; here an outcome that holds no observation (a hang, a
crash, a flood) or an exception becomes a result without a judge, and once every check has
run, each wrong number's hint learns what other checks say about it (a failing sub-pair, a
helper the function calls, a forward that is wrong too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from bevialm.grading.compare import PROBES_DIFFER, Verdict, listed
from bevialm.grading.observation import Observation, StudentFault
from bevialm.grading.plan import MODEL, Check
from bevialm.grading.sandbox import Outcome
from bevialm.registry import BY_NAME, PAIRS


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
    message, or how the child ended), to tell one cause failing every check. For a ``mismatch``:
    what it says about another check (:data:`~bevialm.grading.compare.PROBES_DIFFER`), or ""."""

    @property
    def score(self) -> float:
        return self.check.rule.points if self.passed else 0.0


# --- outcomes that are not observations ---------------------------------------------------------


def _failure(outcome: Outcome) -> str | None:
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


def _error_hint(error: StudentFault, label: str) -> str:
    at = f" at {error.where}" if error.where else ""
    if error.type == "NotImplementedError":
        return f"not implemented yet (NotImplementedError{at})"
    message = f": {error.message}" if error.message else ""
    return f"raised {error.type}{message}{at}{f' ({label})' if label else ''}"


def judge_outcome(check: Check, outcome: Outcome, judge: Callable[[Observation], Verdict], label: Callable[[int], str]) -> CheckResult:
    """The result of ``check`` from its run's ``outcome``: ``judge``'s verdict on what the
    student's code returned, or what stopped it (``label(i)`` names case ``i``)."""
    printed = f"\nit printed ({outcome.output_bytes} bytes):\n{outcome.output[:2000]}" if outcome.output_bytes else ""
    failure = _failure(outcome)
    if failure is not None or outcome.observation is None:
        cause = f"{outcome.status}: {outcome.detail}"
        return CheckResult(check, False, failure or "no result", None, f"{failure}{printed}", outcome.seconds, "sandbox", cause)
    obs = outcome.observation
    if obs.error is not None:
        hint = _error_hint(obs.error, label(obs.case) if obs.case is not None else "")
        cause = f"{obs.error.type}: {obs.error.message}"
        return CheckResult(check, False, hint, None, f"{hint}{printed}", outcome.seconds, "error", cause)
    verdict = judge(obs)
    worst = None if not verdict.passed and verdict.worst_rel == 0.0 else verdict.worst_rel  # a failure never shows 0
    return CheckResult(check, verdict.passed, verdict.hint, worst, f"{verdict.details}{printed}".strip(), outcome.seconds, cause=verdict.cause)


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


def _forward_differs_at_probes(r: CheckResult) -> CheckResult:
    hint = (
        "forward output differs from the reference's at the gradient check's points, though it matches at the "
        "cases' own points: a forward must compute the same function however it is called (see gradcheck)"
    )
    return replace(r, passed=False, hint=hint, worst_rel=None, details=hint)


def cross_reference(results: list[CheckResult]) -> list[CheckResult]:
    """Add what one check's result says about another's to the hints of wrong numbers; fail the
    forward check of a pair whose forward answered the gradient check's points otherwise."""
    differ = {r.check.subject for r in results if r.cause == PROBES_DIFFER}
    results = [_forward_differs_at_probes(r) if r.check.kind == "forward" and r.passed and r.check.subject in differ else r for r in results]
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
