"""Mathematical properties of the foundation pairs, and their error messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bevialm import losses
from bevialm.layers import embedding, gelu, layernorm, linear, relu, softmax
from bevialm.types import Array

seeds = st.integers(0, 2**32 - 1)
shapes = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(2, 9))


@given(seeds, shapes)
def test_softmax_rows_sum_to_one_and_are_shift_invariant(seed: int, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 5
    y, _ = softmax.forward({}, x, softmax.SoftmaxConfig())
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-12)
    assert np.all(y > 0)
    shift = rng.standard_normal((*shape[:-1], 1)) * 100
    np.testing.assert_allclose(softmax.forward({}, x + shift, softmax.SoftmaxConfig())[0], y, atol=1e-12)


def test_softmax_is_stable_for_huge_logits() -> None:
    y = softmax.softmax(np.array([[1000.0, 1000.0], [-1000.0, 0.0]]))
    np.testing.assert_allclose(y, [[0.5, 0.5], [0.0, 1.0]])


@given(seeds, shapes, st.floats(0.1, 50.0))
def test_layernorm_ignores_row_shift_and_positive_scale(seed: int, shape: tuple[int, int, int], scale: float) -> None:
    # Exactly: LN(s x + c) with eps equals LN(x) with eps / s^2, so compare those two.
    rng = np.random.default_rng(seed)
    params = {"gamma": rng.standard_normal(shape[-1]), "beta": rng.standard_normal(shape[-1])}
    x = rng.standard_normal(shape)
    shift = rng.standard_normal((*shape[:-1], 1)) * 10
    y, _ = layernorm.forward(params, x, layernorm.LayerNormConfig(shape[-1], eps=1e-5 / scale**2))
    y2, _ = layernorm.forward(params, scale * x + shift, layernorm.LayerNormConfig(shape[-1], eps=1e-5))
    np.testing.assert_allclose(y2, y, rtol=1e-7, atol=1e-7)


def test_layernorm_at_init_gives_zero_mean_unit_variance() -> None:
    cfg = layernorm.LayerNormConfig(16)
    params = layernorm.init(cfg, np.random.default_rng(0), np.float64)
    assert np.all(params["gamma"] == 1) and np.all(params["beta"] == 0)
    x = np.random.default_rng(1).standard_normal((3, 16)) * 4 + 2
    y, _ = layernorm.forward(params, x, cfg)
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), 1, rtol=1e-4)


@pytest.mark.parametrize("vocab", [2, 5, 65])
def test_cross_entropy_of_uniform_logits_is_log_vocab(vocab: int) -> None:
    logits = np.full((2, 3, vocab), 0.7)
    targets = np.random.default_rng(0).integers(0, vocab, size=(2, 3))
    loss, _ = losses.cross_entropy(logits, targets)
    assert loss.shape == ()
    assert math.isclose(float(loss), math.log(vocab), rel_tol=1e-12)


def test_cross_entropy_gradient_is_probs_minus_onehot_over_n() -> None:
    logits = np.array([[[2.0, 0.0, -1.0]]])
    loss, cache = losses.cross_entropy(logits, np.array([[0]]))
    d = losses.cross_entropy_backward(cache)
    p = softmax.softmax(logits)
    np.testing.assert_allclose(d, p - np.array([[[1.0, 0, 0]]]))
    assert math.isclose(float(loss), -math.log(p[0, 0, 0]))


def test_cross_entropy_is_finite_for_confident_wrong_predictions() -> None:
    loss, _ = losses.cross_entropy(np.array([[[1000.0, -1000.0]]], dtype=np.float32), np.array([[1]]))
    assert loss.dtype == np.float32 and math.isclose(float(loss), 2000.0, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("logits", "targets", "message"),
    [
        (np.zeros((2, 3)), np.zeros(3, dtype=np.int64), r"targets must have shape \(2,\)"),
        (np.zeros((2, 3)), np.array([0, 3]), r"\[0, 3\)"),
        (np.zeros((2, 3)), np.zeros(2), "integer"),
        (np.zeros((0, 3)), np.zeros(0, dtype=np.int64), "no tokens"),
        (np.zeros((2, 3), dtype=np.int64), np.zeros(2, dtype=np.int64), "floating"),
    ],
)
def test_cross_entropy_rejects_bad_input(logits: Array, targets: Array, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        losses.cross_entropy(logits, targets)


@given(seeds)
def test_embedding_backward_sums_repeated_indices(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cfg = embedding.EmbeddingConfig(4, 3)
    params = embedding.init(cfg, rng, np.float64)
    idx = rng.integers(0, 4, size=(3, 7))
    y, cache = embedding.forward(params, idx, cfg)
    np.testing.assert_array_equal(y, params["W"][idx])
    dy = rng.standard_normal(y.shape)
    _, grads = embedding.backward(params, cache, dy)
    expected = np.zeros((4, 3))
    np.add.at(expected, idx, dy)  # the playbook's reference formulation
    np.testing.assert_allclose(grads["W"], expected, atol=1e-12)


def test_embedding_rejects_bad_indices() -> None:
    cfg = embedding.EmbeddingConfig(4, 3)
    params = embedding.init(cfg, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\[0, 4\).*from 0 to 4"):
        embedding.forward(params, np.array([0, 4]), cfg)
    with pytest.raises(ValueError, match="integer array"):
        embedding.forward(params, np.array([0.0, 1.0]), cfg)
    with pytest.raises(ValueError, match=r"W has shape \(4, 3\), expected \(5, 3\)"):
        embedding.forward(params, np.array([0]), embedding.EmbeddingConfig(5, 3))


def test_embedding_of_no_indices_gives_zero_gradient() -> None:
    cfg = embedding.EmbeddingConfig(4, 3)
    params = embedding.init(cfg, np.random.default_rng(0))
    y, cache = embedding.forward(params, np.zeros((0,), dtype=np.int64), cfg)
    _, grads = embedding.backward(params, cache, y)
    assert y.shape == (0, 3) and not grads["W"].any()


def test_linear_rejects_mismatched_shapes_and_dtypes() -> None:
    cfg = linear.LinearConfig(3, 2)
    params = linear.init(cfg, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"x has shape \(5, 4\), expected \(\.\.\., 3\)"):
        linear.forward(params, np.zeros((5, 4), dtype=np.float32), cfg)
    with pytest.raises(ValueError, match="dtype float64 does not match parameter dtype float32"):
        linear.forward(params, np.zeros((5, 3)), cfg)
    with pytest.raises(ValueError, match=r"W has shape \(3, 2\), expected \(4, 2\)"):
        linear.forward(params, np.zeros((5, 4), dtype=np.float32), linear.LinearConfig(4, 2))
    with pytest.raises(ValueError, match="floating-point"):
        linear.forward(params, np.zeros((5, 3), dtype=np.int64), cfg)
    with pytest.raises(ValueError, match="floating-point array, got list"):
        linear.forward(params, [1.0, 2.0, 3.0], cfg)  # type: ignore[arg-type]


def test_linear_handles_many_leading_dimensions() -> None:
    cfg = linear.LinearConfig(3, 2)
    params = linear.init(cfg, np.random.default_rng(0), np.float64)
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 3))
    y, _ = linear.forward(params, x, cfg)
    np.testing.assert_allclose(y, np.einsum("abci,ij->abcj", x, params["W"]) + params["b"])


def test_layernorm_rejects_wrong_width() -> None:
    cfg = layernorm.LayerNormConfig(4)
    params = layernorm.init(cfg, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"layernorm: x has shape \(2, 5\), expected \(\.\.\., 4\)"):
        layernorm.forward(params, np.zeros((2, 5), dtype=np.float32), cfg)


@pytest.mark.parametrize(
    "make",
    [
        lambda: linear.LinearConfig(0, 3),
        lambda: linear.LinearConfig(2, -1),
        lambda: layernorm.LayerNormConfig(4, eps=0.0),
        lambda: embedding.EmbeddingConfig(3, 0),
        lambda: linear.LinearConfig(True, 2),
    ],
)
def test_configs_reject_bad_sizes(make: object) -> None:
    with pytest.raises(ValueError, match="must be"):
        make()  # type: ignore[operator]


def test_relu_and_gelu_values() -> None:
    x = np.array([-2.0, -0.5, 0.5, 2.0])
    np.testing.assert_array_equal(relu.forward({}, x, relu.ReluConfig())[0], [0, 0, 0.5, 2.0])
    y, _ = gelu.forward({}, x, gelu.GeluConfig())
    # Reference values of the tanh approximation (GPT-2's gelu), computed independently.
    k = math.sqrt(2 / math.pi)
    expected = [0.5 * v * (1 + math.tanh(k * (v + 0.044715 * v**3))) for v in x]
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    assert y[0] < 0 and y[-1] > 1.9  # GELU dips below zero and approaches the identity
