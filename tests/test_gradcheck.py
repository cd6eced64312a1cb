"""The checking tools themselves: they must pass right gradients and catch wrong ones."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from bevialm import gradcheck
from bevialm.gradcheck import (
    GradientCheckError,
    avoid_kinks,
    compare,
    directional_check,
    kink_distance,
    purity_problems,
    relative_error,
)
from bevialm.layers import relu
from bevialm.types import Array, Grads, Params


def quadratic_loss(params: Params) -> float:
    return float(np.sum(params["a"] ** 2) + 3 * np.sum(params["b"]) * float(params["a"][0]))


def quadratic_grads(params: Params) -> Grads:
    a, b = params["a"], params["b"]
    ga = 2 * a
    ga[0] += 3 * np.sum(b)
    return {"a": ga, "b": np.full_like(b, 3 * a[0])}


def test_directional_check_passes_right_and_names_wrong_tensor() -> None:
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal(4), "b": rng.standard_normal((2, 3))}
    good = directional_check(quadratic_loss, params, quadratic_grads(params), rng=rng)
    assert good.passed, good.format()
    bad_grads = quadratic_grads(params)
    bad_grads["b"] = bad_grads["b"] * 1.1
    bad = directional_check(quadratic_loss, params, bad_grads, rng=rng, label="quadratic")
    assert not bad.passed
    assert [r.name for r in bad.failures if not r.name.startswith("direction")] == ["b"]
    with pytest.raises(GradientCheckError, match="quadratic"):
        bad.raise_if_failed()


def test_directional_check_reports_structure() -> None:
    params = {"a": np.ones(3)}
    report = directional_check(quadratic_loss, params, {"a": np.ones(4)}, rng=np.random.default_rng(0))
    assert not report.passed and "grad 'a'" in report.format()


def test_relative_error_and_compare() -> None:
    np.testing.assert_allclose(relative_error(np.array([1.0, 0.0]), np.array([1.0, 0.0])), [0.0, 0.0])
    r = compare("t", np.array([1.0, 2.0]), np.array([1.0, 2.1]))
    assert not r.passed and r.worst_index == (1,) and math.isclose(r.numeric, 2.1)
    assert compare("empty", np.zeros(0), np.zeros(0)).passed
    nan = compare("nan", np.array([np.nan]), np.array([1.0]))
    assert not nan.passed and math.isnan(nan.max_abs_error)


def test_avoid_kinks_and_kink_distance() -> None:
    x = np.array([-1.0, -1e-6, 0.0, 2e-5, 0.5])
    moved = avoid_kinks(x, (0.0,), margin=1e-4)
    np.testing.assert_array_equal(moved, [-1.0, -1e-4, 1e-4, 1e-4, 0.5])
    assert x[1] == -1e-6  # the input is not modified
    _, cache = relu.forward({}, moved, relu.ReluConfig())
    assert math.isclose(kink_distance(cache), 1e-4)
    assert kink_distance({"nested": [cache, (1, 2)]}) == kink_distance(cache)
    assert kink_distance(None) == math.inf
    assert relu.ReluCache(np.zeros(0)).kink_distance() == math.inf


def _identity(params: Params, x: Array) -> tuple[Array, Any]:
    return x * params["w"], [x]


def test_purity_problems_detects_mutation() -> None:
    params = {"w": np.array([2.0])}
    x, dy = np.ones(3), np.ones(3)

    def mutating_backward(p: Params, cache: Any, g: Array) -> tuple[Array | None, Grads]:
        cache[0] += 1.0  # mutates the cache
        g *= 2  # and the cotangent
        return g * p["w"], {"w": np.array([float(np.sum(g))])}

    problems = purity_problems(_identity, mutating_backward, params, x, dy)
    assert any("mutated cache" in p for p in problems)
    assert any("cotangent" in p for p in problems)
    assert any("different dx" in p for p in problems)

    def mutating_forward(p: Params, z: Array) -> tuple[Array, Any]:
        p["w"][0] += 1
        z += 1
        return z.copy(), None

    def plain_backward(p: Params, cache: Any, g: Array) -> tuple[Array | None, Grads]:
        return g, {"w": np.zeros(1)}

    problems = purity_problems(mutating_forward, plain_backward, {"w": np.array([1.0])}, np.ones(2), np.ones(2))
    assert any("params" in p for p in problems)
    assert any("input x" in p for p in problems)
    assert any("forward gives different" in p for p in problems)


def test_tolerances_are_documented() -> None:
    doc = gradcheck.Tolerances.__doc__ or ""
    assert "allclose" in doc
    for field in ("step", "rtol", "atol", "kink_margin"):
        assert hasattr(gradcheck.DEFAULT, field)


def test_structure_problems_name_a_wrong_dx() -> None:
    x = np.ones((2, 3))
    assert gradcheck.structure_problems({}, {}, np.ones((3, 2)), x) == ["dx is ((3, 2), 'float64'), expected ((2, 3), 'float64')"]
    assert gradcheck.structure_problems({}, {}, None, x) == ["dx is NoneType, expected ((2, 3), 'float64')"]
    assert gradcheck.structure_problems({}, {}, None, np.array([1, 2])) == []  # integer input: no dx


def test_changed_reports_a_cache_whose_structure_changed() -> None:
    before = gradcheck.snapshot([np.ones(2)])
    assert gradcheck.changed(before, [np.ones(2), np.ones(1)]) == ["structure of cache[0]"]
    assert gradcheck.changed(before, [np.ones(2)]) == []
