"""The whole model: gradients (directional and element-wise), causality, parameter names and
count, initial loss, memorisation, dropout, the layer set, and bad configs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from bevialm import model
from bevialm.gradcheck import (
    DEFAULT,
    away_from_init,
    directional_check,
    kink_distance,
    purity_problems,
    vjp_check,
)
from bevialm.model import ModelConfig
from bevialm.types import Array, Grads, IntArray, Params


def tiny(**overrides: Any) -> ModelConfig:
    fields: dict[str, Any] = {"vocab_size": 5, "ctx": 5, "dim": 8, "n_layers": 1, "n_heads": 2, "mlp_hidden": 8}
    return ModelConfig(**{**fields, **overrides})


def fixed_rng(seed: int | None) -> Callable[[], np.random.Generator | None]:
    """A fresh generator per call, so every forward pass draws the same dropout masks."""
    return lambda: None if seed is None else np.random.default_rng(seed)


def check_point(
    cfg: ModelConfig, seed: int, shape: tuple[int, int] = (2, 5), dropout_seed: int | None = None
) -> tuple[dict[str, Array], IntArray, IntArray]:
    """Float64 params moved away from init, tokens and targets, with every ReLU input at
    least ``kink_margin`` from its kink (redrawn otherwise, so the checks cannot flake)."""
    for attempt in range(20):
        rng = np.random.default_rng([seed, attempt])
        params = away_from_init(model.init_params(cfg, rng, np.float64), rng, scale=0.5)
        idx = rng.integers(0, cfg.vocab_size, size=shape)
        targets = rng.integers(0, cfg.vocab_size, size=shape)
        _, cache = model.forward(params, idx, cfg, rng=fixed_rng(dropout_seed)())
        if kink_distance(cache) >= DEFAULT.kink_margin:
            return params, idx, targets
    raise AssertionError("no point away from kinks")  # pragma: no cover


# --- gradients ---------------------------------------------------------------------------------

DIRECTIONAL = [
    pytest.param(tiny(n_layers=1, n_heads=1), (2, 5), None, id="1-layer-1-head-relu"),
    pytest.param(tiny(n_layers=2, n_heads=2, activation="gelu"), (2, 4), None, id="2-layers-2-heads-gelu-short"),
    pytest.param(tiny(n_layers=3, n_heads=4), (1, 5), None, id="3-layers-4-heads-relu"),
    pytest.param(tiny(n_layers=2, n_heads=4, activation="gelu", dropout=0.2), (2, 5), 11, id="gelu-dropout"),
    pytest.param(tiny(n_layers=2, n_heads=2, dropout=0.3), (2, 3), 12, id="relu-dropout-short"),
]


@pytest.mark.parametrize(("cfg", "shape", "dropout_seed"), DIRECTIONAL)
def test_model_directional_derivatives(cfg: ModelConfig, shape: tuple[int, int], dropout_seed: int | None) -> None:
    params, idx, targets = check_point(cfg, seed=cfg.n_layers, shape=shape, dropout_seed=dropout_seed)
    make_rng = fixed_rng(dropout_seed)

    def loss(p: Params) -> float:
        return model.loss_and_grads(p, idx, targets, cfg, rng=make_rng())[0]

    _, grads = model.loss_and_grads(params, idx, targets, cfg, rng=make_rng())
    report = directional_check(loss, params, grads, rng=np.random.default_rng(0), directions=3, label=str(cfg))
    report.raise_if_failed()


def test_model_directional_check_can_fail() -> None:
    cfg = tiny()
    params, idx, targets = check_point(cfg, seed=0)

    def loss(p: Params) -> float:
        return model.loss_and_grads(p, idx, targets, cfg)[0]

    _, grads = model.loss_and_grads(params, idx, targets, cfg)
    wrong = {**grads, "block0.attn.k.W": grads["block0.attn.k.W"] * 1.01}
    report = directional_check(loss, params, wrong, rng=np.random.default_rng(0))
    assert not report.passed
    assert [r.name for r in report.failures if not r.name.startswith("direction")] == ["block0.attn.k.W"]


def model_pair(cfg: ModelConfig, dropout_seed: int | None) -> tuple[Any, Any]:
    """The model as a pair over (params, idx) for vjp_check: the input is integer, so only
    the parameters are checked."""
    make_rng = fixed_rng(dropout_seed)

    def fwd(params: Params, idx: Array) -> tuple[Array, Any]:
        return model.forward(params, idx, cfg, rng=make_rng())

    def bwd(params: Params, cache: Any, dlogits: Array) -> tuple[Array | None, Grads]:
        return None, model.backward(params, cache, dlogits)

    return fwd, bwd


def test_a_few_entries_of_every_parameter_tensor() -> None:
    cfg = tiny(n_layers=2, n_heads=2, dropout=0.2)
    params, idx, _ = check_point(cfg, seed=5, shape=(2, 4), dropout_seed=13)
    fwd, bwd = model_pair(cfg, dropout_seed=13)
    report = vjp_check(fwd, bwd, params, idx, rng=np.random.default_rng(1), max_elements=4, label="model")
    report.raise_if_failed()
    assert {r.name for r in report.results} == set(params)


def test_backward_gives_a_gradient_for_every_parameter() -> None:
    cfg = tiny(n_layers=2)
    params = model.init_params(cfg, np.random.default_rng(0))
    idx = np.array([[0, 1, 2]])
    _, grads = model.loss_and_grads(params, idx, np.array([[1, 2, 3]]), cfg)
    assert list(grads) == list(params)
    assert all(grads[k].shape == params[k].shape and grads[k].dtype == np.float32 for k in params)
    assert np.all(grads["pos_emb.W"][3:] == 0)  # positions past T are not used
    assert np.all(grads["tok_emb.W"][4] == 0)  # neither is token 4


def test_model_is_pure() -> None:
    cfg = tiny(dropout=0.1)
    params, idx, _ = check_point(cfg, seed=3, dropout_seed=4)
    fwd, bwd = model_pair(cfg, dropout_seed=4)
    dlogits = np.random.default_rng(0).standard_normal((*idx.shape, cfg.vocab_size))
    assert purity_problems(fwd, bwd, params, idx, dlogits) == []


def test_float32_in_float32_out() -> None:
    cfg = tiny(n_layers=2, dropout=0.1)
    params = model.init_params(cfg, np.random.default_rng(0))
    idx = np.random.default_rng(1).integers(0, 5, size=(3, 5))
    logits, cache = model.forward(params, idx, cfg, rng=np.random.default_rng(2))
    assert logits.dtype == np.float32
    grads = model.backward(params, cache, np.ones_like(logits))
    assert all(g.dtype == np.float32 for g in grads.values())


# --- behaviour -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_changing_later_tokens_leaves_earlier_logits_bit_identical(dropout: float) -> None:
    cfg = tiny(n_layers=2, n_heads=2, dropout=dropout)
    rng = np.random.default_rng(0)
    params = away_from_init(model.init_params(cfg, rng, np.float64), rng)
    idx = rng.integers(0, cfg.vocab_size, size=(3, 5))
    seed = 7 if dropout else None
    logits, _ = model.forward(params, idx, cfg, rng=fixed_rng(seed)())
    for t in range(4):
        changed = idx.copy()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1 + rng.integers(0, 4, size=changed[:, t + 1 :].shape)) % 5
        logits2, _ = model.forward(params, changed, cfg, rng=fixed_rng(seed)())
        assert np.array_equal(logits2[:, : t + 1], logits[:, : t + 1])
        assert not np.allclose(logits2[:, t + 1 :], logits[:, t + 1 :])


def test_sequences_shorter_than_ctx_agree_with_the_full_sequence() -> None:
    cfg = tiny(ctx=6, n_layers=2)
    rng = np.random.default_rng(1)
    params = away_from_init(model.init_params(cfg, rng, np.float64), rng)
    idx = rng.integers(0, cfg.vocab_size, size=(2, 6))
    full, _ = model.forward(params, idx, cfg)
    for t in range(1, 6):
        part, _ = model.forward(params, idx[:, :t], cfg)
        np.testing.assert_allclose(part, full[:, :t], rtol=1e-12, atol=1e-12)


def test_attention_maps() -> None:
    cfg = tiny(n_layers=3, n_heads=4)
    params = model.init_params(cfg, np.random.default_rng(0))
    _, cache = model.forward(params, np.array([[1, 2, 3, 4]]), cfg)
    maps = model.attention_maps(cache)
    assert len(maps) == 3
    for m in maps:
        assert m.shape == (1, 4, 4, 4)
        np.testing.assert_allclose(m.sum(axis=-1), 1.0, rtol=1e-6)
        assert np.all(np.triu(np.ones((4, 4)), 1) * m == 0)


def test_fresh_model_loss_is_about_ln_vocab() -> None:
    cfg = ModelConfig(vocab_size=65, ctx=16, dim=32, n_layers=2, n_heads=2, mlp_hidden=64)
    rng = np.random.default_rng(0)
    params = model.init_params(cfg, rng)
    idx = rng.integers(0, 65, size=(4, 16))
    loss, _ = model.loss_and_grads(params, idx, rng.integers(0, 65, size=(4, 16)), cfg)
    assert abs(loss - math.log(65)) < 0.02


def test_a_tiny_model_memorises_a_repeated_string() -> None:
    """Adam on every window of "hello world " (period 12). From position 1 on, the next
    character is determined by the two before it, so the loss there must go to ~0. At position
    0 a window starting at 'l', 'o' or ' ' cannot know what follows (ln 3 for three windows,
    ln 2 for four), so the mean loss cannot go below (3 ln 3 + 4 ln 2) / (12 * 8) ~ 0.063."""
    text = "hello world " * 3
    vocab = sorted(set(text))
    data = np.array([vocab.index(c) for c in text])
    ctx = 8
    idx = np.stack([data[i : i + ctx] for i in range(12)])
    targets = np.stack([data[i + 1 : i + ctx + 1] for i in range(12)])
    cfg = ModelConfig(vocab_size=len(vocab), ctx=ctx, dim=24, n_layers=1, n_heads=2, mlp_hidden=48)
    params = model.init_params(cfg, np.random.default_rng(0))
    m = {k: np.zeros_like(p) for k, p in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    lr, b1, b2, eps = 1e-2, 0.9, 0.99, 1e-8
    first = None
    for step in range(1, 201):
        loss, grads = model.loss_and_grads(params, idx, targets, cfg)
        first = loss if first is None else first
        for k in params:
            m[k] = b1 * m[k] + (1 - b1) * grads[k]
            v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
            update = lr * (m[k] / (1 - b1**step)) / (np.sqrt(v[k] / (1 - b2**step)) + eps)
            params[k] = (params[k] - update).astype(np.float32)
    logits, _ = model.forward(params, idx, cfg)
    z = logits - logits.max(axis=-1, keepdims=True)
    nll = np.log(np.exp(z).sum(axis=-1)) - np.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
    assert first is not None and abs(first - math.log(len(vocab))) < 0.05
    floor = (3 * math.log(3) + 4 * math.log(2)) / nll.size
    assert nll[:, 1:].mean() < 0.01
    assert nll.mean() < floor + 0.01


def test_dropout_is_driven_by_the_explicit_rng_only() -> None:
    cfg, plain = tiny(n_layers=2, dropout=0.5), tiny(n_layers=2)
    rng = np.random.default_rng(0)
    params = away_from_init(model.init_params(cfg, rng, np.float64), rng)
    idx = rng.integers(0, 5, size=(2, 5))
    evaluation, cache = model.forward(params, idx, cfg)
    assert np.array_equal(evaluation, model.forward(params, idx, plain)[0])
    assert cache.drop.mask is None
    a, cache_a = model.forward(params, idx, cfg, rng=np.random.default_rng(1))
    b, _ = model.forward(params, idx, cfg, rng=np.random.default_rng(1))
    assert cache_a.drop.mask is not None
    assert np.array_equal(a, b) and not np.allclose(a, evaluation)
    same, _ = model.forward(params, idx, plain, rng=np.random.default_rng(1))
    assert np.array_equal(same, evaluation)  # dropout 0 ignores the rng


# --- parameters and configs ------------------------------------------------------------------------


def test_parameter_names_follow_the_playbook() -> None:
    cfg = tiny(n_layers=2)
    params = model.init_params(cfg, np.random.default_rng(0))
    per_block = ["ln1.gamma", "ln1.beta"]
    per_block += [f"attn.{p}.{w}" for p in ("q", "k", "v", "proj") for w in "Wb"]
    per_block += ["ln2.gamma", "ln2.beta", "mlp.fc1.W", "mlp.fc1.b", "mlp.fc2.W", "mlp.fc2.b"]
    expected = ["tok_emb.W", "pos_emb.W"] + [f"block{i}.{n}" for i in range(2) for n in per_block]
    expected += ["ln_f.gamma", "ln_f.beta", "lm_head.W", "lm_head.b"]
    assert list(params) == expected
    assert {k: v.shape for k, v in params.items()} == model.param_shapes(cfg)
    assert params["lm_head.W"].shape == (8, 5) and params["pos_emb.W"].shape == (5, 8)


def test_initialisation() -> None:
    cfg = ModelConfig(vocab_size=65)  # the playbook's default sizes
    params = model.init_params(cfg, np.random.default_rng(0))
    for name, p in params.items():
        assert p.dtype == np.float32
        if name.endswith(".b") or name.endswith(".beta"):
            assert np.all(p == 0), name
        elif name.endswith(".gamma"):
            assert np.all(p == 1), name
        else:
            assert abs(float(p.std()) - 0.02) < 0.002 and abs(float(p.mean())) < 0.002, name
    again = model.init_params(cfg, np.random.default_rng(0), np.float64)
    assert all(again[k].dtype == np.float64 and np.allclose(again[k], params[k]) for k in params)


@pytest.mark.parametrize(
    "cfg",
    [ModelConfig(vocab_size=65), tiny(), tiny(n_layers=3, n_heads=4, mlp_hidden=3), ModelConfig(7, 3, 6, 2, 3, 5)],
    ids=["playbook", "tiny", "three-layers", "odd"],
)
def test_parameter_count(cfg: ModelConfig) -> None:
    params = model.init_params(cfg, np.random.default_rng(0))
    assert model.count_params(cfg) == sum(p.size for p in params.values())
    c, v, h, t = cfg.dim, cfg.vocab_size, cfg.mlp_hidden, cfg.ctx
    per_block = 4 * c + 4 * (c * c + c) + (c * h + h) + (h * c + c)
    assert model.count_params(cfg) == v * c + t * c + cfg.n_layers * per_block + 2 * c + c * v + v


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dim": 64, "n_heads": 3}, r"model: n_heads \(3\) must divide dim \(64\)"),
        ({"vocab_size": 0}, "model: vocab_size must be a positive integer"),
        ({"ctx": 0}, "model: ctx must be a positive integer"),
        ({"n_layers": -1}, "model: n_layers must be a positive integer"),
        ({"mlp_hidden": 2.5}, "model: mlp_hidden must be a positive integer"),
        ({"activation": "tanh"}, "model: activation must be one of"),
        ({"dropout": 1.0}, r"model: dropout must be a probability in \[0, 1\)"),
        ({"dropout": -0.1}, r"model: dropout must be a probability"),
        ({"ln_eps": 0.0}, "model: ln_eps must be positive"),
        ({"init_std": -1.0}, "model: init_std must be a finite number >= 0"),
    ],
)
def test_bad_configs_raise(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_bad_inputs_raise() -> None:
    cfg = tiny()
    params = model.init_params(cfg, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"model: idx has shape \(1, 6\).*ctx = 5"):
        model.forward(params, np.zeros((1, 6), dtype=int), cfg)
    with pytest.raises(ValueError, match=r"model: idx has shape \(5,\)"):
        model.forward(params, np.zeros(5, dtype=int), cfg)
    with pytest.raises(ValueError, match="model: idx must be an integer array"):
        model.forward(params, np.zeros((1, 3)), cfg)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 5\)"):
        model.forward(params, np.array([[0, 5]]), cfg)
    with pytest.raises(ValueError, match=r"missing \['lm_head.b'\], unexpected \[\]"):
        model.forward({k: p for k, p in params.items() if k != "lm_head.b"}, np.zeros((1, 2), dtype=int), cfg)
    with pytest.raises(ValueError, match=r"model: tok_emb.W has shape \(4, 8\), expected \(5, 8\)"):
        model.forward({**params, "tok_emb.W": params["tok_emb.W"][:4]}, np.zeros((1, 2), dtype=int), cfg)
    with pytest.raises(ValueError, match="model: rng must be"):
        model.forward(params, np.zeros((1, 2), dtype=int), cfg, rng=3)  # type: ignore[arg-type]
    logits, cache = model.forward(params, np.zeros((1, 2), dtype=int), cfg)
    with pytest.raises(ValueError, match=r"model: dlogits has shape \(1, 3, 5\), expected \(1, 2, 5\)"):
        model.backward(params, cache, np.zeros((1, 3, 5)))


def test_parameters_of_mixed_dtypes_are_refused_at_the_entry() -> None:
    cfg = tiny()
    params = {**model.init_params(cfg, np.random.default_rng(0)), "lm_head.b": np.zeros(cfg.vocab_size)}
    with pytest.raises(ValueError, match="model: the parameters must share one floating-point dtype, got float32, float64"):
        model.forward(params, np.zeros((1, 2), dtype=int), cfg)


def test_layers_skip_their_checks_only_inside_the_model() -> None:
    """The model checks its inputs once at its entry; a layer called on its own still checks."""
    from bevialm.layers import linear
    from bevialm.validate import checked_at_entry

    cfg = linear.LinearConfig(3, 2)
    params = linear.init(cfg, np.random.default_rng(0))
    bad = np.zeros((5, 3))  # float64 against float32 parameters
    with checked_at_entry():
        linear.forward(params, bad, cfg)  # trusted: no check (the caller vouches for its arrays)
    with pytest.raises(ValueError, match="dtype float64 does not match"):
        linear.forward(params, bad, cfg)
    mcfg = tiny()
    with pytest.raises(ValueError, match="indices must lie"):
        model.forward(model.init_params(mcfg, np.random.default_rng(0)), np.array([[0, 99]]), mcfg)
    with pytest.raises(ValueError, match="dtype float64 does not match"):  # the failed call left nothing behind
        linear.forward(params, bad, cfg)
