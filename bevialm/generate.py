"""Sampling text from a trained model (playbook 5.3), with a per-layer key/value cache.

Generating ``n`` characters naively runs the whole model on the whole context
for every new character. An incremental decoder instead keeps, for each block,
the keys and values of every position seen so far (the :class:`KVCache`), and
runs only the new positions through the model: their queries attend to the
cached keys and values plus their own. The logits are those of a full forward
pass over the same tokens (the tests check it to ~1e-5 in float32 and 1e-10
in float64), because :func:`decode` composes the very functions the model
uses: the embedding, layer-norm, linear, MLP and attention-core
(``attention.attend`` with ``causal_mask``'s offset) pairs.
Only the block's wiring (pre-norm, two residual additions) is repeated here,
since ``block.forward`` runs attention on its whole input and has no place
for cached keys. Dropout is off: sampling is evaluation.

**Per-token cost.** A new token is a handful of tiny products and ~100 small NumPy
calls, so the decoder saves calls: the parameters are checked and split per pair once
per generation (not per token), the pairs it calls skip their own input checks
(:func:`bevialm.validate.checked_at_entry`), each block's keys and values go into the next
free rows of a preallocated buffer (:class:`KVCache`), and the query, key and value
projections run as one linear pair over the side-by-side weights ``[Wq | Wk | Wv]`` (one
product, not three).

**Sliding window.** Positions are learned absolute embeddings, so once ``ctx``
positions are cached the next token cannot simply be appended: every kept
token would change position. When the cache is full, :func:`generate`
recomputes it from the last ``ctx - 1`` tokens plus the new one (one ordinary
forward pass over a full window), exactly what a model that always looks at the
last ``ctx`` characters computes; so beyond ``ctx`` each new character costs one
window pass, and the cache only saves work within the first window.

**Choosing the next character** (:func:`pick_tokens`), for each row at once:
temperature 0 is greedy (argmax); otherwise the logits are divided by the
temperature, cut to the ``top_k`` likeliest (ties at the k-th value are kept)
and then to the smallest set whose probability reaches ``top_p`` (nucleus), and
one token is drawn by inverting the cumulative distribution with one uniform
number per row.

**Recording attention** (:class:`AttentionRecorder`): passed to :func:`generate`, it
keeps, for every generated token, each layer's and head's attention weights over
the context the token was predicted from: the last query row of the very weights
the decoder computed (no second forward pass). Without a recorder the decoder does
no extra work.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bevialm import checkpoint
from bevialm import tokenizer as tokenizers
from bevialm.data import DataError
from bevialm.layers import attention, embedding, layernorm, linear, mlp
from bevialm.model import ModelConfig, block_prefix, param_shapes
from bevialm.params import scope
from bevialm.types import Array, IntArray, Params
from bevialm.validate import checked_at_entry

LAYER = "generate"

SAMPLE_STREAM = 3
"""Second word of the seed of a sampling generator (see :func:`sampling_rng`)."""


@dataclass(frozen=True)
class SamplingConfig:
    """How the next character is chosen from the logits.

    ``temperature`` 0 is greedy; ``top_k`` None keeps every character;
    ``top_p`` None (or 1) keeps the whole distribution.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    @classmethod
    def from_flags(cls, temperature: float, top_k: int, top_p: float) -> SamplingConfig:
        """From the command line's values, where ``top_k`` 0 and ``top_p`` 1 mean "no filter"."""
        return cls(temperature, top_k or None, top_p if top_p < 1 else None)

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not (math.isfinite(t) and t >= 0):
            raise ValueError(f"{LAYER}: temperature must be a finite number >= 0, got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1):
            raise ValueError(f"{LAYER}: top_k must be a positive integer or None, got {k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1):
            raise ValueError(f"{LAYER}: top_p must lie in (0, 1] or be None, got {p!r}")


@dataclass(frozen=True)
class KVCache:
    """Per block, the keys and values of the positions decoded so far: ``(B, H, length, hd)``.

    A value: :func:`decode` returns a new cache and never modifies this one. The arrays are
    views of per-block buffers with room for ``ctx`` positions (``buffers``), so a new token's
    keys and values are written once into the free positions, not copied with all the cached
    ones into a new array each token. ``written`` is how far the buffers hold data, shared by
    every cache that views them: a second decode from the same cache finds its free positions
    already written by the first, and copies the buffers rather than overwrite them.
    """

    keys: tuple[Array, ...]
    values: tuple[Array, ...]
    buffers: tuple[tuple[Array, Array], ...] | None = None
    written: list[int] = field(default_factory=lambda: [0], compare=False)

    @property
    def length(self) -> int:
        """How many positions are cached (the position of the next token)."""
        return int(self.keys[0].shape[2])

    @property
    def batch(self) -> int:
        return int(self.keys[0].shape[0])

    def room(self, ctx: int) -> tuple[tuple[Array, Array], ...]:
        """Per block, buffers of ``ctx`` positions whose first :attr:`length` hold this cache's
        keys and values and whose others are free: the shared ones when nothing was written
        past :attr:`length`, otherwise a copy."""
        if self.buffers is not None and self.written[0] == self.length:
            return self.buffers
        rooms = []
        for k, v in zip(self.keys, self.values, strict=True):
            kb, vb = (np.empty((*a.shape[:2], ctx, a.shape[3]), dtype=a.dtype) for a in (k, v))
            kb[:, :, : self.length], vb[:, :, : self.length] = k, v
            rooms.append((kb, vb))
        return tuple(rooms)


def empty_cache(cfg: ModelConfig, batch: int, dtype: Any = np.float32) -> KVCache:
    """A cache of ``batch`` sequences with nothing decoded yet."""
    if batch < 1:
        raise ValueError(f"{LAYER}: batch must be positive, got {batch}")
    shape = (batch, cfg.n_heads, cfg.ctx, cfg.dim // cfg.n_heads)
    buffers = tuple((np.empty(shape, dtype=dtype), np.empty(shape, dtype=dtype)) for _ in range(cfg.n_layers))
    return KVCache(tuple(k[:, :, :0] for k, _ in buffers), tuple(v[:, :, :0] for _, v in buffers), buffers)


@dataclass(frozen=True)
class _BlockParams:
    """One block's parameters per pair. ``qkv`` is the query, key and value projections side
    by side, ``W = [Wq | Wk | Wv]`` ``(C, 3C)``: ``x W + b`` is ``[q | k | v]`` in one product,
    the same three linear maps (one matrix product per token instead of three)."""

    ln1: Params
    qkv: Params
    proj: Params
    ln2: Params
    mlp: Params


@dataclass(frozen=True)
class _Scoped:
    """The model's parameters split per pair once, not once per generated token."""

    tok_emb: Params
    pos_emb: Params
    blocks: tuple[_BlockParams, ...]
    ln_f: Params
    lm_head: Params
    dtype: np.dtype[Any]
    qkv: linear.LinearConfig


def _scoped(params: Params, cfg: ModelConfig) -> _Scoped:
    expected = param_shapes(cfg)
    if set(params) != set(expected) or any(params[k].shape != s for k, s in expected.items()):
        raise ValueError(f"{LAYER}: parameters do not match the model config")
    if len({p.dtype for p in params.values()}) != 1 or params["lm_head.W"].dtype.kind != "f":
        raise ValueError(f"{LAYER}: the parameters must share one floating-point dtype")
    blocks = []
    for i in range(cfg.n_layers):
        b = scope(params, block_prefix(i))
        q, k, v, proj = (scope(b, f"attn.{name}.") for name in attention.PROJECTIONS)
        qkv = {w: np.concatenate([q[w], k[w], v[w]], axis=-1) for w in ("W", "b")}
        blocks.append(_BlockParams(scope(b, "ln1."), qkv, proj, scope(b, "ln2."), scope(b, "mlp.")))
    return _Scoped(
        scope(params, "tok_emb."),
        scope(params, "pos_emb."),
        tuple(blocks),
        scope(params, "ln_f."),
        scope(params, "lm_head."),
        params["lm_head.W"].dtype,
        linear.LinearConfig(cfg.dim, 3 * cfg.dim),
    )


def _decode(
    sp: _Scoped, cfg: ModelConfig, cache: KVCache, idx: IntArray, seen: list[Array] | None = None
) -> tuple[Array, KVCache]:
    start, t = cache.length, idx.shape[1]
    if idx.ndim != 2 or idx.shape[0] != cache.batch or t < 1 or start + t > cfg.ctx:
        raise ValueError(
            f"{LAYER}: cannot decode tokens of shape {idx.shape} after {cache.length} cached positions "
            f"of batch {cache.batch}: at most ctx = {cfg.ctx} positions fit"
        )
    rooms = cache.room(cfg.ctx)
    with checked_at_entry():  # parameters checked by _scoped, tokens above: no per-layer checks
        x, _ = embedding.forward(sp.tok_emb, idx, cfg.tok_emb)
        pos, _ = embedding.forward(sp.pos_emb, np.arange(start, start + t), cfg.pos_emb)
        x += pos  # x is a fresh gather
        for bp, room in zip(sp.blocks, rooms, strict=True):
            x = _block_step(sp, cfg, bp, x, room, start, seen)
        x, _ = layernorm.forward(sp.ln_f, x, cfg.ln_f)
        logits: Array
        logits, _ = linear.forward(sp.lm_head, x, cfg.lm_head)
    written = cache.written if rooms is cache.buffers else [0]
    written[0] = start + t
    keys, values = (tuple(room[i][:, :, : start + t] for room in rooms) for i in (0, 1))
    return logits, KVCache(keys, values, rooms, written)


def _block_step(
    sp: _Scoped, cfg: ModelConfig, bp: _BlockParams, x: Array, room: tuple[Array, Array], start: int, seen: list[Array] | None
) -> Array:
    """One block on the new positions ``x`` ``(B, t, C)`` at ``start ..``: their keys and values
    go into the free positions of ``room``, their queries attend to every position up to theirs."""
    bc, h, c = cfg.block, cfg.n_heads, cfg.dim
    end = start + x.shape[1]
    k_all, v_all = room[0][:, :, :end], room[1][:, :, :end]
    a, _ = layernorm.forward(bp.ln1, x, bc.ln1)
    qkv, _ = linear.forward(bp.qkv, a, sp.qkv)  # the attention's q, k and v projections as one linear pair
    q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
    k_all[:, :, start:], v_all[:, :, start:] = attention.split_heads(k, h), attention.split_heads(v, h)
    out, core = attention.attend(attention.split_heads(q, h), k_all, v_all)
    if seen is not None:  # recording: this block's weights (B, H, t, keys), kept by reference
        seen.append(core.weights)
    a, _ = linear.forward(bp.proj, attention.merge_heads(out), bc.attn.linear)
    x = x + a
    m, _ = layernorm.forward(bp.ln2, x, bc.ln2)
    m, _ = mlp.forward(bp.mlp, m, bc.mlp)
    return x + m


def decode(params: Params, cfg: ModelConfig, cache: KVCache, idx: IntArray) -> tuple[Array, KVCache]:
    """Logits ``(B, t, V)`` of ``t`` new tokens ``idx`` ``(B, t)`` at positions
    ``cache.length .. cache.length + t - 1``, and the cache extended by them.

    With an empty cache this is the model's evaluation-mode forward pass over
    ``idx`` (the prompt's "prefill"); afterwards one token at a time is typical.
    ``cache.length + t`` must not exceed ``ctx``.
    """
    return _decode(_scoped(params, cfg), cfg, cache, idx)


def pick_tokens(logits: Array, sampling: SamplingConfig, rng: np.random.Generator | None) -> IntArray:
    """One next token per row of ``logits`` ``(B, V)``, chosen as ``sampling`` says.

    Works in float64 whatever the model's dtype (a ``(B, V)`` array is tiny);
    ``rng`` may be None only for greedy decoding. Draws exactly one ``rng.random((B, 1))``.
    """
    if logits.ndim != 2:
        raise ValueError(f"{LAYER}: logits must be (B, V), got shape {logits.shape}")
    if sampling.temperature == 0:
        greedy: IntArray = np.argmax(logits, axis=1)
        return greedy
    if rng is None:
        raise ValueError(f"{LAYER}: sampling with temperature > 0 needs an rng")
    z = logits.astype(np.float64)
    vocab = z.shape[1]
    if sampling.top_k is not None and sampling.top_k < vocab:
        kth = np.partition(z, vocab - sampling.top_k, axis=1)[:, vocab - sampling.top_k, None]
        z[z < kth] = -np.inf
    # Shift, then divide: the likeliest logit becomes exactly 0 and the rest <= 0, so even a
    # temperature near 0 gives -inf (probability 0) rather than inf - inf = NaN.
    z -= z.max(axis=1, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):
        z /= sampling.temperature
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    if sampling.top_p is not None and sampling.top_p < 1:
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=1)
        mass_before = np.cumsum(sorted_probs, axis=1) - sorted_probs
        keep = np.empty_like(probs, dtype=bool)
        # keep a token while the likelier ones hold less than top_p: the likeliest always stays
        np.put_along_axis(keep, order, mass_before < sampling.top_p, axis=1)
        probs[~keep] = 0.0
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    # the first index whose cumulative mass exceeds u; a zero-probability token never is
    chosen: IntArray = np.minimum((cdf <= u).sum(axis=1), vocab - 1)
    return chosen


class AttentionRecorder:
    """What each head attended to while :func:`generate` chose each new token.

    After ``generate(..., recorder=r)``: ``r.weights[b, l, h, n, j]`` is how much
    head ``h`` of layer ``l`` (0-based), at the position just before generated
    token ``n`` of sequence ``b``, took from position ``j`` of the text; NaN where
    ``j`` was not in that token's context (later positions, or positions that had
    left the sliding window). Shape ``(B, n_layers, n_heads, n_new, T0 + n_new - 1)``.
    ``r.tokens`` is the whole ``(B, T0 + n_new)`` output and ``r.prompt_len`` is ``T0``.
    """

    def __init__(self) -> None:
        self.weights: Array = np.empty((0, 0, 0, 0, 0))
        self.tokens: IntArray = np.empty((0, 0), dtype=np.int64)
        self.prompt_len = 0
        self._seen: list[Array] = []  # the decoder's latest call appends each block's weights here

    def _start(self, cfg: ModelConfig, tokens: IntArray, prompt_len: int, dtype: np.dtype[Any]) -> None:
        b, total = tokens.shape
        shape = (b, cfg.n_layers, cfg.n_heads, total - prompt_len, total - 1)
        self.weights, self.tokens, self.prompt_len = np.full(shape, np.nan, dtype=dtype), tokens, prompt_len

    def _add(self, position: int) -> None:
        """The token at ``position`` was just chosen from the last query row of the weights
        the decoder left in ``_seen`` (per layer ``(B, H, t, keys)``, keys ending at ``position - 1``)."""
        seen = self._seen
        n, keys = position - self.prompt_len, seen[0].shape[-1]
        for layer, w in enumerate(seen):
            self.weights[:, layer, :, n, position - keys : position] = w[:, :, -1]
        seen.clear()


def generate(
    params: Params,
    cfg: ModelConfig,
    prompt: IntArray,
    n_new: int,
    pick: Callable[[Array], IntArray],
    *,
    recorder: AttentionRecorder | None = None,
) -> IntArray:
    """``prompt`` ``(B, T0)`` followed by ``n_new`` tokens, each ``pick(logits of the last position)``.

    ``pick`` gets ``(B, V)`` logits and returns ``(B,)`` token ids. A prompt
    longer than ``ctx`` is cut to its last ``ctx`` tokens for the model (it is
    kept whole in the output); past ``ctx`` the window slides (module docstring).
    A ``recorder`` keeps the attention weights behind each choice (:class:`AttentionRecorder`).
    """
    if not isinstance(prompt, np.ndarray) or prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"{LAYER}: prompt must be a (B, T) array of token ids with T >= 1")
    if n_new < 0:
        raise ValueError(f"{LAYER}: n_new must be >= 0, got {n_new}")
    sp = _scoped(params, cfg)
    b, t0 = prompt.shape
    tokens = np.empty((b, t0 + n_new), dtype=np.int64)
    tokens[:, :t0] = prompt
    seen: list[Array] | None = None
    if recorder is not None:
        recorder._start(cfg, tokens, t0, sp.dtype)
        seen = recorder._seen
    if n_new == 0:  # nothing to choose: skip the prompt's forward pass
        return tokens
    fresh = empty_cache(cfg, b, sp.dtype)
    logits, cache = _decode(sp, cfg, fresh, tokens[:, max(0, t0 - cfg.ctx) : t0], seen)
    for i in range(t0, t0 + n_new):
        tokens[:, i] = pick(logits[:, -1])
        if recorder is not None:
            recorder._add(i)
        if i + 1 == t0 + n_new:
            break
        if cache.length < cfg.ctx:
            logits, cache = _decode(sp, cfg, cache, tokens[:, i : i + 1], seen)
        else:  # full: recompute the window of the last ctx tokens, the new one included
            logits, cache = _decode(sp, cfg, fresh, tokens[:, i + 1 - cfg.ctx : i + 1], seen)
    return tokens


def sampling_rng(seed: int, step: int = 0) -> np.random.Generator:
    """The generator for samples of run seed ``seed`` at training step ``step``.

    Its own stream, so drawing samples never changes the training batches.
    """
    return np.random.default_rng([seed, SAMPLE_STREAM, step])


def seen_tokens(ids: IntArray, vocab_size: int) -> Array:
    """A boolean mask of the ``vocab_size`` tokens: True for those that occur in ``ids``."""
    seen = np.zeros(vocab_size, dtype=bool)
    seen[np.asarray(ids, dtype=np.int64)] = True
    return seen


def default_prompt(tokenizer: tokenizers.Tokenizer) -> str:
    """What a sample starts from when no prompt is given: a newline if the tokenizer
    can encode one (a fresh line), otherwise the text of token 0."""
    try:
        tokenizer.encode("\n")
    except DataError:
        return tokenizer.decode([0])
    return "\n"


def sample_text(
    params: Params,
    cfg: ModelConfig,
    tokenizer: tokenizers.Tokenizer,
    prompt: str,
    length: int,
    *,
    num_samples: int = 1,
    rng: np.random.Generator | None = None,
    sampling: SamplingConfig = SamplingConfig(),
    recorder: AttentionRecorder | None = None,
    allowed: Array | None = None,
) -> list[str]:
    """``num_samples`` texts, each the prompt followed by ``length`` generated tokens
    (characters, with a character tokenizer).

    An empty prompt means :func:`default_prompt`. A prompt the tokenizer cannot
    encode (characters outside a character vocabulary) raises
    :class:`bevialm.data.DataError` naming them. All samples are generated
    together, as one batch; a ``recorder`` keeps their attention. With a
    byte-level tokenizer only tokens that keep each text valid UTF-8 are drawn
    (:class:`bevialm.tokenizer.Utf8Guard`), and a character cut by the end of
    generation is left out (its decode rule). ``allowed``, a boolean mask of
    the vocabulary (:func:`seen_tokens`), keeps every other token from being drawn.
    """
    if num_samples < 1:
        raise ValueError(f"{LAYER}: num_samples must be positive, got {num_samples}")
    if cfg.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{LAYER}: the model has {cfg.vocab_size} tokens, the tokenizer {tokenizer.vocab_size}")
    ids = tokenizer.encode(prompt or default_prompt(tokenizer), what="prompt")
    batch = np.broadcast_to(ids, (num_samples, ids.size))
    guard = tokenizers.utf8_guard(tokenizer, num_samples)

    def pick(logits: Array) -> IntArray:
        masked = logits if allowed is None else np.where(allowed, logits, -np.inf)
        if guard is None:
            return pick_tokens(masked, sampling, rng)
        fits = guard.allow(masked)
        # a row whose allowed tokens all break UTF-8 (no text made that state) draws from all that fit
        stuck = ~np.isfinite(fits).any(axis=1, keepdims=True)
        chosen = pick_tokens(np.where(stuck, guard.allow(logits), fits), sampling, rng)
        guard.advance(chosen)
        return chosen

    tokens = generate(params, cfg, batch, length, pick, recorder=recorder)
    return [tokenizer.decode(row) for row in tokens]


@dataclass(frozen=True)
class LoadedModel:
    """What sampling needs from a checkpoint."""

    params: dict[str, Array]
    cfg: ModelConfig
    tokenizer: tokenizers.Tokenizer
    step: int
    seen: Array | None = None
    """The tokens of the run's data file (:func:`seen_tokens`); None for a checkpoint from before it was kept."""


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """The model in a checkpoint, checked to be one this code can run.

    Raises :class:`bevialm.checkpoint.CheckpointError` with one line when the
    file is not a usable checkpoint, does not describe a model, or holds NaN or
    infinite parameters.
    """
    name = os.fspath(path)
    ckpt = checkpoint.load_checkpoint(name)
    try:
        cfg = ModelConfig(**ckpt.model_config)
    except (TypeError, ValueError) as e:
        raise checkpoint.CheckpointError(f"checkpoint '{name}' does not describe a model ({e})") from None
    try:
        checkpoint.validate_against(ckpt, param_shapes(cfg))
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"checkpoint '{name}': {e}") from None
    tokenizer = ckpt.tokenizer
    if tokenizer.vocab_size != cfg.vocab_size:
        raise checkpoint.CheckpointError(
            f"checkpoint '{name}' has a tokenizer of {tokenizer.vocab_size} tokens for a model of {cfg.vocab_size}"
        )
    dtypes = {p.dtype for p in ckpt.params.values()}
    if len(dtypes) != 1 or not np.issubdtype(next(iter(dtypes)), np.floating):
        names = ", ".join(sorted(str(d) for d in dtypes))
        raise checkpoint.CheckpointError(f"checkpoint '{name}' parameters must share one float dtype, got {names}")
    checkpoint.require_finite(ckpt, name)
    seen = ckpt.extra.get(checkpoint.SEEN_TOKENS)
    try:
        mask = None if seen is None else checkpoint.unpack_seen(seen, cfg.vocab_size)
    except ValueError as e:
        raise checkpoint.CheckpointError(f"checkpoint '{name}': header field 'extra' is invalid ({e})") from None
    return LoadedModel(ckpt.params, cfg, tokenizer, ckpt.step, mask)


def default_checkpoint(out: str | os.PathLike[str]) -> str:
    """The checkpoint to sample from in run folder ``out``: ``best.npz`` if present, else ``last.npz``."""
    best = os.path.join(os.fspath(out), "best.npz")
    return best if os.path.exists(best) else os.path.join(os.fspath(out), "last.npz")
