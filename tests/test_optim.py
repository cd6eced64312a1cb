"""AdamW against hand-computed steps, decay exemption, purity and dtypes; the
learning-rate schedule at its key points; global-norm clipping."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest

from bevialm.optim import (
    AdamWConfig,
    AdamWState,
    clip_by_global_norm,
    decays,
    global_norm,
    init_state,
    lr_at,
    step,
)
from bevialm.types import Array

# ---------------------------------------------------------------- AdamW by hand

# One 2-element weight matrix row "w.W" (decayed), lr 0.1, beta1 0.9, beta2 0.95,
# eps 1e-8, weight decay 0.1, theta0 = [1, -2], gradients g1, g2, g3 below.
#
# Step 1: m1 = 0.1 g1 = [0.05, -0.1], v1 = 0.05 g1^2 = [0.0125, 0.05];
#   m_hat = m1 / 0.1 = g1, v_hat = v1 / 0.05 = g1^2, so the Adam term is lr g / (|g| + eps):
#   theta1[0] = 1 - 0.1 * 0.5 / (0.5 + 1e-8) - 0.1 * 0.1 * 1 = 0.89 + 0.1 * 1e-8 / (0.5 + 1e-8)
#             = 0.890000001999999960...
#   theta1[1] = -2 + 0.1 * 1 / (1 + 1e-8) + 0.02 = -1.880000000999999990...
# Step 2: m2 = 0.9 m1 + 0.1 g2 = [0.02, 0.11], v2 = 0.95 v1 + 0.05 g2^2 = [0.015, 0.2475];
#   m_hat = m2 / 0.19, v_hat = v2 / 0.0975,
#   theta2 = theta1 - 0.1 m_hat / (sqrt(v_hat) + 1e-8) - 0.01 theta1.
# Step 3: m3 = [0.118, 0.099], v3 = [0.06425, 0.235125]; m_hat = m3 / 0.271, v_hat = v3 / 0.142625.
# Evaluated with 50-digit decimal arithmetic:
G = [[0.5, -1.0], [-0.25, 2.0], [1.0, 0.0]]
EXPECTED_THETA = [
    [0.890000001999999960, -1.88000000099999999],
    [0.854263057855827391, -1.89753739580966311],
    [0.780845934896706667, -1.90701412174283956],
]
EXPECTED_M = [[0.05, -0.1], [0.02, 0.11], [0.118, 0.099]]
EXPECTED_V = [[0.0125, 0.05], [0.015, 0.2475], [0.06425, 0.235125]]
HAND = AdamWConfig(lr=0.1, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


def test_three_adamw_steps_match_hand_computation() -> None:
    params: dict[str, Array] = {"w.W": np.array([1.0, -2.0])}
    state = init_state(params)
    for t, (g, theta, m, v) in enumerate(zip(G, EXPECTED_THETA, EXPECTED_M, EXPECTED_V, strict=True), 1):
        params, state = step(params, {"w.W": np.array(g)}, state, HAND)
        assert state.t == t
        np.testing.assert_allclose(params["w.W"], theta, rtol=1e-12, atol=0)
        np.testing.assert_allclose(state.m["w.W"], m, rtol=1e-12, atol=0)
        np.testing.assert_allclose(state.v["w.W"], v, rtol=1e-12, atol=0)


def test_scheduled_lr_overrides_the_base_lr() -> None:
    params: dict[str, Array] = {"w.W": np.array([1.0, -2.0])}
    new, _ = step(
        params, {"w.W": np.array(G[0])}, init_state(params), AdamWConfig(lr=123.0, weight_decay=0.1), 0.1
    )
    np.testing.assert_allclose(new["w.W"], EXPECTED_THETA[0], rtol=1e-12, atol=0)


def test_eps_is_added_after_the_square_root() -> None:
    # With a large eps its placement is plain: one step from 0 with g = 1 moves by lr * 1 / (1 + eps).
    cfg = AdamWConfig(lr=0.3, eps=0.5, weight_decay=0.0)
    params: dict[str, Array] = {"b": np.zeros(1)}
    new, _ = step(params, {"b": np.ones(1)}, init_state(params), cfg)
    assert new["b"][0] == pytest.approx(-0.3 / 1.5, rel=1e-15)


def test_decay_is_decoupled_and_uses_the_old_parameter() -> None:
    # With a zero gradient Adam's term is exactly 0: only theta <- theta (1 - lr wd) remains,
    # whatever the gradient scale (coupled L2 decay would go through Adam's denominator).
    params: dict[str, Array] = {"block0.mlp.fc1.W": np.array([[2.0, -4.0]])}
    cfg = AdamWConfig(lr=0.5, weight_decay=0.1)
    new, state = step(params, {"block0.mlp.fc1.W": np.zeros((1, 2))}, init_state(params), cfg)
    np.testing.assert_array_equal(new["block0.mlp.fc1.W"], [[2.0 * 0.95, -4.0 * 0.95]])
    assert state.t == 1
    assert not state.m["block0.mlp.fc1.W"].any() and not state.v["block0.mlp.fc1.W"].any()


def test_zero_gradients_leave_exempt_parameters_exactly_unchanged() -> None:
    rng = np.random.default_rng(0)
    params = {name: rng.standard_normal(3) for name in ("lm_head.b", "ln_f.gamma", "ln_f.beta", "tok_emb.W")}
    state = init_state(params)
    for _ in range(3):
        params_next, state = step(params, {k: np.zeros(3) for k in params}, state, AdamWConfig(lr=1.0))
        for k in params:
            np.testing.assert_array_equal(params_next[k], params[k])
        params = params_next


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("block0.attn.q.W", True),
        ("block3.mlp.fc2.W", True),
        ("lm_head.W", True),
        ("W", True),
        ("tok_emb.W", False),
        ("pos_emb.W", False),
        ("block0.attn.q.b", False),
        ("lm_head.b", False),
        ("ln_f.gamma", False),
        ("block1.ln1.beta", False),
        ("b", False),
        ("block0.Wx", False),
    ],
)
def test_decay_rule(name: str, expected: bool) -> None:
    assert decays(name) is expected
    assert AdamWConfig().decays(name) is expected
    assert AdamWConfig(decay_all=True).decays(name) is True


def test_decay_all_decays_biases_and_embeddings() -> None:
    params = {"tok_emb.W": np.ones(2), "lm_head.b": np.ones(2)}
    zero = {k: np.zeros(2) for k in params}
    kept, _ = step(params, zero, init_state(params), AdamWConfig(lr=0.5, weight_decay=0.1))
    decayed, _ = step(params, zero, init_state(params), AdamWConfig(lr=0.5, weight_decay=0.1, decay_all=True))
    for k in params:
        np.testing.assert_array_equal(kept[k], [1.0, 1.0])
        np.testing.assert_array_equal(decayed[k], [0.95, 0.95])


def _model_like(dtype: type[np.floating[Any]], seed: int = 0) -> dict[str, Array]:
    rng = np.random.default_rng(seed)
    shapes = {"tok_emb.W": (5, 4), "block0.attn.q.W": (4, 4), "block0.attn.q.b": (4,), "ln_f.gamma": (4,)}
    return {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}


def test_step_never_mutates_its_inputs_and_returns_fresh_arrays() -> None:
    params = _model_like(np.float64)
    grads = _model_like(np.float64, seed=1)
    state = init_state(params)
    state = AdamWState(
        state.t + 2, {k: a + 0.1 for k, a in state.m.items()}, {k: a + 0.2 for k, a in state.v.items()}
    )
    before = copy.deepcopy((params, grads, state))
    new_params, new_state = step(params, grads, state, AdamWConfig())
    for original, kept in zip(
        (params, grads, state.m, state.v), (before[0], before[1], before[2].m, before[2].v), strict=True
    ):
        for k in original:
            np.testing.assert_array_equal(original[k], kept[k])
    assert state.t == 2
    for k in params:
        for new, old in (
            (new_params[k], params[k]),
            (new_state.m[k], state.m[k]),
            (new_state.v[k], state.v[k]),
        ):
            assert not np.shares_memory(new, old) and not np.shares_memory(new, grads[k])


def test_float32_stays_float32_and_agrees_with_float64() -> None:
    p32, g32 = _model_like(np.float32), _model_like(np.float32, seed=1)
    p64 = {k: v.astype(np.float64) for k, v in p32.items()}
    g64 = {k: v.astype(np.float64) for k, v in g32.items()}
    s32, s64 = init_state(p32), init_state(p64)
    for _ in range(3):
        p32, s32 = step(p32, g32, s32, AdamWConfig(lr=1e-2))
        p64, s64 = step(p64, g64, s64, AdamWConfig(lr=1e-2))
    for k in p32:
        assert p32[k].dtype == s32.m[k].dtype == s32.v[k].dtype == np.float32
        np.testing.assert_allclose(p32[k], p64[k], rtol=1e-5, atol=1e-6)


def test_init_state_is_zero_moments_like_the_params() -> None:
    params = _model_like(np.float32)
    state = init_state(params)
    assert state.t == 0
    for k, p in params.items():
        for moment in (state.m[k], state.v[k]):
            assert moment.shape == p.shape and moment.dtype == p.dtype and not moment.any()


def test_step_rejects_mismatched_inputs() -> None:
    params = _model_like(np.float64)
    state = init_state(params)
    grads = _model_like(np.float64, seed=1)
    with pytest.raises(ValueError, match=r"grads keys differ.*missing \['ln_f.gamma'\]"):
        step(params, {k: g for k, g in grads.items() if k != "ln_f.gamma"}, state, AdamWConfig())
    with pytest.raises(
        ValueError, match=r"grad of 'ln_f.gamma' is float32\(4,\), the parameter is float64\(4,\)"
    ):
        step(params, {**grads, "ln_f.gamma": grads["ln_f.gamma"].astype(np.float32)}, state, AdamWConfig())
    with pytest.raises(ValueError, match="m of 'ln_f.gamma'"):
        step(params, grads, AdamWState(0, {**state.m, "ln_f.gamma": np.zeros(5)}, state.v), AdamWConfig())
    with pytest.raises(ValueError, match="optimizer state v keys"):
        step(params, grads, AdamWState(0, state.m, {}), AdamWConfig())
    with pytest.raises(ValueError, match="lr must be"):
        step(params, grads, state, AdamWConfig(), lr=float("nan"))


@pytest.mark.parametrize(
    "kwargs",
    [{"beta1": 1.0}, {"beta2": -0.1}, {"lr": -1.0}, {"eps": float("inf")}, {"weight_decay": float("nan")}],
)
def test_config_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="adamw: "):
        AdamWConfig(**kwargs)  # type: ignore[arg-type]


def test_playbook_defaults() -> None:
    cfg = AdamWConfig()
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, cfg.decay_all) == (
        3e-4,
        0.9,
        0.95,
        1e-8,
        0.1,
        False,
    )


# ---------------------------------------------------------------- schedule

BASE, MIN, WARMUP, TOTAL = 1e-3, 1e-4, 10, 110


def test_schedule_key_points() -> None:
    assert lr_at(0, BASE, WARMUP, TOTAL, MIN) == pytest.approx(BASE / WARMUP, rel=1e-15)
    assert lr_at(4, BASE, WARMUP, TOTAL, MIN) == pytest.approx(BASE * 5 / WARMUP, rel=1e-15)
    assert lr_at(WARMUP - 1, BASE, WARMUP, TOTAL, MIN) == BASE
    assert lr_at(WARMUP, BASE, WARMUP, TOTAL, MIN) == BASE
    assert lr_at(60, BASE, WARMUP, TOTAL, MIN) == pytest.approx((BASE + MIN) / 2, rel=1e-15)  # halfway
    assert lr_at(35, BASE, WARMUP, TOTAL, MIN) == pytest.approx(
        MIN + (BASE - MIN) * (1 + math.cos(math.pi / 4)) / 2, rel=1e-15
    )
    assert lr_at(TOTAL, BASE, WARMUP, TOTAL, MIN) == MIN
    assert lr_at(TOTAL + 1000, BASE, WARMUP, TOTAL, MIN) == MIN


def test_schedule_rises_then_falls_monotonically() -> None:
    lrs = [lr_at(s, BASE, WARMUP, TOTAL, MIN) for s in range(TOTAL + 5)]
    warm, decay = lrs[:WARMUP], lrs[WARMUP:]
    assert all(a < b for a, b in zip(warm, warm[1:], strict=False))
    assert all(a > b for a, b in zip(decay[: TOTAL - WARMUP], decay[1 : TOTAL - WARMUP + 1], strict=True))
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert max(lrs) == BASE and min(lrs) == pytest.approx(BASE / WARMUP)


def test_schedule_without_warmup_or_decay() -> None:
    assert lr_at(0, BASE, 0, TOTAL, MIN) == BASE
    assert lr_at(0, BASE, 0, TOTAL, BASE) == BASE  # min_lr == base_lr: constant
    assert lr_at(50, BASE, 0, TOTAL, BASE) == BASE
    assert lr_at(5, BASE, 10, 5, MIN) == BASE * 6 / 10  # total <= warmup: warmup, then the floor
    assert lr_at(10, BASE, 10, 5, MIN) == MIN


@pytest.mark.parametrize(
    "args",
    [
        (-1, BASE, 1, 10, MIN),
        (0, BASE, -1, 10, MIN),
        (0, BASE, 1, -1, MIN),
        (0, BASE, 1, 10, 2 * BASE),
        (0, BASE, 1, 10, -MIN),
        (0, float("inf"), 1, 10, MIN),
    ],
)
def test_schedule_rejects_bad_arguments(args: tuple[int, float, int, int, float]) -> None:
    with pytest.raises(ValueError, match="lr schedule"):
        lr_at(*args)


# ---------------------------------------------------------------- clipping


def test_clipping_scales_to_max_norm_and_keeps_direction() -> None:
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0], [4.0]])}  # global norm 5
    before = copy.deepcopy(grads)
    clipped, norm = clip_by_global_norm(grads, 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-15)
    np.testing.assert_allclose(clipped["b"], [[0.0], [0.8]], rtol=1e-15)
    assert global_norm(clipped) == pytest.approx(1.0, rel=1e-15)
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])


def test_no_clipping_below_the_threshold_or_when_disabled() -> None:
    grads = {"a": np.array([3.0, 4.0])}
    for max_norm in (5.0, 10.0, 0.0, -1.0, None):
        clipped, norm = clip_by_global_norm(grads, max_norm)
        assert norm == 5.0
        assert clipped["a"] is grads["a"]


def test_zero_gradients_are_not_clipped() -> None:
    clipped, norm = clip_by_global_norm({"a": np.zeros(3)}, 1.0)
    assert norm == 0.0
    np.testing.assert_array_equal(clipped["a"], np.zeros(3))


def test_non_finite_norm_is_reported_not_clipped() -> None:
    grads = {"a": np.array([np.inf, 1.0])}
    clipped, norm = clip_by_global_norm(grads, 1.0)
    assert math.isinf(norm) and clipped["a"] is grads["a"]


def test_clipping_preserves_float32() -> None:
    grads = {"a": np.full(4, 10.0, dtype=np.float32), "b": np.ones((2, 2), dtype=np.float32)}
    clipped, norm = clip_by_global_norm(grads, 2.0)
    assert norm == pytest.approx(math.sqrt(404.0), rel=1e-6)
    assert all(g.dtype == np.float32 for g in clipped.values())
    assert global_norm(clipped) == pytest.approx(2.0, rel=1e-6)
