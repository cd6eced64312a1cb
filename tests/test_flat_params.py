"""The flat layout (bevialm.flat_params) and the trainer's flat AdamW (optim.flat_step): the same
bits as the per-tensor AdamW every student writes, over several steps, in float64 and float32."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np
import pytest

from bevialm import model, optim, parallel
from bevialm.flat_params import FlatTensors, Layout
from bevialm.types import Array

NAMES = ("tok_emb.W", "block0.attn.q.W", "block0.attn.q.b", "block0.ln1.gamma", "pos_emb.W", "lm_head.W", "lm_head.b")
"""Decayed (``.W`` of a product) and exempt (embeddings, biases, gains) names, interleaved."""


def _tensors(dtype: Any, seed: int, scale: float = 1.0) -> dict[str, Array]:
    rng = np.random.default_rng(seed)
    shapes = [(5, 3), (3, 4), (4,), (3,), (6, 3), (3, 5), (5,)]
    return {k: (scale * rng.standard_normal(s)).astype(dtype) for k, s in zip(NAMES, shapes, strict=True)}


def _same_bits(a: dict[str, Array] | Any, b: dict[str, Array] | Any) -> bool:
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("decay_all", [False, True])
def test_flat_step_is_bit_identical_to_step_over_several_steps(dtype: Any, decay_all: bool) -> None:
    cfg = optim.AdamWConfig(lr=1e-2, weight_decay=0.1, decay_all=decay_all)
    params, flat_params = _tensors(dtype, 0), _tensors(dtype, 0)
    state, flat_state = optim.init_state(params), optim.init_state(flat_params)
    for i, lr in enumerate([None, 3e-3, 1e-2, 0.0, 5e-3]):
        grads = _tensors(dtype, 10 + i, scale=0.1)
        if i == 3:
            grads = {k: np.zeros_like(g) for k, g in grads.items()}  # zero gradients: exempt names stay put
        if i == 2:
            grads = Layout.of(grads, optim.decay_group).pack(grads)  # already flat, as the shards give them
        params, state = optim.step(params, grads, state, cfg, lr)
        flat_params, flat_state = optim.flat_step(flat_params, grads, flat_state, cfg, lr)
        assert isinstance(flat_params, FlatTensors)
        assert _same_bits(params, flat_params) and _same_bits(state.m, flat_state.m) and _same_bits(state.v, flat_state.v)
        assert flat_state.t == state.t == i + 1


def test_flat_step_keeps_buffers_by_kind_and_the_names_order() -> None:
    params = _tensors(np.float32, 0)
    new, state = optim.flat_step(params, _tensors(np.float32, 1), optim.init_state(params), optim.AdamWConfig())
    assert isinstance(new, FlatTensors)
    assert list(new) == list(params) and set(new.parts) == {"0." + optim.DECAYED, "0." + optim.EXEMPT}
    decayed = sum(p.size for k, p in params.items() if optim.decays(k))
    assert new.parts["0." + optim.DECAYED].size == decayed
    new["lm_head.W"][0, 0] = 7.0  # a view: writing through the name writes the buffer
    assert 7.0 in new.parts["0." + optim.DECAYED]
    assert isinstance(state.m, FlatTensors) and state.m.layout == new.layout


def test_buffers_are_cut_at_the_chunk_size_between_tensors() -> None:
    tensors = {"a.W": np.zeros(6), "b.W": np.zeros(5), "c.b": np.zeros(9), "d.W": np.zeros(12), "e.W": np.zeros(1)}
    layout = Layout.of(tensors, optim.decay_group, chunk=10)
    assert layout.groups == ("0.decayed.W", "1.decayed.W", "0.exempt.b", "2.decayed.W", "3.decayed.W")
    assert layout.sizes == {"0.decayed.W": 6, "1.decayed.W": 5, "0.exempt.b": 9, "2.decayed.W": 12, "3.decayed.W": 1}
    small = Layout.of({"a.W": np.zeros(2), "b.W": np.zeros(3)}, optim.decay_group, chunk=10)
    assert small.groups == ("0.decayed.W", "0.decayed.W")


def test_flat_step_never_mutates_its_inputs() -> None:
    params = _tensors(np.float32, 0)
    p1, s1 = optim.flat_step(params, _tensors(np.float32, 1), optim.init_state(params), optim.AdamWConfig())
    before = copy.deepcopy((dict(p1), dict(s1.m), dict(s1.v)))
    grads = Layout.of(params, optim.decay_group).pack(_tensors(np.float32, 2))
    optim.flat_step(p1, grads, s1, optim.AdamWConfig())
    assert _same_bits(before[0], p1) and _same_bits(before[1], s1.m) and _same_bits(before[2], s1.v)


def test_flat_step_rejects_mismatched_inputs_like_step() -> None:
    params = _tensors(np.float32, 0)
    grads = _tensors(np.float32, 1)
    del grads["lm_head.b"]
    with pytest.raises(ValueError, match=r"grads keys differ from the params: missing \['lm_head.b'\]"):
        optim.flat_step(params, grads, optim.init_state(params), optim.AdamWConfig())


def test_mixed_dtypes_take_the_per_tensor_path() -> None:
    params: dict[str, Array] = {"a.W": np.ones((2, 2), np.float32), "a.b": np.ones(2, np.float64)}
    grads = {k: np.full_like(p, 0.5) for k, p in params.items()}
    new, _ = optim.flat_step(params, grads, optim.init_state(params), optim.AdamWConfig())
    want, _ = optim.step(params, grads, optim.init_state(params), optim.AdamWConfig())
    assert not isinstance(new, FlatTensors) and _same_bits(new, want)


def test_flat_clipping_matches_per_tensor_clipping() -> None:
    grads = _tensors(np.float32, 3)
    flat = Layout.of(grads, optim.decay_group).pack(grads)
    clipped, norm = optim.clip_by_global_norm(flat, 0.5)
    want, want_norm = optim.clip_by_global_norm(grads, 0.5)
    assert isinstance(clipped, FlatTensors) and norm == want_norm and _same_bits(want, clipped)
    same, _ = optim.clip_by_global_norm(flat, 1e9)
    assert same is flat


def test_flat_tensors_names_cannot_be_rebound() -> None:
    flat = Layout.of(_tensors(np.float32, 0), optim.decay_group).pack(_tensors(np.float32, 0))
    with pytest.raises(TypeError, match="the names are fixed"):
        flat["lm_head.W"] = np.zeros((3, 5), np.float32)
    with pytest.raises(TypeError, match="the names are fixed"):
        flat.update({})
    with pytest.raises(ValueError, match="flat buffer '0.decayed.W' is float32"):
        FlatTensors(flat.layout, {**flat.parts, "0." + optim.DECAYED: np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="one dtype"):
        Layout.of({"a": np.zeros(1, np.float32), "b": np.zeros(1)}, optim.decay_group)
    again = pickle.loads(pickle.dumps(flat))
    assert isinstance(again, FlatTensors) and again.layout == flat.layout and _same_bits(flat, again)


@pytest.mark.parametrize("accum", [1, 3])
def test_sharded_gradients_in_flat_buffers_match_plain_dicts(accum: int) -> None:
    cfg = model.ModelConfig(vocab_size=11, ctx=8, dim=12, n_layers=1, n_heads=2, mlp_hidden=16)
    params = model.init_params(cfg, np.random.default_rng(0))
    flat = Layout.of(params, optim.decay_group).pack(params)
    rng = np.random.default_rng(1)
    batches = [(rng.integers(0, 11, (6, 8)), rng.integers(0, 11, (6, 8))) for _ in range(accum)]
    results = []
    for p in (params, flat):
        sums = parallel.accumulate(p, iter(batches).__next__, cfg, accum=accum, shards=2)
        results.append(parallel.combine_all(sums))
    (loss, grads), (flat_loss, flat_grads) = results
    assert isinstance(flat_grads, FlatTensors) and not isinstance(grads, FlatTensors)
    assert loss == flat_loss and _same_bits(grads, flat_grads)


def test_flat_step_over_a_models_many_buffers_is_step_to_the_bit() -> None:
    cfg = model.ModelConfig(vocab_size=65, ctx=64, dim=128, n_layers=2, mlp_hidden=512)
    params = model.init_params(cfg, np.random.default_rng(0))
    assert len(Layout.of(params, optim.decay_group).sizes) > 4  # several 64K buffers
    grads = {k: (0.01 * np.random.default_rng(1).standard_normal(p.shape)).astype(p.dtype) for k, p in params.items()}
    state, flat_state = optim.init_state(params), optim.init_state(params)
    flat = params
    for _ in range(2):
        params, state = optim.step(params, grads, state, optim.AdamWConfig())
        flat, flat_state = optim.flat_step(flat, grads, flat_state, optim.AdamWConfig())
        assert _same_bits(params, flat) and _same_bits(state.m, flat_state.m) and _same_bits(state.v, flat_state.v)

