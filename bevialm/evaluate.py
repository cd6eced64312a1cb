"""``bevialm eval``: a checkpoint's loss over a whole text, as nats per token, bits per character
and perplexity.

The text is cut into consecutive windows of ``ctx`` tokens; each window predicts its
next ``ctx`` tokens, so every token after the first is scored exactly once (the first
has nothing to be predicted from). A token early in a window sees less context than
one late in it, as in training's own evaluation. Windows go through the model
``batch`` at a time, in evaluation mode (no dropout); the sum of the losses is kept
in float64.

- loss: mean cross-entropy in nats per scored token;
- bits per character: the summed nats over the characters the scored tokens cover, over
  ln 2 (for a character tokenizer, loss / ln 2), which compares tokenizers;
- perplexity: ``exp(loss)``, per token.

A character-level model cannot score characters it never saw: the text is refused
with one line naming them (:meth:`bevialm.data.Vocab.encode`), never guessed at.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from bevialm import losses, model
from bevialm.data import DataError
from bevialm.types import Array, IntArray

PROGRESS_SECONDS = 1.0
"""A progress line at most this often, and only once scoring has taken this long."""


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_ids` measured."""

    tokens: int  # scored tokens (all but the first)
    characters: int  # characters those tokens cover
    nats: float  # summed cross-entropy

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    @property
    def bits_per_char(self) -> float:
        return self.nats / self.characters / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf  # exp overflows past ~709


def windows(ids: IntArray, ctx: int) -> list[tuple[IntArray, IntArray]]:
    """Inputs and targets ``(x, y)`` covering ``ids[1:]`` once: full windows of ``ctx`` stacked in
    one array, then (when ``len(ids) - 1`` is not a multiple of ``ctx``) the shorter last one."""
    scored = len(ids) - 1
    full = scored // ctx
    parts = []
    if full:
        x = ids[: full * ctx].reshape(full, ctx)
        y = ids[1 : full * ctx + 1].reshape(full, ctx)
        parts.append((x, y))
    if scored % ctx:
        parts.append((ids[full * ctx : -1][None, :], ids[full * ctx + 1 :][None, :]))
    return parts


def evaluate_ids(
    params: dict[str, Array],
    cfg: model.ModelConfig,
    ids: IntArray,
    count_chars: Callable[[IntArray], int],
    batch: int,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score every token of ``ids`` after the first; ``progress(done, total)`` counts scored tokens."""
    if len(ids) < 2:
        raise DataError(f"the text has {len(ids)} token(s): at least 2 are needed to score one")
    total = len(ids) - 1
    nats, done = 0.0, 0
    for x_all, y_all in windows(ids, cfg.ctx):
        for start in range(0, len(x_all), batch):
            x, y = x_all[start : start + batch], y_all[start : start + batch]
            logits, _ = model.forward(params, x, cfg)
            mean, _ = losses.cross_entropy(logits, y)
            nats += float(mean) * y.size
            done += y.size
            if progress is not None:
                progress(done, total)
    return Evaluation(total, count_chars(ids[1:]), nats)


def progress_printer(
    write: Callable[[str], object], is_tty: bool, clock: Callable[[], float] = time.perf_counter
) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` that writes a line once scoring has run ``PROGRESS_SECONDS``, then at
    most that often: rewritten in place on a terminal (a carriage return), a line each otherwise."""
    start = last = clock()
    shown = False

    def progress(done: int, total: int) -> None:
        nonlocal last, shown
        now = clock()
        if done < total and now - last < PROGRESS_SECONDS:
            return
        if done == total and not shown:
            return  # short texts: no progress line at all
        last, shown = now, True
        line = f"scored {done:,} of {total:,} tokens ({done / total:.0%}, {now - start:.0f} s)"
        write(f"\r{line}" + ("\n" if done == total else "") if is_tty else line + "\n")

    return progress


def summary(ev: Evaluation) -> str:
    return (
        f"loss {ev.loss:.4f} nats/token | {ev.bits_per_char:.4f} bits/char | perplexity {ev.perplexity:.3f} "
        f"({ev.tokens:,} tokens, {ev.characters:,} characters scored)"
    )


def as_json(ev: Evaluation, checkpoint: str, step: int, data: str) -> dict[str, object]:
    return {
        "checkpoint": checkpoint,
        "step": step,
        "data": data,
        "tokens": ev.tokens,
        "characters": ev.characters,
        "loss": ev.loss,
        "bits_per_char": ev.bits_per_char,
        "perplexity": ev.perplexity if math.isfinite(ev.perplexity) else None,
    }
