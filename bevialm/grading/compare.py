"""Comparing the student's numbers with the reference's, and summing a check's comparisons up
in one hint: the worst tensor first, the worst case of a check named, the parameter groups that
are wrong and right. Shared by the pairs' judges (:mod:`bevialm.grading.judge`) and the checks
beyond the pairs (:mod:`bevialm.grading.training`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from bevialm.gradcheck import DEFAULT, Tolerances, relative_error
from bevialm.grading.tasks import Observation
from bevialm.types import Array

Verdict = tuple[bool, float | None, str, str]
"""``(passed, worst relative error, one-line hint, details)`` of one check."""


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


def summarise(comparisons: list[Comparison], label: str) -> Verdict:
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
    also = f"; also wrong: {listed(names[1:])}" if len(names) > 1 else ""
    suffix = f"; {', '.join(fine)} {'match' if len(fine) > 1 else 'matches'}" if fine and len(fine) <= 4 else ""
    hint = f"{failed[0].problem} ({label}){also}{suffix}{_groups(comparisons)}"
    return False, worst, hint, "\n".join(f"{c.problem}" for c in failed[:20])


def array_of(obs: Observation, key: str) -> tuple[Array | None, str | None]:
    return obs.arrays.get(key), obs.meta["types"].get(key)


def worst_case(verdicts: list[Verdict]) -> Verdict:
    """Over a check's cases: passed when all did, else the hint of the case with the largest
    relative error (a stress case that fails by far is named before a case that fails barely)."""
    worst = worst_of([v[1] for v in verdicts if v[1] is not None])
    failed = [v for v in verdicts if not v[0]]
    if not failed:
        return True, worst, "ok", ""
    rank = [math.inf if v[1] is None or math.isnan(v[1]) else v[1] for v in failed]
    _, _, hint, details = failed[rank.index(max(rank))]
    return False, worst, hint, details


def worst_of(values: list[float]) -> float | None:
    if not values:
        return None
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def listed(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


