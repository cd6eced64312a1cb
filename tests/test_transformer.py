"""Properties of the transformer pairs beyond finite differences (those run for every pair
from the registry in test_pairs.py): attention against direct formulas, causality, head
independence, the key/value-cache helpers; dropout's mask; the MLP and the block."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bevialm.gradcheck import away_from_init, kink_distance
from bevialm.layers import attention, block, dropout, gelu, layernorm, mlp
from bevialm.params import scope
from bevialm.types import Array, Params

# --- direct formulas, written out independently of the pairs ---------------------------------


def direct_softmax(s: Array) -> Array:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    probs: Array = e / e.sum(axis=-1, keepdims=True)
    return probs


def direct_single_head(params: Params, x: Array) -> Array:
    """The playbook's single head, one sequence at a time: softmax(mask(q k^T / sqrt(C))) v, projected."""
    out = []
    for seq in x:  # (T, C)
        t, c = seq.shape
        q = seq @ params["q.W"] + params["q.b"]
        k = seq @ params["k.W"] + params["k.b"]
        v = seq @ params["v.W"] + params["v.b"]
        scores = q @ k.T / math.sqrt(c)
        scores = np.where(np.tril(np.ones((t, t))) == 1, scores, -np.inf)
        out.append(direct_softmax(scores) @ v @ params["proj.W"] + params["proj.b"])
    return np.stack(out)


def direct_multi_head(params: Params, x: Array, n_heads: int) -> Array:
    """Each head on its own slice of the q, k, v features, outputs concatenated, then projected."""
    b, t, c = x.shape
    hd = c // n_heads
    q = x @ params["q.W"] + params["q.b"]
    k = x @ params["k.W"] + params["k.b"]
    v = x @ params["v.W"] + params["v.b"]
    heads = []
    for h in range(n_heads):
        sl = slice(h * hd, (h + 1) * hd)
        scores = q[:, :, sl] @ k[:, :, sl].transpose(0, 2, 1) / math.sqrt(hd)
        scores = np.where(np.tril(np.ones((t, t))) == 1, scores, -np.inf)
        heads.append(direct_softmax(scores) @ v[:, :, sl])
    return np.concatenate(heads, axis=-1) @ params["proj.W"] + params["proj.b"]


def attention_point(cfg: attention.AttentionConfig, shape: tuple[int, ...], seed: int) -> tuple[Params, Array]:
    rng = np.random.default_rng(seed)
    return away_from_init(attention.init(cfg, rng), rng), rng.standard_normal(shape)


# --- attention ---------------------------------------------------------------------------------


def test_attention_config_is_validated() -> None:
    with pytest.raises(ValueError, match=r"attention: n_heads \(3\) must divide dim \(8\)"):
        attention.AttentionConfig(8, 3, 4)
    for bad in ({"dim": 0}, {"n_heads": 0}, {"ctx": -1}):
        with pytest.raises(ValueError, match="attention: .* must be a positive integer"):
            attention.AttentionConfig(**{"dim": 4, "n_heads": 2, "ctx": 4, **bad})
    assert attention.AttentionConfig(8, 4, 4).head_dim == 2


def test_attention_init_names_shapes_and_values() -> None:
    cfg = attention.AttentionConfig(6, 2, 4)
    params = attention.init(cfg, np.random.default_rng(0))
    assert sorted(params) == sorted(f"{p}.{w}" for p in ("q", "k", "v", "proj") for w in "Wb")
    for p in ("q", "k", "v", "proj"):
        assert params[f"{p}.W"].shape == (6, 6) and params[f"{p}.W"].dtype == np.float32
        assert np.all(params[f"{p}.b"] == 0)


@pytest.mark.parametrize(("batch", "length", "ctx"), [(1, 1, 1), (2, 4, 4), (3, 3, 6)])
def test_one_head_equals_the_direct_single_head_formula(batch: int, length: int, ctx: int) -> None:
    cfg = attention.AttentionConfig(5, 1, ctx)
    params, x = attention_point(cfg, (batch, length, 5), seed=length)
    y, _ = attention.forward(params, x, cfg)
    np.testing.assert_allclose(y, direct_single_head(params, x), rtol=1e-12, atol=1e-12)


@given(
    n_heads=st.sampled_from([1, 2, 4]),
    head_dim=st.integers(1, 3),
    batch=st.integers(1, 3),
    length=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_heads_equal_the_direct_multi_head_formula(n_heads: int, head_dim: int, batch: int, length: int, seed: int) -> None:
    cfg = attention.AttentionConfig(n_heads * head_dim, n_heads, ctx=6)
    params, x = attention_point(cfg, (batch, length, cfg.dim), seed)
    y, cache = attention.forward(params, x, cfg)
    np.testing.assert_allclose(y, direct_multi_head(params, x, n_heads), rtol=1e-10, atol=1e-12)
    assert cache.weights.shape == (batch, n_heads, length, length)
    assert cache.head_outputs.shape == (batch, n_heads, length, head_dim)


def test_attention_weights_are_causal_distributions() -> None:
    cfg = attention.AttentionConfig(8, 2, 6)
    params, x = attention_point(cfg, (2, 5, 8), seed=1)
    _, cache = attention.forward(params, x, cfg)
    w = cache.weights
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=1e-12)
    assert np.all(w[..., np.triu_indices(5, k=1)[0], np.triu_indices(5, k=1)[1]] == 0)
    assert np.all(w[..., 0, 0] == 1)  # the first position sees only itself
    assert w is cache.core.weights


def test_attention_is_exactly_causal() -> None:
    cfg = attention.AttentionConfig(4, 2, 5)
    params, x = attention_point(cfg, (2, 5, 4), seed=2)
    y, _ = attention.forward(params, x, cfg)
    rng = np.random.default_rng(3)
    for t in range(4):
        changed = x.copy()
        changed[:, t + 1 :] = rng.standard_normal(changed[:, t + 1 :].shape)
        y2, _ = attention.forward(params, changed, cfg)
        assert np.array_equal(y2[:, : t + 1], y[:, : t + 1])
        assert not np.allclose(y2[:, t + 1 :], y[:, t + 1 :])


@pytest.mark.parametrize("head", [0, 1, 3])
def test_heads_are_independent(head: int) -> None:
    """Perturbing one head's columns of q.W changes that head's weights and output only."""
    cfg = attention.AttentionConfig(8, 4, 4)
    params, x = attention_point(cfg, (2, 4, 8), seed=4)
    _, cache = attention.forward(params, x, cfg)
    qw = params["q.W"].copy()
    hd = cfg.head_dim
    qw[:, head * hd : (head + 1) * hd] += np.random.default_rng(5).standard_normal((8, hd))
    _, cache2 = attention.forward({**params, "q.W": qw}, x, cfg)
    others = [h for h in range(4) if h != head]
    assert np.array_equal(cache2.weights[:, others], cache.weights[:, others])
    assert np.array_equal(cache2.head_outputs[:, others], cache.head_outputs[:, others])
    assert not np.allclose(cache2.weights[:, head], cache.weights[:, head])
    assert not np.allclose(cache2.head_outputs[:, head], cache.head_outputs[:, head])


def test_split_and_merge_heads_are_inverse_and_slice_features() -> None:
    x = np.arange(2 * 3 * 8, dtype=np.float64).reshape(2, 3, 8)
    h = attention.split_heads(x, 4)
    assert h.shape == (2, 4, 3, 2)
    assert np.array_equal(h[1, 2, 0], x[1, 0, 4:6])  # head 2 owns features 4 and 5
    assert np.array_equal(attention.merge_heads(h), x)


def test_causal_mask_handles_queries_at_the_end_of_the_keys() -> None:
    assert np.array_equal(attention.causal_mask(3, 3), np.triu(np.ones((3, 3), bool), 1))
    assert not attention.causal_mask(1, 4).any()  # one new token sees every cached key
    assert np.array_equal(attention.causal_mask(2, 4), [[False, False, False, True], [False] * 4])
    with pytest.raises(ValueError, match="queries"):
        attention.causal_mask(3, 2)
    with pytest.raises(ValueError):
        attention.causal_mask(2, 2)[0, 0] = True  # memoised masks are read-only


def test_helpers_run_an_incremental_key_value_cache_decoder() -> None:
    """One token at a time, with keys and values appended to a cache, through the public helpers,
    gives the same outputs as the full forward pass: the helpers are enough for generation."""
    cfg = attention.AttentionConfig(6, 2, 5)
    params, x = attention_point(cfg, (2, 5, 6), seed=6)
    y_full, _ = attention.forward(params, x, cfg)
    keys = np.zeros((2, 2, 0, 3))
    values = np.zeros((2, 2, 0, 3))
    for t in range(5):
        step = x[:, t : t + 1]
        q = attention.split_heads(attention.project(params, "q", step, cfg)[0], 2)
        keys = np.concatenate([keys, attention.split_heads(attention.project(params, "k", step, cfg)[0], 2)], axis=2)
        values = np.concatenate([values, attention.split_heads(attention.project(params, "v", step, cfg)[0], 2)], axis=2)
        out, _ = attention.attend(q, keys, values)
        y_t, _ = attention.project(params, "proj", attention.merge_heads(out), cfg)
        np.testing.assert_allclose(y_t[:, 0], y_full[:, t], rtol=1e-12, atol=1e-13)


def test_attend_backward_with_a_key_value_offset_matches_finite_differences() -> None:
    """The core's backward for queries at the end of a longer key sequence (used by nobody in
    training, but the helper is public): central differences on q, k and v."""
    rng = np.random.default_rng(7)
    q, k, v = rng.standard_normal((1, 2, 2, 3)), rng.standard_normal((1, 2, 4, 3)), rng.standard_normal((1, 2, 4, 3))
    dout = rng.standard_normal((1, 2, 2, 3))
    _, core = attention.attend(q, k, v)
    grads = attention.attend_backward(core, dout)
    h = 1e-6
    for which, arr in enumerate((q, k, v)):
        numeric = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            args = [q, k, v]
            plus, minus = arr.copy(), arr.copy()
            plus[i] += h
            minus[i] -= h
            args[which] = plus
            f_plus = np.sum(attention.attend(*args)[0] * dout)
            args[which] = minus
            f_minus = np.sum(attention.attend(*args)[0] * dout)
            numeric[i] = (f_plus - f_minus) / (2 * h)
        np.testing.assert_allclose(grads[which], numeric, rtol=1e-6, atol=1e-8)


def test_attention_rejects_bad_input() -> None:
    cfg = attention.AttentionConfig(4, 2, 3)
    params = attention.init(cfg, np.random.default_rng(0), np.float64)
    with pytest.raises(ValueError, match=r"attention: x has shape \(1, 4, 4\).*ctx = 3"):
        attention.forward(params, np.zeros((1, 4, 4)), cfg)
    with pytest.raises(ValueError, match=r"attention: x has shape \(3, 4\)"):
        attention.forward(params, np.zeros((3, 4)), cfg)
    with pytest.raises(ValueError, match=r"attention: x has shape \(1, 2, 5\)"):
        attention.forward(params, np.zeros((1, 2, 5)), cfg)
    with pytest.raises(ValueError, match="floating-point"):
        attention.forward(params, np.zeros((1, 2, 4), dtype=np.int64), cfg)
    with pytest.raises(ValueError, match="attend needs"):
        attention.attend(np.zeros((1, 2, 3, 2)), np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 3)))
    _, cache = attention.forward(params, np.zeros((1, 2, 4)), cfg)
    with pytest.raises(ValueError, match="attention: dy"):
        attention.backward(params, cache, np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="attention: dout"):
        attention.attend_backward(cache.core, np.zeros((1, 2, 2, 3)))


# --- dropout -----------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, math.nan, "0.5", True])
def test_dropout_rate_is_validated(p: Any) -> None:
    with pytest.raises(ValueError, match=r"dropout: p must be a probability in \[0, 1\)"):
        dropout.DropoutConfig(p)


@pytest.mark.parametrize("p", [0, 0.5, np.float32(0.25), np.float64(0.999)])
def test_dropout_accepts_any_real_probability(p: Any) -> None:
    assert dropout.DropoutConfig(p).p == p


def test_dropout_is_the_identity_in_evaluation_and_at_p_zero() -> None:
    x = np.random.default_rng(0).standard_normal((3, 4))
    y, cache = dropout.forward({}, x, dropout.DropoutConfig(0.5))  # rng=None: evaluation
    assert y is x and cache.mask is None  # the identity shares its input: no copy
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    y, cache = dropout.forward({}, x, dropout.DropoutConfig(0.0), rng=rng)
    assert np.array_equal(y, x) and cache.mask is None
    assert rng.bit_generator.state == state  # nothing drawn
    dy = np.ones_like(x)
    dx, grads = dropout.backward({}, cache, dy)
    assert np.array_equal(dx, dy) and grads == {}


def test_dropout_is_inverted_and_drops_about_p() -> None:
    p = 0.3
    x = np.ones((200, 500), dtype=np.float32)
    y, cache = dropout.forward({}, x, dropout.DropoutConfig(p), rng=np.random.default_rng(0))
    assert y.dtype == np.float32 and cache.mask is not None and cache.mask.dtype == np.float32
    assert set(np.unique(y).tolist()) == {0.0, np.float32(1 / (1 - p))}
    assert abs(np.mean(y == 0) - p) < 0.01
    assert abs(float(y.mean()) - 1.0) < 0.01  # the expected activation is unchanged
    dx, _ = dropout.backward({}, cache, np.full_like(x, 2.0))
    assert np.array_equal(dx, 2 * cache.mask)


def test_dropout_mask_depends_only_on_the_seed() -> None:
    x = np.random.default_rng(0).standard_normal((4, 6))
    cfg = dropout.DropoutConfig(0.5)
    y64, _ = dropout.forward({}, x, cfg, rng=np.random.default_rng(9))
    y64b, _ = dropout.forward({}, x, cfg, rng=np.random.default_rng(9))
    y32, _ = dropout.forward({}, x.astype(np.float32), cfg, rng=np.random.default_rng(9))
    assert np.array_equal(y64, y64b)
    assert np.array_equal(y64 == 0, y32 == 0)  # same entries dropped in either dtype
    y_other, _ = dropout.forward({}, x, cfg, rng=np.random.default_rng(10))
    assert not np.array_equal(y64, y_other)


def test_dropout_rejects_a_bad_rng() -> None:
    with pytest.raises(ValueError, match="dropout: rng must be a numpy.random.Generator"):
        dropout.forward({}, np.zeros(3), dropout.DropoutConfig(0.5), rng=42)  # type: ignore[arg-type]


# --- MLP ---------------------------------------------------------------------------------------


def test_mlp_config_is_validated() -> None:
    with pytest.raises(ValueError, match="mlp: activation must be one of"):
        mlp.MLPConfig(4, 8, "tanh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mlp: hidden must be a positive integer"):
        mlp.MLPConfig(4, 0)
    with pytest.raises(ValueError, match="dropout: p must be"):
        mlp.MLPConfig(4, 8, dropout=1.0)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_mlp_equals_the_direct_formula(activation: mlp.Activation) -> None:
    cfg = mlp.MLPConfig(3, 7, activation)
    rng = np.random.default_rng(0)
    params = away_from_init(mlp.init(cfg, rng), rng)
    x = rng.standard_normal((2, 4, 3))
    h = x @ params["fc1.W"] + params["fc1.b"]
    if activation == "relu":
        a = np.maximum(h, 0)
    else:
        a = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    y, cache = mlp.forward(params, x, cfg)
    np.testing.assert_allclose(y, a @ params["fc2.W"] + params["fc2.b"], rtol=1e-12, atol=1e-13)
    assert sorted(params) == ["fc1.W", "fc1.b", "fc2.W", "fc2.b"]
    assert params["fc1.W"].shape == (3, 7) and params["fc2.W"].shape == (7, 3)
    # The ReLU cache is reachable for the kink guard; GELU has no kink.
    assert (kink_distance(cache) < math.inf) == (activation == "relu")
    assert isinstance(cache.act, gelu.GeluCache) == (activation == "gelu")


def test_mlp_dropout_is_off_in_evaluation() -> None:
    cfg, plain = mlp.MLPConfig(4, 6, dropout=0.5), mlp.MLPConfig(4, 6)
    rng = np.random.default_rng(0)
    params = away_from_init(mlp.init(cfg, rng), rng)
    x = rng.standard_normal((2, 3, 4))
    y_eval, _ = mlp.forward(params, x, cfg)
    assert np.array_equal(y_eval, mlp.forward(params, x, plain)[0])
    y_train, cache = mlp.forward(params, x, cfg, rng=np.random.default_rng(1))
    assert cache.drop.mask is not None
    np.testing.assert_allclose(y_train, y_eval * cache.drop.mask, rtol=1e-12)


def test_mlp_rejects_bad_input() -> None:
    cfg = mlp.MLPConfig(4, 6)
    params = mlp.init(cfg, np.random.default_rng(0), np.float64)
    with pytest.raises(ValueError, match=r"mlp: x has shape \(2, 5\)"):
        mlp.forward(params, np.zeros((2, 5)), cfg)
    _, cache = mlp.forward(params, np.zeros((2, 4)), cfg)
    with pytest.raises(ValueError, match=r"mlp: dy has shape \(3, 4\)"):
        mlp.backward(params, cache, np.zeros((3, 4)))


# --- block -------------------------------------------------------------------------------------


def block_point(cfg: block.BlockConfig, shape: tuple[int, ...], seed: int) -> tuple[Params, Array]:
    rng = np.random.default_rng(seed)
    return away_from_init(block.init(cfg, rng), rng), rng.standard_normal(shape)


def test_block_config_is_validated() -> None:
    with pytest.raises(ValueError, match=r"n_heads \(3\) must divide dim \(8\)"):
        block.BlockConfig(8, 3, 4, 16)
    with pytest.raises(ValueError, match="activation must be one of"):
        block.BlockConfig(8, 2, 4, 16, "swish")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="p must be a probability"):
        block.BlockConfig(8, 2, 4, 16, dropout=-0.5)
    with pytest.raises(ValueError, match="eps must be positive"):
        block.BlockConfig(8, 2, 4, 16, ln_eps=0.0)
    with pytest.raises(ValueError, match="mlp_hidden|hidden"):
        block.BlockConfig(8, 2, 4, 0)


def test_block_param_names() -> None:
    params = block.init(block.BlockConfig(4, 2, 3, 8), np.random.default_rng(0))
    expected = {"ln1.gamma", "ln1.beta", "ln2.gamma", "ln2.beta", "mlp.fc1.W", "mlp.fc1.b", "mlp.fc2.W", "mlp.fc2.b"}
    expected |= {f"attn.{p}.{w}" for p in ("q", "k", "v", "proj") for w in "Wb"}
    assert set(params) == expected
    assert np.all(params["ln1.gamma"] == 1) and np.all(params["ln2.beta"] == 0)


def test_block_is_pre_norm_with_residuals() -> None:
    cfg = block.BlockConfig(4, 2, 5, 6, "gelu")
    params, x = block_point(cfg, (2, 5, 4), seed=1)
    y, _ = block.forward(params, x, cfg)
    a = attention.forward(scope(params, "attn."), layernorm.forward(scope(params, "ln1."), x, cfg.ln1)[0], cfg.attn)[0]
    h = x + a
    m = mlp.forward(scope(params, "mlp."), layernorm.forward(scope(params, "ln2."), h, cfg.ln2)[0], cfg.mlp)[0]
    np.testing.assert_allclose(y, h + m, rtol=1e-13, atol=1e-13)


def test_residual_carries_the_gradient_when_branches_are_silent() -> None:
    """With both branch outputs zeroed the block is the identity and dx is exactly dy."""
    cfg = block.BlockConfig(4, 2, 5, 6)
    params, x = block_point(cfg, (2, 5, 4), seed=2)
    silent = {**params, **{k: np.zeros_like(params[k]) for k in ("attn.proj.W", "attn.proj.b", "mlp.fc2.W", "mlp.fc2.b")}}
    y, cache = block.forward(silent, x, cfg)
    assert np.array_equal(y, x)
    dy = np.random.default_rng(3).standard_normal(y.shape)
    dx, _ = block.backward(silent, cache, dy)
    assert np.array_equal(dx, dy)


def test_block_dropout_uses_the_explicit_rng_only() -> None:
    cfg = block.BlockConfig(4, 2, 5, 6, dropout=0.3)
    params, x = block_point(cfg, (2, 5, 4), seed=4)
    y_eval, cache = block.forward(params, x, cfg)
    assert cache.attn_drop.mask is None and cache.mlp.drop.mask is None
    assert np.array_equal(y_eval, block.forward(params, x, block.BlockConfig(4, 2, 5, 6))[0])
    y1, c1 = block.forward(params, x, cfg, rng=np.random.default_rng(5))
    y2, _ = block.forward(params, x, cfg, rng=np.random.default_rng(5))
    assert c1.attn_drop.mask is not None and c1.mlp.drop.mask is not None
    assert np.array_equal(y1, y2) and not np.allclose(y1, y_eval)
    with pytest.raises(ValueError, match="block: rng must be"):
        block.forward(params, x, cfg, rng=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_kink_guard_reaches_the_relu_inside_a_block(activation: mlp.Activation) -> None:
    cfg = block.BlockConfig(4, 2, 5, 6, activation)
    params, x = block_point(cfg, (1, 3, 4), seed=6)
    _, cache = block.forward(params, x, cfg)
    distance = kink_distance(cache)
    if activation == "relu":
        assert distance == float(np.min(np.abs(cache.mlp.act.x))) > 0
    else:
        assert distance == math.inf


def test_block_rejects_bad_input() -> None:
    cfg = block.BlockConfig(4, 2, 3, 6)
    params = block.init(cfg, np.random.default_rng(0), np.float64)
    with pytest.raises(ValueError, match=r"block: x has shape \(1, 2, 3\)"):
        block.forward(params, np.zeros((1, 2, 3)), cfg)
    with pytest.raises(ValueError, match="ctx = 3"):
        block.forward(params, np.zeros((1, 4, 4)), cfg)
    _, cache = block.forward(params, np.zeros((1, 2, 4)), cfg)
    with pytest.raises(ValueError, match=r"block: dy has shape \(2, 2, 4\)"):
        block.backward(params, cache, np.zeros((2, 2, 4)))
