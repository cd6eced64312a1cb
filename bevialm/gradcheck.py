"""Gradient checking: compare a pair's backward pass with finite differences.

These are the tools the test suite and the coursework grader share, so a
student sees exactly the check that grades them.

A layer pair ``forward(params, x) -> (y, cache)`` / ``backward(params, cache, dy)
-> (dx, grads)`` is a vector-Jacobian product: for a cotangent ``R`` of ``y``'s
shape, ``backward`` returns ``R^T dy/dx`` and ``R^T dy/dtheta``. We scalarise the
layer as ``L = sum(y * R)`` with a fixed random ``R`` (so ``dy = R``) and compare
every entry of ``dx`` and of every gradient with the central difference

    dL/dz ~ sum((y(z + h) - y(z - h)) * R) / (2 h)

taking the difference of the outputs *before* summing, so outputs that a
perturbation does not touch cancel exactly and add no rounding error.

For a whole model an element-wise check is too slow; :func:`directional_check`
compares one directional derivative ``(L(theta + h u) - L(theta - h u)) / 2h`` with
``<grad L, u>`` for random directions ``u`` over all parameters at once, as
PyTorch's fast gradcheck does.

All checks run in float64: in float32 the rounding error of a central
difference (about 1e-7 / h) swamps any tolerance worth having.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bevialm.types import Array, Grads, Params

__all__ = [
    "DEFAULT",
    "Backward",
    "Forward",
    "GradCheckReport",
    "GradientCheckError",
    "TensorResult",
    "Tolerances",
    "arrays_in",
    "avoid_kinks",
    "away_from_init",
    "changed",
    "compare",
    "directional_check",
    "kink_distance",
    "numeric_vjp",
    "purity_problems",
    "random_direction",
    "relative_error",
    "snapshot",
    "structure_problems",
    "vjp_check",
]

Forward = Callable[[Params, Array], tuple[Array, Any]]
"""A pair's forward with its config bound: ``forward(params, x) -> (y, cache)``."""

Backward = Callable[[Params, Any, Array], tuple[Array | None, Grads]]
"""A pair's backward: ``backward(params, cache, dy) -> (dx, grads)`` (``dx`` is None for integer input)."""


@dataclass(frozen=True)
class Tolerances:
    """Every step size and tolerance used by the checks, with the reason for each.

    An entry passes when ``|analytic - numeric| <= atol + rtol * |numeric|``
    (the ``numpy.allclose`` rule, as in ``torch.autograd.gradcheck``); reports
    also give the CS231n relative error ``|a - n| / max(|a| + |n|, tiny)``.
    """

    step: float = 1e-6
    """Central-difference step h. Truncation error is O(h^2) ~ 1e-12 and rounding
    error O(eps_64 / h) ~ 1e-10; 1e-6 balances the two and is PyTorch's default."""

    rtol: float = 1e-5
    """Relative tolerance. About 1e5 times the rounding noise of a float64 central
    difference at h = 1e-6 and far below any real bug (a missing term is O(1)
    relative). PyTorch uses 1e-3; we can be stricter because every check is float64
    and differences are taken per output, before summing."""

    atol: float = 1e-7
    """Absolute tolerance, for entries whose true gradient is (near) zero, where
    no relative error is meaningful; 1000 times the rounding noise above."""

    directional_rtol: float = 1e-5
    """Relative tolerance of a whole-model directional derivative, compared with
    ``|<grad, u>| + ||grad||``: the loss sums many terms, so its rounding error
    scales with the gradient's size, not with one entry."""

    directional_atol: float = 1e-7
    """Absolute tolerance of a directional derivative, as ``atol``."""

    kink_margin: float = 1e-4
    """How far every kink input (ReLU's input at 0) must stay from the kink. A
    perturbation of size h moves such an input by at most h times a weight, about
    1e-5 here, so a point with margin 1e-4 cannot be straddled by the central
    difference; closer points are redrawn instead of loosening tolerances (CS231n)."""

    tiny: float = 1e-12
    """Floor of the relative-error denominator when both values are zero."""


DEFAULT = Tolerances()


class GradientCheckError(AssertionError):
    """Raised by :meth:`GradCheckReport.raise_if_failed` with the full report as message."""


@dataclass(frozen=True)
class TensorResult:
    """How one tensor (``dx`` or one gradient) compared with finite differences."""

    name: str
    shape: tuple[int, ...]
    checked: int
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple[int, ...]
    analytic: float
    numeric: float
    passed: bool

    def describe(self) -> str:
        status = "ok  " if self.passed else "FAIL"
        return (
            f"{status} {self.name:<28} shape={self.shape!s:<14} checked={self.checked:<5} "
            f"max_rel={self.max_rel_error:.2e} max_abs={self.max_abs_error:.2e} "
            f"worst at {self.worst_index}: analytic={self.analytic:.8g} numeric={self.numeric:.8g}"
        )


@dataclass(frozen=True)
class GradCheckReport:
    """The outcome of a check: one :class:`TensorResult` per tensor, plus structural problems."""

    label: str
    results: tuple[TensorResult, ...]
    problems: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.problems and all(r.passed for r in self.results)

    @property
    def failures(self) -> tuple[TensorResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def format(self) -> str:
        named = f" {self.label!r}" if self.label else ""  # no empty '' for an unlabelled check
        head = f"gradient check{named}: {'passed' if self.passed else 'FAILED'}"
        lines = [head, *(f"  problem: {p}" for p in self.problems)]
        lines += [f"  {r.describe()}" for r in self.results]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise GradientCheckError(self.format())


def relative_error(analytic: Array, numeric: Array, tiny: float = DEFAULT.tiny) -> Array:
    """CS231n's ``|a - n| / max(|a| + |n|, tiny)``, element-wise."""
    err: Array = np.abs(analytic - numeric) / np.maximum(np.abs(analytic) + np.abs(numeric), tiny)
    return err


def compare(
    name: str, analytic: Array, numeric: Array, tol: Tolerances = DEFAULT, index: Array | None = None
) -> TensorResult:
    """Compare analytic with numeric values of one tensor (``index`` maps entries back to positions)."""
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    if a.size == 0:
        return TensorResult(name, tuple(np.shape(analytic)), 0, 0.0, 0.0, (), 0.0, 0.0, True)
    abs_err = np.abs(a - n)
    rel_err = relative_error(a, n, tol.tiny)
    allowed = tol.atol + tol.rtol * np.abs(n)
    bad = ~(abs_err <= allowed)  # NaN counts as a failure
    worst = int(np.argmax(np.where(np.isnan(abs_err), np.inf, abs_err / allowed)))
    flat_pos = int(index[worst]) if index is not None else worst
    shape = tuple(np.shape(analytic)) if index is None else ()
    return TensorResult(
        name=name,
        shape=shape,
        checked=int(a.size),
        max_abs_error=float(np.nanmax(abs_err)) if not np.all(np.isnan(abs_err)) else math.nan,
        max_rel_error=float(np.nanmax(rel_err)) if not np.all(np.isnan(rel_err)) else math.nan,
        worst_index=(flat_pos,),
        analytic=float(a[worst]),
        numeric=float(n[worst]),
        passed=not bool(bad.any()),
    )


def _choose(size: int, max_elements: int | None, rng: np.random.Generator) -> Array:
    if max_elements is None or size <= max_elements:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_elements, replace=False))


Evaluate = Callable[[Callable[[Array], Any], list[Array]], list[Any]]
"""``evaluate(f, points) -> [f(p) for p in points]``, possibly all at once (the grader sends a
student's outputs at every point of a finite difference to the student's process in one message)."""


CHUNK = 64
"""Entries whose perturbed points are made (and evaluated) together."""


def _one_by_one(f: Callable[[Array], Any], points: list[Array]) -> list[Any]:
    return [f(p) for p in points]


def numeric_vjp(
    f: Callable[[Array], Array],
    z: Array,
    cotangent: Array,
    flat_indices: Array,
    step: float,
    evaluate: Evaluate = _one_by_one,
) -> Array:
    """Central-difference estimate of ``d sum(f(z) * cotangent) / dz`` at ``flat_indices`` of ``z``.

    Every perturbed point (``z`` plus and minus ``step`` at one entry) is a fresh copy, so ``f``
    may keep or change its argument; ``evaluate`` computes ``f`` at all of them.
    """
    base = np.array(z, dtype=np.float64, copy=True)
    out = np.empty(flat_indices.size)
    for start in range(0, flat_indices.size, CHUNK):  # a bounded number of copies at a time
        chunk = flat_indices[start : start + CHUNK]
        points = []
        for i in chunk:
            for sign in (1.0, -1.0):
                point = base.copy()
                point.reshape(-1)[i] += sign * step
                points.append(point)
        outputs = [np.asarray(y, dtype=np.float64) for y in evaluate(f, points)]
        for k in range(chunk.size):
            out[start + k] = np.sum((outputs[2 * k] - outputs[2 * k + 1]) * cotangent) / (2 * step)
    return out


def structure_problems(params: Params, grads: Mapping[str, Any], dx: Any, x: Any) -> list[str]:
    """Grads must have exactly the keys, shapes and dtypes of params; dx those of x."""
    problems = []
    if set(grads) != set(params):
        missing, extra = sorted(set(params) - set(grads)), sorted(set(grads) - set(params))
        problems.append(f"grads keys differ from params keys: missing {missing}, unexpected {extra}")
    for key in sorted(set(grads) & set(params)):
        g, p = grads[key], params[key]
        if not isinstance(g, np.ndarray) or g.shape != p.shape or g.dtype != p.dtype:
            got = (g.shape, str(g.dtype)) if isinstance(g, np.ndarray) else type(g).__name__
            problems.append(f"grad {key!r} is {got}, expected {(p.shape, str(p.dtype))}")
    if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
        if not isinstance(dx, np.ndarray) or dx.shape != x.shape or dx.dtype != x.dtype:
            got = (dx.shape, str(dx.dtype)) if isinstance(dx, np.ndarray) else type(dx).__name__
            problems.append(f"dx is {got}, expected {(x.shape, str(x.dtype))}")
    return problems


def vjp_check(
    forward: Forward,
    backward: Backward,
    params: Params,
    x: Array,
    *,
    rng: np.random.Generator,
    tol: Tolerances = DEFAULT,
    max_elements: int | None = None,
    label: str = "",
    evaluate: Evaluate = _one_by_one,
) -> GradCheckReport:
    """Check ``dx`` (for floating ``x``) and every gradient of a pair against central differences.

    ``max_elements`` checks a random subset of that many entries per tensor
    (all entries when None). Everything must be float64. ``evaluate`` runs the forward
    at the perturbed points (see :data:`Evaluate`).
    """
    for key, p in params.items():
        if p.dtype != np.float64:
            raise ValueError(f"vjp_check: parameter {key!r} is {p.dtype}; checks need float64")
    x_is_float = np.issubdtype(x.dtype, np.floating)
    if x_is_float and x.dtype != np.float64:
        raise ValueError(f"vjp_check: input is {x.dtype}; checks need float64")
    y, cache = forward(params, x)
    cotangent = rng.standard_normal(np.shape(y))
    dx, grads = backward(params, cache, cotangent)
    problems = structure_problems(params, grads, dx, x)
    results = []
    if x_is_float and isinstance(dx, np.ndarray) and dx.shape == x.shape:
        idx = _choose(x.size, max_elements, rng)
        num = numeric_vjp(lambda z: forward(params, z)[0], x, cotangent, idx, tol.step, evaluate)
        results.append(_located("dx", dx, num, idx, tol))
    for key in sorted(params):
        g = grads.get(key)
        if not isinstance(g, np.ndarray) or g.shape != params[key].shape:
            continue  # already reported as a structural problem

        def run(z: Array, key: str = key) -> Array:
            return forward({**params, key: z}, x)[0]

        idx = _choose(params[key].size, max_elements, rng)
        num = numeric_vjp(run, params[key], cotangent, idx, tol.step, evaluate)
        results.append(_located(key, g, num, idx, tol))
    return GradCheckReport(label, tuple(results), tuple(problems))


def _located(name: str, analytic: Array, numeric: Array, idx: Array, tol: Tolerances) -> TensorResult:
    r = compare(name, analytic.reshape(-1)[idx], numeric, tol, index=idx)
    worst = tuple(int(i) for i in np.unravel_index(r.worst_index[0], analytic.shape))
    return dataclasses.replace(r, shape=tuple(analytic.shape), worst_index=worst)


def random_direction(params: Params, rng: np.random.Generator, keys: Sequence[str] | None = None) -> Grads:
    """A unit-norm random direction over ``keys`` (all parameters when None); zero elsewhere."""
    chosen = set(params) if keys is None else set(keys)
    u = {k: (rng.standard_normal(p.shape) if k in chosen else np.zeros(p.shape)) for k, p in params.items()}
    norm = math.sqrt(sum(float(np.sum(v * v)) for v in u.values()))
    return {k: v / norm for k, v in u.items()}


def directional_check(
    loss: Callable[[Params], float],
    params: Params,
    grads: Mapping[str, Array],
    *,
    rng: np.random.Generator,
    directions: int = 3,
    tol: Tolerances = DEFAULT,
    label: str = "",
) -> GradCheckReport:
    """Compare ``<grads, u>`` with ``(loss(theta + h u) - loss(theta - h u)) / 2h`` for random ``u``.

    On failure every tensor is then checked along its own random direction, so
    the report names the parameters whose gradients are wrong.
    """
    problems = structure_problems(params, grads, None, None)
    if problems:
        return GradCheckReport(label, (), tuple(problems))
    grad_norm = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads.values()))

    def along(u: Mapping[str, Array], name: str) -> TensorResult:
        plus = {k: p + tol.step * u[k] for k, p in params.items()}
        minus = {k: p - tol.step * u[k] for k, p in params.items()}
        numeric = (loss(plus) - loss(minus)) / (2 * tol.step)
        analytic = sum(float(np.sum(grads[k] * u[k])) for k in params)
        err = abs(analytic - numeric)
        allowed = tol.directional_atol + tol.directional_rtol * (abs(numeric) + grad_norm)
        rel = err / max(abs(analytic) + abs(numeric), tol.tiny)
        return TensorResult(name, (), 1, err, rel, (), analytic, numeric, bool(err <= allowed))

    results = [along(random_direction(params, rng), f"direction {i + 1}") for i in range(directions)]
    if not all(r.passed for r in results):
        results += [along(random_direction(params, rng, [k]), k) for k in sorted(params)]
    return GradCheckReport(label, tuple(results))


def arrays_in(obj: Any) -> Iterator[tuple[str, Any]]:
    """Walk a cache (dataclasses, tuples, lists, dicts) and yield ``(path, leaf)`` pairs."""
    yield from _walk(obj, "cache")


def _walk(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        yield path, obj
        for f in dataclasses.fields(obj):
            yield from _walk(getattr(obj, f.name), f"{path}.{f.name}")
    elif isinstance(obj, tuple | list):
        for i, item in enumerate(obj):
            yield from _walk(item, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, item in obj.items():
            yield from _walk(item, f"{path}[{k!r}]")
    else:
        yield path, obj


def kink_distance(cache: Any) -> float:
    """The smallest distance to a kink recorded anywhere in a cache (``inf`` when there is none).

    A cache part that has kinks (the ReLU cache) offers a ``kink_distance()``
    method; this walks nested caches of blocks and models to find them all.
    """
    found = [leaf.kink_distance() for _, leaf in arrays_in(cache) if hasattr(leaf, "kink_distance")]
    return min(found, default=math.inf)


def avoid_kinks(x: Array, kinks: Sequence[float] = (0.0,), margin: float = DEFAULT.kink_margin) -> Array:
    """Return a copy of ``x`` with every entry within ``margin`` of a kink moved to ``margin`` away."""
    out = np.array(x, copy=True)
    for k in kinks:
        near = np.abs(out - k) < margin
        out[near] = k + np.where(out[near] >= k, margin, -margin)
    return out


def snapshot(obj: Any) -> list[tuple[str, Any]]:
    """Deep copies of every array inside ``obj`` (a params mapping, an array or a cache)."""
    return [(p, np.array(a, copy=True)) for p, a in arrays_in(obj) if isinstance(a, np.ndarray)]


def changed(before: list[tuple[str, Any]], obj: Any) -> list[str]:
    """Paths of arrays in ``obj`` that differ from the ``before`` snapshot."""
    after = [(p, a) for p, a in arrays_in(obj) if isinstance(a, np.ndarray)]
    if [p for p, _ in before] != [p for p, _ in after]:
        return ["structure of " + (before[0][0] if before else "object")]
    return [p for (p, a), (_, b) in zip(before, after, strict=True) if not _same(a, b)]


def _same(a: Array, b: Array) -> bool:
    return bool(a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def purity_problems(
    forward: Forward, backward: Backward, params: Params, x: Array, dy: Array
) -> list[str]:
    """What breaks purity: mutated inputs, params, cotangent or cache, or results that differ between calls."""
    problems: list[str] = []
    p0, x0, dy0 = snapshot(dict(params)), np.array(x, copy=True), np.array(dy, copy=True)
    y1, cache1 = forward(params, x)
    y2, _ = forward(params, x)
    if not _same(np.asarray(y1), np.asarray(y2)):
        problems.append("forward gives different outputs on two identical calls")
    c0 = snapshot(cache1)
    dx1, g1 = backward(params, cache1, dy)
    dx2, g2 = backward(params, cache1, dy)
    problems += [f"backward mutated {p}" for p in changed(c0, cache1)]
    if (dx1 is None) != (dx2 is None) or (dx1 is not None and dx2 is not None and not _same(dx1, dx2)):
        problems.append("backward gives different dx on two identical calls")
    if set(g1) != set(g2) or any(not _same(g1[k], g2[k]) for k in g1):
        problems.append("backward gives different grads on two identical calls")
    problems += [f"a pair mutated its params at {p}" for p in changed(p0, dict(params))]
    if not _same(x0, x):
        problems.append("a pair mutated its input x")
    if not _same(dy0, dy):
        problems.append("backward mutated the cotangent dy")
    return problems


def away_from_init(params: Params, rng: np.random.Generator, scale: float = 0.5) -> Grads:
    """Float64 copies of ``params`` moved by N(0, scale²) noise.

    Checks at the initial point can hide bugs: with gamma = 1 and beta = 0 a
    backward that forgets gamma still passes. A generic point exposes them.
    """
    return {k: np.asarray(p, np.float64) + scale * rng.standard_normal(p.shape) for k, p in params.items()}
