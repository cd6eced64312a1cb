"""Sampling: the key/value-cached decoder against the full forward pass (also past ctx, where
the window slides), the token choice (greedy, temperature, top-k, top-p), prompts, and
loading a model from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bevialm import generate, model
from bevialm.checkpoint import CheckpointError, make_header, save_checkpoint
from bevialm.data import DataError, Vocab
from bevialm.generate import SamplingConfig, pick_tokens
from bevialm.model import ModelConfig
from bevialm.types import Array, IntArray

TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}


def trained_like(cfg: ModelConfig, dtype: Any, seed: int = 0) -> dict[str, Array]:
    """Parameters far from init (init's tiny weights would make every position look alike)."""
    rng = np.random.default_rng(seed)
    params = model.init_params(cfg, rng, dtype)
    return {k: (p + rng.standard_normal(p.shape) * 0.3).astype(dtype) for k, p in params.items()}


def full_logits(params: dict[str, Array], cfg: ModelConfig, tokens: IntArray) -> Array:
    logits, _ = model.forward(params, tokens, cfg)
    return logits


CFG = ModelConfig(vocab_size=11, ctx=8, dim=12, n_layers=2, n_heads=3, mlp_hidden=20, activation="gelu")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("cfg", [CFG, ModelConfig(vocab_size=7, ctx=6, dim=8, n_layers=1, n_heads=1, mlp_hidden=8)], ids=["2x3-gelu", "1x1-relu"])
def test_cached_decoding_equals_full_forward(cfg: ModelConfig, dtype: Any) -> None:
    params = trained_like(cfg, dtype)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(2, cfg.ctx))
    cache = generate.empty_cache(cfg, 2, dtype)
    pieces = []
    # a prompt of 3 ("prefill"), then a chunk of 2, then one token at a time
    for start, stop in [(0, 3), (3, 5), *((t, t + 1) for t in range(5, cfg.ctx))]:
        logits, cache = generate.decode(params, cfg, cache, tokens[:, start:stop])
        assert logits.dtype == dtype and cache.length == stop
        pieces.append(logits)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full_logits(params, cfg, tokens), rtol=0, atol=TOLERANCE[dtype])
    assert cache.keys[0].shape == (2, cfg.n_heads, cfg.ctx, cfg.dim // cfg.n_heads)


def test_decode_is_pure_and_refuses_to_overflow_the_context() -> None:
    params = trained_like(CFG, np.float64)
    tokens = np.arange(CFG.ctx).reshape(1, -1) % CFG.vocab_size
    _, cache = generate.decode(params, CFG, generate.empty_cache(CFG, 1, np.float64), tokens[:, :4])
    before = [k.copy() for k in cache.keys]
    _, longer = generate.decode(params, CFG, cache, tokens[:, 4:6])
    assert cache.length == 4 and longer.length == 6
    assert all(np.array_equal(a, b) for a, b in zip(before, cache.keys, strict=True))
    with pytest.raises(ValueError, match="at most ctx = 8 positions fit"):
        generate.decode(params, CFG, longer, tokens[:, :3])
    with pytest.raises(ValueError, match="batch"):
        generate.decode(params, CFG, longer, np.zeros((2, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="do not match the model config"):
        generate.decode({k: v for k, v in params.items() if k != "lm_head.b"}, CFG, cache, tokens[:, :1])
    with pytest.raises(ValueError, match="batch must be positive"):
        generate.empty_cache(CFG, 0)


@pytest.mark.parametrize("prompt_len", [3, 20], ids=["short-prompt", "prompt-longer-than-ctx"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_generation_past_ctx_slides_a_window_of_the_last_ctx_tokens(prompt_len: int, dtype: Any) -> None:
    params = trained_like(CFG, dtype, seed=2)
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, CFG.vocab_size, size=(2, prompt_len))
    n_new = 3 * CFG.ctx
    chosen = rng.integers(0, CFG.vocab_size, size=(n_new, 2))  # scripted picks: the test knows every token
    seen: list[Array] = []

    def pick(logits: Array) -> IntArray:
        seen.append(logits.copy())
        token: IntArray = chosen[len(seen) - 1]
        return token

    tokens = generate.generate(params, CFG, prompt, n_new, pick)
    assert tokens.shape == (2, prompt_len + n_new)
    assert np.array_equal(tokens[:, :prompt_len], prompt) and np.array_equal(tokens[:, prompt_len:], chosen.T)
    assert len(seen) == n_new
    for i, logits in enumerate(seen):
        end = prompt_len + i  # the logits that chose token `end` saw tokens [end - ctx, end)
        window = tokens[:, max(0, end - CFG.ctx) : end]
        np.testing.assert_allclose(logits, full_logits(params, CFG, window)[:, -1], rtol=0, atol=TOLERANCE[dtype])


def test_generate_rejects_bad_prompts_and_lengths() -> None:
    params = trained_like(CFG, np.float32)
    greedy = lambda logits: np.argmax(logits, axis=1)  # noqa: E731
    with pytest.raises(ValueError, match=r"prompt must be a \(B, T\) array"):
        generate.generate(params, CFG, np.array([1, 2]), 3, greedy)
    with pytest.raises(ValueError, match=r"prompt must be a \(B, T\) array"):
        generate.generate(params, CFG, np.zeros((1, 0), dtype=np.int64), 3, greedy)
    with pytest.raises(ValueError, match="n_new must be >= 0"):
        generate.generate(params, CFG, np.array([[1, 2]]), -1, greedy)
    assert generate.generate(params, CFG, np.array([[1, 2]]), 0, greedy).tolist() == [[1, 2]]


def test_generating_nothing_runs_no_forward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    params = trained_like(CFG, np.float32)

    def no_decoding(*args: Any) -> Any:
        raise AssertionError("decoded although no token is generated")

    monkeypatch.setattr(generate, "_decode", no_decoding)
    tokens = generate.generate(params, CFG, np.array([[3, 1, 4]]), 0, lambda logits: np.argmax(logits, axis=1))
    assert tokens.tolist() == [[3, 1, 4]]


# --- choosing tokens --------------------------------------------------------------------------------

PROBS = np.array([0.4, 0.3, 0.2, 0.1])


def frequencies(sampling: SamplingConfig, rows: int = 40_000, logits: Array | None = None) -> Array:
    z = np.log(PROBS) if logits is None else logits
    picks = pick_tokens(np.tile(z, (rows, 1)), sampling, np.random.default_rng(0))
    assert picks.shape == (rows,)
    return np.bincount(picks, minlength=z.size) / rows


def test_temperature_zero_is_greedy_and_needs_no_rng() -> None:
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]], dtype=np.float32)
    assert pick_tokens(logits, SamplingConfig(temperature=0), None).tolist() == [1, 0]
    with pytest.raises(ValueError, match="needs an rng"):
        pick_tokens(logits, SamplingConfig(), None)
    with pytest.raises(ValueError, match=r"must be \(B, V\)"):
        pick_tokens(logits[0], SamplingConfig(temperature=0), None)


def test_temperature_one_samples_the_softmax_and_higher_flattens_it() -> None:
    np.testing.assert_allclose(frequencies(SamplingConfig()), PROBS, atol=0.01)
    sharp = frequencies(SamplingConfig(temperature=0.5))
    np.testing.assert_allclose(sharp, PROBS**2 / (PROBS**2).sum(), atol=0.01)
    flat = frequencies(SamplingConfig(temperature=100.0))
    np.testing.assert_allclose(flat, 0.25, atol=0.01)


def test_top_k_keeps_the_k_likeliest() -> None:
    two = frequencies(SamplingConfig(top_k=2))
    assert two[2] == two[3] == 0
    np.testing.assert_allclose(two[:2], PROBS[:2] / PROBS[:2].sum(), atol=0.01)
    assert frequencies(SamplingConfig(top_k=1))[0] == 1.0
    np.testing.assert_allclose(frequencies(SamplingConfig(top_k=10)), PROBS, atol=0.01)  # k >= V: all


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    # mass of the likelier tokens: 0, 0.4, 0.7, 0.9 -> p = 0.5 keeps tokens 0 and 1
    half = frequencies(SamplingConfig(top_p=0.5))
    np.testing.assert_allclose(half, [4 / 7, 3 / 7, 0, 0], atol=0.01)
    assert frequencies(SamplingConfig(top_p=0.01))[0] == 1.0  # the likeliest always stays
    np.testing.assert_allclose(frequencies(SamplingConfig(top_p=1.0)), PROBS, atol=0.01)
    # top-k first, then top-p within it
    both = frequencies(SamplingConfig(top_k=3, top_p=0.7))  # renormalised 4/9, 3/9, 2/9: mass before 0, 4/9, 7/9
    np.testing.assert_allclose(both, [4 / 7, 3 / 7, 0, 0], atol=0.01)


def test_rows_are_sampled_independently() -> None:
    logits = np.log(np.array([[0.999, 0.001, 1e-9], [1e-9, 0.001, 0.999]]))
    picks = pick_tokens(np.repeat(logits, 500, axis=0), SamplingConfig(), np.random.default_rng(1))
    assert (picks[:500] == 0).mean() > 0.95 and (picks[500:] == 2).mean() > 0.95


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_sampling_config_rejects_bad_values(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**fields)


# --- text ------------------------------------------------------------------------------------------

VOCAB = Vocab.from_text("abcdefghi\n ")


def text_model() -> tuple[dict[str, Array], ModelConfig]:
    cfg = ModelConfig(vocab_size=VOCAB.size, ctx=8, dim=8, n_layers=1, n_heads=2, mlp_hidden=16)
    return trained_like(cfg, np.float32, seed=5), cfg


def test_sample_text_continues_the_prompt_reproducibly() -> None:
    params, cfg = text_model()
    texts = generate.sample_text(params, cfg, VOCAB, "abc", 20, num_samples=3, rng=generate.sampling_rng(7))
    assert len(texts) == 3 and all(t.startswith("abc") and len(t) == 23 for t in texts)
    assert len(set(texts)) > 1  # the rows of one batch are different samples
    again = generate.sample_text(params, cfg, VOCAB, "abc", 20, num_samples=3, rng=generate.sampling_rng(7))
    assert again == texts
    greedy = generate.sample_text(params, cfg, VOCAB, "abc", 20, num_samples=2, sampling=SamplingConfig(temperature=0))
    assert greedy[0] == greedy[1]


def test_an_empty_prompt_starts_from_a_newline_or_the_first_character() -> None:
    params, cfg = text_model()
    assert generate.default_prompt(VOCAB) == "\n"
    assert generate.default_prompt(Vocab.from_text("xyz")) == "x"
    text = generate.sample_text(params, cfg, VOCAB, "", 5, rng=np.random.default_rng(0))[0]
    assert text.startswith("\n") and len(text) == 6


def test_prompt_characters_outside_the_vocabulary_are_named() -> None:
    params, cfg = text_model()
    with pytest.raises(DataError, match=r"prompt contains characters not in the vocabulary: 'Z', '!'"):
        generate.sample_text(params, cfg, VOCAB, "abZc!Z", 5, rng=np.random.default_rng(0))


def test_sample_text_checks_its_arguments() -> None:
    params, cfg = text_model()
    with pytest.raises(ValueError, match="num_samples"):
        generate.sample_text(params, cfg, VOCAB, "a", 5, num_samples=0)
    with pytest.raises(ValueError, match="the model has 11 tokens, the tokenizer 3"):
        generate.sample_text(params, cfg, Vocab.from_text("abc"), "a", 5)


# --- loading a model --------------------------------------------------------------------------------


def write_checkpoint(path: Path, params: dict[str, Array], model_config: dict[str, Any], vocab: Vocab = VOCAB) -> Path:
    save_checkpoint(path, params=params, header=make_header(model_config=model_config, tokenizer=vocab, step=12))
    return path


def test_load_model_round_trip(tmp_path: Path) -> None:
    params, cfg = text_model()
    from dataclasses import asdict

    loaded = generate.load_model(write_checkpoint(tmp_path / "m.npz", params, asdict(cfg)))
    assert loaded.cfg == cfg and loaded.tokenizer == VOCAB and loaded.step == 12
    assert all(np.array_equal(loaded.params[k], params[k]) for k in params)


def test_load_model_explains_checkpoints_it_cannot_run(tmp_path: Path) -> None:
    from dataclasses import asdict

    params, cfg = text_model()
    good = asdict(cfg)
    cases: list[tuple[dict[str, Array], dict[str, Any], Vocab, str]] = [
        (params, {**good, "depth": 3}, VOCAB, "does not describe a model"),
        (params, {**good, "n_heads": 3}, VOCAB, "does not describe a model"),
        (params, {**good, "dim": 16}, VOCAB, r"'tok_emb.W' has shape \(11, 8\) in the checkpoint, the model expects \(11, 16\)"),
        (params, {**good, "vocab_size": 5}, Vocab.from_text("abcde"), "parameter 'tok_emb.W' has shape"),
        ({**params, "ln_f.beta": params["ln_f.beta"].astype(np.float64)}, good, VOCAB, "share one float dtype"),
    ]
    for i, (p, config, vocab, message) in enumerate(cases):
        path = write_checkpoint(tmp_path / f"bad{i}.npz", p, config, vocab)
        with pytest.raises(CheckpointError, match=message):
            generate.load_model(path)
    path = write_checkpoint(tmp_path / "vocab.npz", params, good, Vocab.from_text("abc"))
    with pytest.raises(CheckpointError, match="tokenizer of 3 tokens for a model of 11"):
        generate.load_model(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        generate.load_model(tmp_path / "missing.npz")


def test_default_checkpoint_prefers_best(tmp_path: Path) -> None:
    assert generate.default_checkpoint(tmp_path) == str(tmp_path / "last.npz")
    (tmp_path / "best.npz").write_bytes(b"")
    assert generate.default_checkpoint(tmp_path) == str(tmp_path / "best.npz")


def test_the_cache_writes_new_keys_into_its_buffers_and_copies_for_a_second_branch() -> None:
    params = trained_like(CFG, np.float64)
    tokens = np.random.default_rng(5).integers(0, CFG.vocab_size, size=(1, 6))
    other = (tokens + 1) % CFG.vocab_size
    _, cache = generate.decode(params, CFG, generate.empty_cache(CFG, 1, np.float64), tokens[:, :3])
    logits_a, a = generate.decode(params, CFG, cache, tokens[:, 3:5])
    assert a.buffers is cache.buffers  # extended in place: no copy of the cached positions
    logits_b, b = generate.decode(params, CFG, cache, other[:, 3:5])  # a second branch from the same cache
    assert b.buffers is not cache.buffers
    np.testing.assert_allclose(logits_a, full_logits(params, CFG, tokens[:, :5])[:, 3:], rtol=0, atol=1e-10)
    np.testing.assert_allclose(logits_b, full_logits(params, CFG, np.concatenate([tokens[:, :3], other[:, 3:5]], axis=1))[:, 3:], rtol=0, atol=1e-10)
    logits_a2, _ = generate.decode(params, CFG, a, tokens[:, 5:6])  # the first branch was not overwritten
    np.testing.assert_allclose(logits_a2, full_logits(params, CFG, tokens)[:, 5:], rtol=0, atol=1e-10)
    plain = generate.KVCache(tuple(k.copy() for k in cache.keys), tuple(v.copy() for v in cache.values))
    logits_c, _ = generate.decode(params, CFG, plain, tokens[:, 3:5])  # a cache without buffers gets some
    np.testing.assert_array_equal(logits_c, logits_a)


def test_the_decoder_refuses_parameters_of_mixed_dtypes() -> None:
    params = {**trained_like(CFG, np.float32), "lm_head.b": np.zeros(CFG.vocab_size)}
    with pytest.raises(ValueError, match="generate: the parameters must share one floating-point dtype"):
        generate.decode(params, CFG, generate.empty_cache(CFG, 1), np.zeros((1, 1), dtype=np.int64))
