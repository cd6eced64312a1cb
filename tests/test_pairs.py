"""Every registered pair against finite differences, for fixed and Hypothesis-drawn cases,
plus purity, dtype, shape errors, and proof that the check can fail."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bevialm.gradcheck import DEFAULT, purity_problems, vjp_check
from bevialm.registry import PAIRS, Bound, Case, PairSpec
from bevialm.types import Array, Grads, Params

from .check_helpers import check, point
from .strategies import cases

EXAMPLES = [pytest.param(spec, case, id=f"{spec.name}-{i}") for spec in PAIRS for i, case in enumerate(spec.examples)]
STRESS = [pytest.param(spec, case, id=f"{spec.name}-stress-{i}") for spec in PAIRS for i, case in enumerate(spec.stress)]
SPECS = [pytest.param(spec, id=spec.name) for spec in PAIRS]


@pytest.mark.parametrize(("spec", "case"), EXAMPLES + STRESS)
def test_fixed_case_matches_finite_differences(spec: PairSpec, case: Case) -> None:
    check(spec, case).raise_if_failed()


@pytest.mark.parametrize("spec", SPECS)
def test_drawn_cases_match_finite_differences(spec: PairSpec) -> None:
    @given(cases(spec.draw_case))
    def run(case: Case) -> None:
        check(spec, case).raise_if_failed()

    run()


@pytest.mark.parametrize("spec", SPECS)
def test_pair_is_pure(spec: PairSpec) -> None:
    @given(cases(spec.draw_case))
    def run(case: Case) -> None:
        bound, params, x = point(spec, case)
        y, _ = bound.forward(params, x)
        dy = np.random.default_rng(case.seed).standard_normal(np.shape(y))
        assert purity_problems(bound.forward, bound.backward, params, x, dy) == []

    run()


def _to32(params: Params, x: Array) -> tuple[dict[str, Array], Array]:
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    return p32, (x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x)


@pytest.mark.parametrize(("spec", "case"), EXAMPLES + STRESS)
def test_float32_in_gives_float32_out(spec: PairSpec, case: Case) -> None:
    bound, params, x = point(spec, case)
    p32, x32 = _to32(params, x)
    y, cache = bound.forward(p32, x32)
    assert y.dtype == np.float32
    dx, grads = bound.backward(p32, cache, np.ones_like(y))
    assert dx is None or dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    assert set(grads) == set(p32)


@pytest.mark.parametrize("spec", SPECS)
def test_init_is_float32_by_default_and_seeded(spec: PairSpec) -> None:
    case = spec.examples[0]
    a = spec.module.init(case.cfg, np.random.default_rng(0)) if "init" in spec.functions else {}
    b = spec.module.init(case.cfg, np.random.default_rng(0)) if "init" in spec.functions else {}
    assert all(v.dtype == np.float32 for v in a.values())
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("spec", "case"), EXAMPLES)
def test_backward_rejects_cotangent_of_wrong_shape(spec: PairSpec, case: Case) -> None:
    bound, params, x = point(spec, case)
    y, cache = bound.forward(params, x)
    bad = np.ones((*np.shape(y), 2))
    with pytest.raises(ValueError, match=r"shape"):
        bound.backward(params, cache, bad)


# --- the check must be able to fail ---------------------------------------------------------


def spoiled(a: Array, how: str) -> Array:
    """A copy of ``a`` scaled by 1.01, or with one entry off by 1e-3, whatever its memory layout
    (``reshape(-1)`` of a transposed array is a copy: an edit through it would be lost)."""
    out = np.array(a, copy=True)
    if how == "scaled":
        return out * 1.01
    out[np.unravel_index(out.size // 2, out.shape)] += 1e-3
    return out


def test_spoiled_changes_one_entry_of_every_layout() -> None:
    base = np.arange(12.0).reshape(3, 4)
    for a in (base, base.T, base[:, ::2], np.asfortranarray(base)):
        out = spoiled(a, "one-entry")
        assert out.shape == a.shape and np.count_nonzero(out != a) == 1


def _corrupt(bound: Bound, target: str, how: str) -> Bound:
    """The same pair with one output of its backward deliberately wrong."""

    def spoil(a: Array) -> Array:
        return spoiled(a, how)

    def backward(params: Params, cache: Any, dy: Array) -> tuple[Array | None, Grads]:
        dx, grads = bound.backward(params, cache, dy)
        if target == "dx":
            assert dx is not None
            return spoil(dx), grads
        return dx, {**grads, target: spoil(grads[target])}

    return Bound(bound.forward, backward)


def _identically_zero(spec: PairSpec, case: Case) -> set[str]:
    """Gradients that vanish for every input, e.g. attention's key bias ``k.b`` (it shifts a
    query's scores by one constant, which the softmax ignores). Scaling such a gradient leaves
    it correct, so only the one-entry corruption can make it wrong."""
    bound, params, x = point(spec, case)
    y, cache = bound.forward(params, x)
    _, grads = bound.backward(params, cache, np.random.default_rng(0).standard_normal(np.shape(y)))
    return {k for k, g in grads.items() if np.max(np.abs(g), initial=0.0) <= DEFAULT.atol}


def _targets(spec: PairSpec) -> list[Any]:
    out = []
    for i, case in enumerate(spec.examples):
        _, params, x = point(spec, case)
        names = (["dx"] if np.issubdtype(x.dtype, np.floating) else []) + sorted(params)
        zero = _identically_zero(spec, case)
        hows = {t: ("one-entry",) if t in zero else ("scaled", "one-entry") for t in names}
        out += [pytest.param(spec, case, t, how, id=f"{spec.name}-{i}-{t}-{how}") for t in names for how in hows[t]]
    return out


@pytest.mark.parametrize(("spec", "case", "target", "how"), [t for s in PAIRS for t in _targets(s)])
def test_a_wrong_backward_is_reported(spec: PairSpec, case: Case, target: str, how: str) -> None:
    bound, params, x = point(spec, case)
    wrong = _corrupt(bound, target, how)
    report = vjp_check(wrong.forward, wrong.backward, params, x, rng=np.random.default_rng(0))
    assert not report.passed
    assert [r.name for r in report.failures] == [target]
    assert target in report.format() and "FAIL" in report.format()


def test_report_names_missing_and_misshapen_grads() -> None:
    spec = next(s for s in PAIRS if s.name == "linear")
    bound, params, x = point(spec, spec.examples[1])

    def backward(p: Params, cache: Any, dy: Array) -> tuple[Array | None, Grads]:
        dx, grads = bound.backward(p, cache, dy)
        return dx, {"W": grads["W"].T}

    report = vjp_check(bound.forward, backward, params, x, rng=np.random.default_rng(0))
    assert not report.passed
    text = report.format()
    assert "missing ['b']" in text and "grad 'W'" in text


def test_check_refuses_float32() -> None:
    spec = next(s for s in PAIRS if s.name == "linear")
    bound, params, x = point(spec, spec.examples[0])
    with pytest.raises(ValueError, match="float64"):
        vjp_check(bound.forward, bound.backward, params, x.astype(np.float32), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="float64"):
        p32 = {k: v.astype(np.float32) for k, v in params.items()}
        vjp_check(bound.forward, bound.backward, p32, x, rng=np.random.default_rng(0))


@given(st.integers(0, 2**16))
def test_subset_check_still_catches_errors(seed: int) -> None:
    spec = next(s for s in PAIRS if s.name == "linear")
    bound, params, x = point(spec, spec.examples[2])
    wrong = _corrupt(bound, "W", "scaled")
    rng = np.random.default_rng(seed)
    assert vjp_check(bound.forward, bound.backward, params, x, rng=rng, max_elements=3).passed
    assert not vjp_check(wrong.forward, wrong.backward, params, x, rng=rng, max_elements=3).passed


# --- the in-place forms kept for speed (docs/contributing.md) give the plain form's bits -----------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_forms_equal_their_plain_formulas(dtype: type[np.floating[Any]]) -> None:
    from bevialm.layers import layernorm, linear

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 6)).astype(dtype) * 3 + 1
    lin_cfg = linear.LinearConfig(6, 7)
    lin = {k: (v + 0.5).astype(dtype) for k, v in linear.init(lin_cfg, rng, dtype).items()}
    y, _ = linear.forward(lin, x, lin_cfg)
    assert np.array_equal(y, (x.reshape(-1, 6) @ lin["W"] + lin["b"]).reshape(3, 5, 7))  # plain: x W + b
    ln_cfg = layernorm.LayerNormConfig(6)
    ln = {"gamma": rng.standard_normal(6).astype(dtype), "beta": rng.standard_normal(6).astype(dtype)}
    y, cache = layernorm.forward(ln, x, ln_cfg)
    xc = x - layernorm.mean(x)
    rstd = 1.0 / np.sqrt(layernorm.mean_of_product(xc, xc) + ln_cfg.eps)
    xhat = xc * rstd
    assert np.array_equal(cache.xhat, xhat) and np.array_equal(y, xhat * ln["gamma"] + ln["beta"])
    assert y.dtype == dtype
