"""Pictures of what a model learned: loss curves and attention maps, and a text view for the terminal.

Pure functions from data to a matplotlib ``Figure`` (nothing is drawn on screen,
nothing global is changed), so a notebook can call them, show the figure and
save it; the ``bevialm plot``, ``attention`` and ``sample --attention`` commands
only compose them:

- :func:`read_metrics` and :func:`loss_figure`: a run's ``metrics.jsonl`` (also
  while it is still being written) as train and validation loss against the step,
  with the learning rate on a second axis; several runs overlay, one colour each,
  named with their tokenizer (:func:`run_tokenizer`); :func:`in_bits_per_char` puts
  the losses in bits per character, comparable across tokenizers (``plot --bpc``).
- :func:`prompt_attention_figure`: ``model.attention_maps`` of a prompt as a grid
  of heat maps, one per layer and head, the prompt's tokens as tick labels and the
  masked (future) cells blank.
- :func:`generation_attention_figure`: what :class:`bevialm.generate.AttentionRecorder`
  kept during sampling, one strip per head: generated tokens against the positions
  they attended to.
- :func:`attention_text`: the same record as plain text, for each generated token
  the context tokens each head attended to most (ANSI colour on request).

matplotlib is an optional extra (``pip install 'bevialm[plot]'``): it is imported
only when a figure is made, and :func:`require_matplotlib` turns its absence into
one line saying how to install it. Figures are created with the Agg canvas
attached (no display needed, pyplot's global state untouched). Tokens are given as
their text (one string per token, whatever the tokenizer), and :func:`visible`
shows spaces and line breaks as glyphs.

The pictures live in :mod:`bevialm.viz_loss` and :mod:`bevialm.viz_attention`, on the shared
helpers of :mod:`bevialm.viz_figure`; this module gathers them under one name.
"""
from __future__ import annotations

from bevialm.viz_attention import (
    attention_grid,
    attention_text,
    choose,
    generation_attention_figure,
    prompt_attention_figure,
)
from bevialm.viz_figure import (
    FORMATS,
    INSTALL_HINT,
    MatplotlibMissing,
    VizError,
    check_output,
    require_matplotlib,
    save_figure,
    token_texts,
    visible,
)
from bevialm.viz_loss import (
    METRICS,
    RunMetrics,
    bits_per_char_factor,
    in_bits_per_char,
    loss_figure,
    read_metrics,
    run_tokenizer,
)

__all__ = [
    "FORMATS",
    "INSTALL_HINT",
    "METRICS",
    "MatplotlibMissing",
    "RunMetrics",
    "VizError",
    "attention_grid",
    "attention_text",
    "bits_per_char_factor",
    "check_output",
    "choose",
    "generation_attention_figure",
    "in_bits_per_char",
    "loss_figure",
    "prompt_attention_figure",
    "read_metrics",
    "require_matplotlib",
    "run_tokenizer",
    "save_figure",
    "token_texts",
    "visible",
]
