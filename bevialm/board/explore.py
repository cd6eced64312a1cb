"""The attention explorer's numbers: a checkpoint's attention over a prompt, or while it generates.

Over a prompt it is exactly what ``bevialm attention`` draws: one forward pass
(``model.forward``), ``model.attention_maps``, the tokens labelled by
:func:`bevialm.viz.token_texts` and :func:`bevialm.viz.visible`; the future cells (a key
after its query) are ``None``, as the figure leaves them blank. While generating it is
what ``bevialm sample --attention`` records: :class:`bevialm.generate.AttentionRecorder`
on the key/value-cache decoder, ``None`` where a position was not in a token's context.
The weights are sent as the model computed them (float32 values are exact as JSON
numbers), so the page shows the same numbers as the command line.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from bevialm import generate, model, viz
from bevialm.data import DataError, Vocab
from bevialm.types import Array

MAX_PROMPT_CHARS = 4000  # characters in a request; the model's ctx bounds the tokens
MAX_NEW_TOKENS = 200
MAX_WEIGHTS = 4_000_000  # numbers in one answer (layers x heads x rows x columns)


class ExploreError(ValueError):
    """A request the explorer cannot answer (a prompt too long, a broken checkpoint): one line."""


class ModelCache:
    """Models loaded once per version of their checkpoint file; the latest few kept."""

    def __init__(self, size: int = 4) -> None:
        self._items: OrderedDict[tuple[str, int, int], generate.LoadedModel] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, path: str) -> generate.LoadedModel:
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        loaded = generate.load_model(path)
        with self._lock:
            self._items[key] = loaded
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return loaded


def _nested(weights: Array) -> list[Any]:
    """``weights`` as nested lists of floats, ``None`` for NaN."""
    boxed = weights.astype(object)
    boxed[np.isnan(weights)] = None
    out: list[Any] = boxed.tolist()
    return out


def _labels(loaded: generate.LoadedModel, ids: Array) -> list[str]:
    return [viz.visible(t) for t in viz.token_texts(loaded.tokenizer, ids)]


def _encode(loaded: generate.LoadedModel, prompt: str) -> Array:
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ExploreError(f"the prompt has {len(prompt):,} characters; the board takes at most {MAX_PROMPT_CHARS:,}")
    try:
        ids = loaded.tokenizer.encode(prompt, what="prompt")
    except DataError as e:
        raise ExploreError(str(e)) from None
    unit = "character" if isinstance(loaded.tokenizer, Vocab) else "token"
    ctx = loaded.cfg.ctx
    if ids.size == 0:
        raise ExploreError("type a prompt first")
    if ids.size > ctx:
        raise ExploreError(f"the prompt has {ids.size} {unit}s; this model reads at most ctx = {ctx}: shorten it")
    return ids


def _header(loaded: generate.LoadedModel) -> dict[str, Any]:
    cfg = loaded.cfg
    return {"layers": cfg.n_layers, "heads": cfg.n_heads, "ctx": cfg.ctx, "step": loaded.step}


def prompt_attention(loaded: generate.LoadedModel, prompt: str) -> dict[str, Any]:
    """Every layer's and head's attention over ``prompt``: ``weights[l][h][query][key]``."""
    ids = _encode(loaded, prompt)
    _, cache = model.forward(loaded.params, ids[None, :], loaded.cfg)
    maps = np.stack([np.asarray(m)[0] for m in model.attention_maps(cache)]).astype(np.float64)
    t = ids.size
    maps[..., np.triu(np.ones((t, t), dtype=bool), k=1)] = np.nan  # the future: blank, as in the figure
    labels = _labels(loaded, ids)
    return {**_header(loaded), "mode": "prompt", "tokens": labels, "prompt_len": t, "weights": _nested(maps)}


def generation_attention(
    loaded: generate.LoadedModel, prompt: str, n_new: object, temperature: object, seed: object
) -> dict[str, Any]:
    """What each head attended to while each of ``n_new`` tokens was generated:
    ``weights[l][h][n][position]`` over the text's first ``prompt_len + n_new - 1`` tokens."""
    if isinstance(n_new, bool) or not isinstance(n_new, int) or not 1 <= n_new <= MAX_NEW_TOKENS:
        raise ExploreError(f"tokens to generate must be a whole number from 1 to {MAX_NEW_TOKENS}")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (0 <= temperature <= 10 and math.isfinite(temperature)):
        raise ExploreError("temperature must be a number from 0 to 10")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ExploreError("seed must be a whole number from 0 to 2**32 - 1")
    ids = _encode(loaded, prompt)
    cfg = loaded.cfg
    if cfg.n_layers * cfg.n_heads * n_new * (ids.size + n_new) > MAX_WEIGHTS:
        raise ExploreError(f"{n_new} tokens of this model's attention is too much to show: generate fewer")
    recorder = generate.AttentionRecorder()
    generate.sample_text(
        loaded.params,
        cfg,
        loaded.tokenizer,
        prompt,
        n_new,
        rng=generate.sampling_rng(seed),
        sampling=generate.SamplingConfig(float(temperature)),
        recorder=recorder,
    )
    weights = recorder.weights[0].astype(np.float64)
    labels = _labels(loaded, recorder.tokens[0])
    return {**_header(loaded), "mode": "generate", "tokens": labels, "prompt_len": recorder.prompt_len, "weights": _nested(weights)}
