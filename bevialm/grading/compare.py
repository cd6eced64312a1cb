"""Comparing the student's numbers with the reference's, and summing a check's comparisons up
in one hint: the worst tensor first, the worst case of a check named, the parameter groups that
are wrong and right. Shared by the pairs' judges (:mod:`bevialm.grading.pair_judges`) and the
checks beyond the pairs (:mod:`bevialm.grading.training`, :mod:`bevialm.grading.bpe_task`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from bevialm.gradcheck import DEFAULT, Tolerances, relative_error
from bevialm.types import Array


@dataclass(frozen=True)
class Verdict:
    """A judge's verdict on one check."""

    passed: bool
    worst_rel: float | None = None
    """Largest relative error over the entries compared (None when nothing numeric was compared)."""
    hint: str = "ok"
    """One line: "ok", or what is wrong, naming the tensor and the case."""
    details: str = ""
    """More lines (every failing tensor)."""
    cause: str = ""
    """What a failure says about another check of the subject (:data:`PROBES_DIFFER`), or ""."""


PROBES_DIFFER = "the forward differs from the reference's at the gradient check's points"
"""The gradient check's cause when the forward, right at the cases' own points, answers the
finite differences' points otherwise than the reference's forward: the forward check fails too."""


def tensor_name(key: str) -> str:
    """``dW`` for parameter ``W``; ``d(q.W)`` for a dotted name."""
    return f"d({key})" if "." in key else f"d{key}"


@dataclass(frozen=True)
class Comparison:
    name: str
    passed: bool
    worst_rel: float | None
    problem: str = ""


def at_index(index: tuple[int, ...]) -> str:
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
        f"{name} differs from the reference (rel err {rel.flat[flat]:.1e}{at_index(index)}: "
        f"yours {a.flat[flat]:.6g}, reference {n.flat[flat]:.6g})",
    )


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


NOT_COMPARABLE = math.inf
"""The relative error of a tensor that could not be compared: missing, not an array, or of the
wrong shape (the report's rel-err column says ``shape``)."""


def summarise(comparisons: list[Comparison], label: str) -> Verdict:
    """The verdict over the tensors of one case."""
    return judge_cases([(comparisons, label)])


def judge_cases(cases: list[tuple[list[Comparison], str]], prefix: str = "") -> Verdict:
    """The verdict over every case of a check, each a list of tensor
    comparisons and its label. Passed when every tensor matched in every case. Otherwise the
    hint names the worst failure (a missing or misshapen tensor before any wrong number, then
    the largest error, an earlier case first among equals), the other tensors wrong in *any*
    case, and as matching only the tensors that matched in *every* case: a transposed ``dW``
    that happens to fit a 1x1 case is not said to match. ``worst_rel`` is then the failing
    tensor's error (:data:`NOT_COMPARABLE` for a shape), never a matching tensor's 0."""
    everything = [c for comparisons, _ in cases for c in comparisons]
    failed = sorted(
        ((c, label) for comparisons, label in cases for c in comparisons if not c.passed),
        key=lambda item: _badness(item[0]),
        reverse=True,
    )
    if not failed:
        rels = [c.worst_rel for c in everything if c.worst_rel is not None]
        return Verdict(True, max(rels) if rels else None)
    first, label = failed[0]
    names: list[str] = []
    for c, _ in failed:
        if c.name not in names:
            names.append(c.name)
    fine = sorted({c.name for c in everything} - set(names))
    also = f"; also wrong: {listed(names[1:])}" if len(names) > 1 else ""
    suffix = f"; {', '.join(fine)} {'match' if len(fine) > 1 else 'matches'}" if fine and len(fine) <= 4 else ""
    hint = f"{prefix}{first.problem} ({label}){also}{suffix}{_groups(everything)}"
    rel = NOT_COMPARABLE if first.worst_rel is None else first.worst_rel
    details = [c.problem + (f" ({where})" if len(cases) > 1 else "") for c, where in failed[:20]]
    return Verdict(False, rel, hint, "\n".join(details))


def worst_of(values: list[float]) -> float | None:
    if not values:
        return None
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def listed(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


