"""Attention recorded by the key/value-cache decoder during generation equals the attention of a
full forward pass over the same tokens: inside the first window, past ctx (sliding window), with
a prompt longer than ctx, in both dtypes; and recording changes nothing that is generated."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bevialm import generate, model
from bevialm.model import ModelConfig
from bevialm.types import Array, IntArray

CFG = ModelConfig(vocab_size=11, ctx=8, dim=12, n_layers=2, n_heads=3, mlp_hidden=20, activation="gelu")
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-6}


def trained_like(cfg: ModelConfig, dtype: Any, seed: int = 0) -> dict[str, Array]:
    """Parameters far from init, so that the heads attend unevenly."""
    rng = np.random.default_rng(seed)
    params = model.init_params(cfg, rng, dtype)
    return {k: (p + rng.standard_normal(p.shape) * 0.5).astype(dtype) for k, p in params.items()}


def scripted(choices: IntArray) -> Any:
    """A ``pick`` that returns the scripted tokens in turn (the test knows every token)."""
    it = iter(choices)
    return lambda logits: next(it)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(("prompt_len", "n_new"), [(3, 5), (3, 20), (13, 6), (1, 1)], ids=["in-window", "sliding", "long-prompt", "one-token"])
def test_recorded_weights_equal_a_full_forward_pass_over_each_context(prompt_len: int, n_new: int, dtype: Any) -> None:
    params = trained_like(CFG, dtype)
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, CFG.vocab_size, size=(2, prompt_len))
    choices = rng.integers(0, CFG.vocab_size, size=(n_new, 2))
    recorder = generate.AttentionRecorder()
    tokens = generate.generate(params, CFG, prompt, n_new, scripted(choices), recorder=recorder)
    w = recorder.weights
    assert w.shape == (2, CFG.n_layers, CFG.n_heads, n_new, prompt_len + n_new - 1) and w.dtype == dtype
    assert recorder.prompt_len == prompt_len and np.array_equal(recorder.tokens, tokens)
    for n in range(n_new):
        position = prompt_len + n  # the generated token; its context ends just before it
        start = max(0, position - CFG.ctx)
        _, cache = model.forward(params, tokens[:, start:position], CFG)
        for layer, maps in enumerate(model.attention_maps(cache)):
            expected = maps[:, :, -1, :]  # the last query: the one whose logits chose the token
            np.testing.assert_allclose(w[:, layer, :, n, start:position], expected, rtol=0, atol=TOLERANCE[dtype])
        assert np.isnan(w[:, :, :, n, :start]).all() and np.isnan(w[:, :, :, n, position:]).all()
        np.testing.assert_allclose(np.nansum(w[:, :, :, n], axis=-1), 1.0, atol=TOLERANCE[dtype] * 10)


def test_recording_changes_nothing_generated_and_is_fresh_per_call() -> None:
    params = trained_like(CFG, np.float32, seed=3)
    prompt = np.array([[1, 2, 3]])
    rng_a, rng_b = generate.sampling_rng(5), generate.sampling_rng(5)
    sampling = generate.SamplingConfig(temperature=1.0)
    plain = generate.generate(params, CFG, prompt, 12, lambda lg: generate.pick_tokens(lg, sampling, rng_a))
    recorder = generate.AttentionRecorder()
    recorded = generate.generate(
        params, CFG, prompt, 12, lambda lg: generate.pick_tokens(lg, sampling, rng_b), recorder=recorder
    )
    assert np.array_equal(plain, recorded)
    generate.generate(params, CFG, prompt, 4, lambda lg: np.argmax(lg, axis=1), recorder=recorder)
    assert recorder.weights.shape[3] == 4  # a new call starts a new record


def test_zero_new_tokens_record_nothing_and_sample_text_passes_the_recorder_on() -> None:
    from bevialm.data import Vocab

    params = trained_like(CFG, np.float32)
    recorder = generate.AttentionRecorder()
    generate.generate(params, CFG, np.array([[1, 2]]), 0, lambda lg: np.argmax(lg, axis=1), recorder=recorder)
    assert recorder.weights.shape == (1, 2, 3, 0, 1)
    vocab = Vocab(tuple("abcdefghijk"))
    texts = generate.sample_text(params, CFG, vocab, "abc", 5, num_samples=2, rng=np.random.default_rng(0), recorder=recorder)
    assert recorder.weights.shape == (2, 2, 3, 5, 7) and [vocab.decode(row) for row in recorder.tokens] == texts
