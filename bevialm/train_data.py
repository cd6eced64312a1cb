"""A run's text as tokens: the tokenizer (built from the text, or ``--init_from``'s), the
train/validation split, and what bits per character are measured against."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

from bevialm import generate
from bevialm import tokenizer as tokenizers
from bevialm.data import DataError, Vocab, load_text, split
from bevialm.runs import TrainError
from bevialm.train_config import TrainConfig
from bevialm.types import Array, IntArray


@dataclass(frozen=True)
class RunData:
    """The tokens of a run and what was learned reading them.

    ``seen`` marks the tokens the data file holds (what samples may draw); ``val_chars`` is the
    validation text's length in characters; ``init`` is ``--init_from``'s model (its weights
    start a fine-tuning run) and ``init_note`` what it changed of the flags.
    """

    tokenizer: tokenizers.Tokenizer
    train: IntArray
    val: IntArray
    seen: Array
    text_chars: int
    val_chars: int
    tokenizer_seconds: float = 0.0
    init: generate.LoadedModel | None = None
    init_note: str | None = None

    def bits_per_char(self, val_loss: float) -> float:
        """``val_loss`` (mean nats per token) as bits per character of the validation text:
        the total nats (mean times its tokens) over its characters, over ln 2."""
        return val_loss * len(self.val) / self.val_chars / math.log(2)


def _from_init(cfg: TrainConfig) -> tuple[TrainConfig, generate.LoadedModel, str | None]:
    """``--init_from``: the checkpoint's model shape and tokenizer replace the flags' (a note says
    which changed); its weights become the fresh run's, cast to ``--dtype``."""
    assert cfg.init_from is not None
    init = generate.load_model(cfg.init_from)
    m = init.cfg
    shape: dict[str, Any] = {"ctx": m.ctx, "dim": m.dim, "layers": m.n_layers, "heads": m.n_heads}
    shape |= {"mlp_hidden": m.mlp_hidden, "activation": m.activation}
    changed = [f"--{k} {getattr(cfg, k)} -> {v}" for k, v in shape.items() if getattr(cfg, k) != v]
    kind = "char" if isinstance(init.tokenizer, Vocab) else "bpe"
    note = f"note: --init_from: the model's shape is the checkpoint's ({', '.join(changed)})" if changed else None
    return dataclasses.replace(cfg, **shape, tokenizer=kind, vocab_size=None), init, note


def load_data(cfg: TrainConfig) -> tuple[TrainConfig, RunData]:
    """Read and tokenize ``cfg.data``; the config comes back with ``--init_from``'s shape, if given.
    :class:`TrainError` (or :class:`DataError`) in one line when the text cannot serve the run."""
    text = load_text(cfg.data)
    init, note, seconds = None, None, 0.0
    if cfg.init_from is not None:
        cfg, init, note = _from_init(cfg)
        tokenizer = init.tokenizer
    else:
        start = time.perf_counter()
        tokenizer = tokenizers.build(text, cfg.tokenizer, cfg.vocab_size)
        seconds = time.perf_counter() - start
    try:
        ids = tokenizer.encode(text, what=f"data file '{cfg.data}'")
    except DataError as e:  # a character vocabulary that is not the text's own: --init_from's
        if cfg.init_from is None or not isinstance(tokenizer, Vocab):
            raise
        raise DataError(f"{e}; fine-tuning keeps the vocabulary of '{cfg.init_from}'") from None
    train, val = split(ids, cfg.val_fraction)
    need = cfg.ctx + 1
    unit = "characters" if cfg.tokenizer == "char" else "tokens"
    for part, tokens in (("training part", train), ("validation part", val)):
        if len(tokens) < need:
            raise TrainError(
                f"data file '{cfg.data}' is too short for --ctx {cfg.ctx}: its {part} has {len(tokens)} "
                f"{unit} of {len(ids)}, at least ctx + 1 = {need} are needed "
                f"(the last {cfg.val_fraction:.0%} is validation); use a longer text or a smaller --ctx"
            )
    seen = generate.seen_tokens(ids, tokenizer.vocab_size)
    return cfg, RunData(tokenizer, train, val, seen, len(text), tokenizer.count_chars(val), seconds, init, note)
