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

(Longer than the project's 500 lines: the loss and attention figures share the figure,
label and layout helpers above them, and splitting the module would split those.)
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bevialm import metrics
from bevialm.types import Array

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install 'bevialm[plot]' (in a clone of the repository: make install)"
FORMATS = (".png", ".svg")
METRICS = "metrics.jsonl"

_GLYPHS = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
_MONO = "DejaVu Sans Mono"  # ships with matplotlib; has the glyphs above
_LABEL_PT = 7.0  # tick labels: 7 pt monospace, ~0.1 in per label
_CELL_IN = 0.11  # a heat-map cell, in inches, while every token gets its label
_MAX_LABELS = 64  # beyond this many tokens on an axis, label every k-th one and shrink the cells
_LONG_AXIS_IN = 4.8  # the shortest a long axis gets (256 tokens: ~1.9 pixels each at 100 dpi)
_MIN_PANEL_IN = 1.7  # a panel is never smaller than this (room for its title)
_MIN_BAR_IN = 2.0  # the colour bar is never shorter than this (room for its ticks and label)
_WRAP_IN = 10.0  # one layer's heads wrap to stay this wide: 1,000 pixels, a docs page's width at 100 dpi


class VizError(ValueError):
    """Input a picture cannot be made from (a missing run, an empty metrics file, ...): one line."""


class MatplotlibMissing(VizError):
    """matplotlib is not installed; the message says how to install it."""


def require_matplotlib() -> None:
    """Raise :class:`MatplotlibMissing` (one line with the install command) if matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MatplotlibMissing(f"drawing needs matplotlib, which is not installed: {INSTALL_HINT}") from None


def _new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas: pinned, so nothing ever needs a display."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def visible(token: str) -> str:
    """``token`` with space, newline, tab and carriage return as visible glyphs (``␣ ↵ ⇥ ␍``),
    other control characters as their Unicode control pictures."""
    return "".join(_GLYPHS.get(c, chr(0x2400 + ord(c)) if ord(c) < 0x20 else c) for c in token)


def token_texts(tokenizer: Any, ids: Sequence[int] | Array) -> list[str]:
    """Each token's own text, for labels: ``tokenizer.decode([id])`` one token at a time.

    A byte-level token that is only part of a character (a BPE token holding some of
    the bytes of ``é``) has no text of its own; it is shown as its bytes, ``\\xc3``
    (when the tokenizer has ``token_bytes``), rather than as nothing or ``�``.
    """
    texts = []
    for i in np.asarray(ids).tolist():
        text = tokenizer.decode([i])
        if (not text or "\ufffd" in text) and hasattr(tokenizer, "token_bytes"):
            text = "".join(f"\\x{b:02x}" for b in tokenizer.token_bytes(i))
        texts.append(text)
    return texts


# --- output files -------------------------------------------------------------------------------


def check_output(path: str) -> str:
    """``path`` if a figure can be written there: a ``.png`` or ``.svg`` name in an existing folder."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise VizError(f"output '{path}' must end in .png or .svg (the file's format follows its extension)")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise VizError(f"output folder '{folder}' does not exist (for '{path}')")
    return path


def save_figure(fig: Figure, path: str, dpi: float = 100) -> tuple[int, int]:
    """Write ``fig`` to ``path`` (PNG or SVG, by the extension); returns its size in pixels
    (a PNG's as written; an SVG's at ``dpi``)."""
    check_output(path)
    fig.savefig(path, dpi=dpi, facecolor="white")
    if path.lower().endswith(".png"):
        with open(path, "rb") as f:
            header = f.read(24)  # the signature, then the IHDR chunk: width and height, big-endian
        return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    width, height = fig.get_size_inches() * dpi
    return int(width), int(height)


# --- loss curves --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunMetrics:
    """A run's ``metrics.jsonl``: the logged training loss (the mean since the previous
    log line) and the evaluations, each against the step, with the learning rate."""

    name: str
    train_step: Array
    train_loss: Array
    train_lr: Array
    eval_step: Array
    eval_train: Array
    eval_val: Array
    eval_lr: Array
    skipped: int = 0
    """Lines of the file that are not metrics records (:mod:`bevialm.metrics`), left out."""


def read_metrics(run: str) -> RunMetrics:
    """The metrics of run folder ``run`` (or of a ``metrics.jsonl`` named directly).

    A run still training is fine: a last line cut short is skipped. Lines that are not
    records (garbage, a record without ``step``, a string for a number) are skipped and
    counted in ``skipped`` (:mod:`bevialm.metrics`). A missing folder or file, or one
    without a single record, raises :class:`VizError`.
    """
    path = run if os.path.isfile(run) else os.path.join(run, METRICS)
    if not os.path.exists(run):
        raise VizError(f"run folder '{run}' does not exist")
    if not os.path.isfile(path):
        raise VizError(f"run folder '{run}' has no {METRICS} (is it a run folder?)")
    with open(path, encoding="utf-8", errors="replace") as f:
        found = metrics.read_records(f)
    nan = math.nan
    train = [(r["step"], r["loss"], r.get("lr", nan)) for r in found.records if r["kind"] == "train"]
    evals = [
        (r["step"], r.get("train_loss", nan), r.get("val_loss", nan), r.get("lr", nan))
        for r in found.records
        if r["kind"] == "eval"
    ]
    if not train and not evals and found.skipped:
        raise VizError(f"'{path}' holds no metrics: none of its {found.skipped} lines is a metrics record")
    if not train and not evals:
        raise VizError(f"'{path}' holds no metrics yet (a run writes its first line at its first log or evaluation)")
    t = np.array(train, dtype=np.float64).reshape(-1, 3)
    e = np.array(evals, dtype=np.float64).reshape(-1, 4)
    name = os.path.normpath(os.path.dirname(run) or ".") if path == run else os.path.normpath(run)
    return RunMetrics(name, t[:, 0], t[:, 1], t[:, 2], e[:, 0], e[:, 1], e[:, 2], e[:, 3], found.skipped)


def run_tokenizer(run: str) -> str | None:
    """What tokenizer run folder ``run`` was trained with (``"characters, 65 tokens"``), read
    from its ``last.npz`` or ``best.npz``; None when it has no readable checkpoint."""
    from bevialm import checkpoint
    from bevialm import tokenizer as tokenizers

    folder = os.path.dirname(run) if os.path.isfile(run) else run
    for name in ("last.npz", "best.npz"):
        try:
            return tokenizers.describe(checkpoint.load_checkpoint(os.path.join(folder, name)).tokenizer)
        except (ValueError, OSError):
            continue
    return None


def bits_per_char_factor(run: str) -> float:
    """Bits per character per nat per token for run ``run``: its evaluations' ``val_bpc / val_loss``
    (the validation text's tokens per character, over ln 2; the same at every evaluation).
    :class:`VizError` when no evaluation has recorded ``val_bpc`` yet."""
    path = run if os.path.isfile(run) else os.path.join(run, METRICS)
    factor = None
    with open(path, encoding="utf-8", errors="replace") as f:
        records = metrics.read_records(f).records
    for r in records:
        if r["kind"] == "eval":
            bpc, loss = r.get("val_bpc"), r.get("val_loss")
            if isinstance(bpc, int | float) and isinstance(loss, int | float) and loss > 0 and math.isfinite(bpc / loss):
                factor = bpc / loss
    if factor is None:
        raise VizError(f"'{path}' has no evaluation with bits per character yet: plot it without --bpc, or after its first evaluation")
    return float(factor)


def in_bits_per_char(m: RunMetrics, factor: float) -> RunMetrics:
    """``m`` with every loss in bits per character (``factor`` from :func:`bits_per_char_factor`).

    Exact for the validation loss; the training loss is converted with the validation text's
    tokens per character (the same for a character tokenizer, close for BPE on similar text).
    """
    return RunMetrics(m.name, m.train_step, m.train_loss * factor, m.train_lr, m.eval_step, m.eval_train * factor, m.eval_val * factor, m.eval_lr)


def loss_figure(
    runs: Sequence[RunMetrics],
    title: str | None = None,
    *,
    tokenizers: Sequence[str | None] | None = None,
    bpc: bool = False,
) -> Figure:
    """Train and validation loss against the step, the learning rate on a second axis.

    One colour per run; the line style says what a line is (a legend for each). ``tokenizers``
    (one per run) are named beside the run folders in the legend; ``bpc`` says the losses are
    in bits per character (:func:`in_bits_per_char`), which the y axis then says.
    """
    require_matplotlib()
    from matplotlib.lines import Line2D

    if not runs:
        raise VizError("loss_figure needs at least one run")
    run_rows = math.ceil(len(runs) / 2)
    legend_h = 0.25 + 0.2 * max(3, run_rows)  # under the plot: what the styles mean, which colour is which run
    width, plot_h = 8.0, 3.8
    height = 0.45 + plot_h + 0.55 + legend_h
    fig = _new_figure(width, height)
    ax = fig.add_axes((0.8 / width, (0.55 + legend_h) / height, 6.3 / width, plot_h / height))
    lr_ax = ax.twinx()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for run, c in zip(runs, colours, strict=True):
        ax.plot(run.train_step, run.train_loss, color=c, lw=1.2, alpha=0.75)
        ax.plot(run.eval_step, run.eval_val, color=c, lw=2.0, marker="o", ms=4)
        for steps, lr in ((run.train_step, run.train_lr), (run.eval_step, run.eval_lr)):
            if np.isfinite(lr).any():  # the log lines' rates when there are any, else the evaluations'
                lr_ax.plot(steps, lr, color=c, lw=1.0, ls=":")
                break
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character (validation text's)" if bpc else "loss (cross-entropy, nats per token)")
    lr_ax.set_ylabel("learning rate", color="0.35")
    lr_ax.tick_params(axis="y", colors="0.35")
    lr_ax.set_ylim(bottom=0)
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.grid(True, alpha=0.3)
    ax.set_xlim(left=0)
    styles = [
        Line2D([], [], color="0.2", lw=1.2, alpha=0.75, label="train (mean since the previous log line)"),
        Line2D([], [], color="0.2", lw=2.0, marker="o", ms=4, label="validation (at each evaluation)"),
        Line2D([], [], color="0.2", lw=1.0, ls=":", label="learning rate (right axis)"),
    ]
    named = list(tokenizers) if tokenizers is not None else [None] * len(runs)
    names = [
        Line2D([], [], color=c, lw=3, label=r.name + (f" ({t})" if t else ""))
        for r, c, t in zip(runs, colours, named, strict=True)
    ]
    below = 0.1 / height
    fig.legend(handles=styles, loc="lower left", bbox_to_anchor=(0.8 / width, below), fontsize=8, frameon=False)
    fig.legend(
        handles=names,
        loc="lower left",
        bbox_to_anchor=(4.4 / width, below),
        ncol=1 if len(runs) < 4 else 2,
        fontsize=8,
        frameon=False,
        title="run folder (tokenizer)" if tokenizers is not None else "run folder",
        title_fontsize=8,
        alignment="left",
    )
    fig.text(0.8 / width, 1 - 0.12 / height, _wrap(title or ("bits per character: " if bpc else "loss: ") + ", ".join(r.name for r in runs), width - 1), fontsize=10, va="top")
    return fig


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _wrap(text: str, inches: float, points: float = 10) -> str:
    """``text`` broken into lines that fit ``inches`` at a font size of ``points``."""
    return textwrap.fill(text, max(20, int(inches * 72 / (0.55 * points))))


# --- attention maps -----------------------------------------------------------------------------


def choose(count: int, pick: int | None, what: str) -> list[int]:
    """The 0-based indices to draw: all ``count`` of them, or the 1-based ``pick``, checked."""
    if pick is None:
        return list(range(count))
    if not 1 <= pick <= count:
        plural = what + ("s" if count != 1 else "")
        raise VizError(f"{what} {pick} is out of range: the model has {count} {plural} (1 to {count})")
    return [pick - 1]


def _axis(n: int) -> tuple[float, int]:
    """An axis of ``n`` tokens: the cell size in inches and the label stride (1: every token).

    Up to 64 tokens, every one has its label, 0.11 in apart. A longer axis is an overview:
    it shrinks towards 4.8 in (the picture's pixels, hence its drawing time, stay bounded)
    and labels every k-th token, still 0.11 in apart.
    """
    if n <= _MAX_LABELS:
        return _CELL_IN, 1
    length = max(_LONG_AXIS_IN, _CELL_IN * _MAX_LABELS * _MAX_LABELS / n)
    return length / n, math.ceil(n * _CELL_IN / length)


def _label_axis(fig: Figure, ax: Axes, which: Literal["x", "y"], labels: Sequence[str], stride: int) -> None:
    """Write every ``stride``-th token (made visible) beside its column (x) or row (y).

    Plain text artists, not matplotlib ticks: a tick is five artists with copied properties,
    and a grid of maps has hundreds of labels (ticks took 1.2 to 1.6 times the CPU time).
    Each label's artist is named ``"x-token"`` or ``"y-token"`` (its ``get_label()``).
    """
    from matplotlib.transforms import offset_copy

    texts = [(i, visible(labels[i])) for i in range(0, len(labels), stride)]
    kw: dict[str, Any] = {"fontfamily": _MONO, "fontsize": _LABEL_PT, "parse_math": False, "label": f"{which}-token"}
    if which == "x":
        below = offset_copy(ax.get_xaxis_transform(), fig=fig, y=-2, units="points")
        upright = all(len(t) <= 1 for _, t in texts)
        for i, t in texts:
            ax.text(i, 0, t, transform=below, ha="center", va="top", rotation=0 if upright else 90, **kw)
    else:
        left = offset_copy(ax.get_yaxis_transform(), fig=fig, x=-2, units="points")
        for i, t in texts:
            ax.text(0, i, t, transform=left, ha="right", va="center", **kw)


def _label_room(labels: Sequence[str], vertical: bool) -> float:
    """Inches the tick labels of an axis need beside it."""
    longest = max((len(visible(t)) for t in labels), default=1)
    if vertical and longest <= 1:
        return 0.2  # one glyph, written upright under its column
    return 0.08 + 0.062 * longest


def attention_grid(
    weights: Array,
    query_tokens: Sequence[str],
    key_tokens: Sequence[str],
    *,
    layers: Sequence[int],
    heads: Sequence[int],
    title: str,
    xlabel: str,
    ylabel: str,
    boundary: int | None = None,
) -> Figure:
    """Heat maps of ``weights[l, h]`` (``(Q, K)`` each, NaN = masked, drawn blank) for the
    0-based ``layers`` (rows) and ``heads`` (columns), one shared colour bar from 0 to 1.

    ``query_tokens`` label the rows (y) and ``key_tokens`` the columns (x) of every map;
    labels are drawn on the outer maps only. ``boundary``, if given, is a key position
    before which a dashed line is drawn (where the prompt ends).
    """
    require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.colors import PowerNorm

    n_q, n_k = weights.shape[-2:]
    if (len(query_tokens), len(key_tokens)) != (n_q, n_k):
        raise VizError(
            f"attention_grid: {len(query_tokens)} query and {len(key_tokens)} key labels "
            f"for maps of shape {(n_q, n_k)}"
        )
    (cell_x, stride_x), (cell_y, stride_y) = _axis(n_k), _axis(n_q)
    panel_w, panel_h = max(_MIN_PANEL_IN, n_k * cell_x), max(_MIN_PANEL_IN * 0.5, n_q * cell_y)
    gap_x, gap_y = 0.25, 0.45  # between maps: a title's height above each
    room_y, room_x = _label_room(query_tokens, False), _label_room(key_tokens, True)  # beside the maps
    left, bottom = 0.35 + room_y, 0.3 + room_x  # the labels, then the axis names
    right = 1.15  # the colour bar and its label
    # One layer: its heads wrap into as many columns as fit in _WRAP_IN (a page's width), each
    # row of maps with its own token labels. Several layers: a row per layer, a column per head.
    placed = [(r, c, layer, head) for r, layer in enumerate(layers) for c, head in enumerate(heads)]
    wrapped = len(layers) == 1 and len(heads) > 1
    if wrapped:
        cols = max(1, min(len(heads), int((_WRAP_IN - left - right + gap_x) // (panel_w + gap_x))))
        placed = [(i // cols, i % cols, layers[0], head) for i, head in enumerate(heads)]
        gap_y += room_x
    nr, nc = max(p[0] for p in placed) + 1, max(p[1] for p in placed) + 1
    width = left + nc * panel_w + (nc - 1) * gap_x + right
    title = _wrap(title, width - left - 0.2)
    top = 0.55 + 0.18 * title.count("\n")  # the title, and the first maps' titles
    grid_h = nr * panel_h + (nr - 1) * gap_y
    bar_h = min(max(grid_h, _MIN_BAR_IN), 4.0)  # beside the top row; tall enough for its labels
    grid_top = bottom + max(grid_h, bar_h)
    height = grid_top + top + 0.25
    fig = _new_figure(width, height)
    cmap = colormaps["viridis"].with_extremes(bad="white")
    # square-root colour scale: a head spreading its weight evenly over 64 positions (1/64 each)
    # is still visible against one ignoring them, and a weight near 1 stands out as bright
    norm = PowerNorm(0.5, vmin=0.0, vmax=1.0)
    image = None
    for r, c, layer, head in placed:
        x0 = left + c * (panel_w + gap_x)
        y0 = grid_top - (r + 1) * panel_h - r * gap_y
        ax = fig.add_axes((x0 / width, y0 / height, panel_w / width, panel_h / height))
        image = ax.imshow(
            np.ma.masked_invalid(weights[layer, head]),
            cmap=cmap,
            norm=norm,
            interpolation="nearest",
            aspect="auto",
        )
        if boundary is not None and 0 < boundary < n_k:
            ax.axvline(boundary - 0.5, color="0.5", lw=0.8, ls="--")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8, pad=3)
        if r == nr - 1 or wrapped:  # labels on the outer maps only: the others share them
            _label_axis(fig, ax, "x", key_tokens, stride_x)
            ax.text(0.5, -room_x / panel_h, xlabel, transform=ax.transAxes, ha="center", va="top", fontsize=8)
        if c == 0:
            _label_axis(fig, ax, "y", query_tokens, stride_y)
            ax.text(-room_y / panel_w, 0.5, ylabel, transform=ax.transAxes, ha="right", va="center", rotation=90, fontsize=8)
    assert image is not None  # layers and heads are never empty
    bar = fig.add_axes(((width - right + 0.25) / width, (grid_top - bar_h) / height, 0.16 / width, bar_h / height))
    bar.set_label("colorbar")
    fig.colorbar(image, cax=bar, ticks=[0, 0.01, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1]).set_label(
        "weight (square-root scale)", fontsize=8
    )
    bar.tick_params(labelsize=7)
    fig.text(left / width, (height - 0.2) / height, title, fontsize=10, va="top")
    return fig


def _causal_nan(maps: Array) -> Array:
    """``maps`` ``(..., T, T)`` as float64 with every future cell (key after query) NaN."""
    out = np.array(maps, dtype=np.float64)
    t = out.shape[-1]
    out[..., np.triu(np.ones((t, t), dtype=bool), k=1)] = np.nan
    return out


def prompt_attention_figure(
    maps: Sequence[Array] | Array,
    tokens: Sequence[str],
    *,
    layer: int | None = None,
    head: int | None = None,
    title: str | None = None,
) -> Figure:
    """The attention over a prompt: one heat map per layer and head.

    ``maps`` is ``model.attention_maps(cache)`` of a forward pass over the prompt
    (a list, per layer, of ``(1, H, T, T)`` or ``(H, T, T)``; or one ``(L, H, T, T)``
    array); ``tokens`` the prompt's ``T`` tokens as text. ``layer`` and ``head``
    (1-based) draw only that layer or head. Future cells are blank.
    """
    w = np.stack([np.asarray(m).reshape(np.asarray(m).shape[-3:]) for m in maps]) if isinstance(maps, list | tuple) else np.asarray(maps)
    if w.ndim != 4 or w.shape[-1] != w.shape[-2] or w.shape[-1] != len(tokens):
        raise VizError(f"attention maps of shape {w.shape} do not fit a prompt of {len(tokens)} tokens")
    layers, heads = choose(w.shape[0], layer, "layer"), choose(w.shape[1], head, "head")
    return attention_grid(
        _causal_nan(w),
        tokens,
        tokens,
        layers=layers,
        heads=heads,
        title=title or f"attention over a prompt of {_count(len(tokens), 'token')} (row: query, column: the key it reads)",
        xlabel="key (read)",
        ylabel="query",
    )


def generation_attention_figure(
    weights: Array,
    tokens: Sequence[str],
    prompt_len: int,
    *,
    layer: int | None = None,
    head: int | None = None,
    title: str | None = None,
) -> Figure:
    """What each head attended to while each token was generated: one strip per layer and head.

    ``weights`` is one sequence's ``AttentionRecorder.weights[b]``, ``(L, H, N, T - 1)``;
    ``tokens`` the whole text's ``T = prompt_len + N`` tokens. Row ``n`` of a strip is
    generated token ``n``, its columns the positions it could attend to (NaN: blank).
    Columns no token attended to (a prompt longer than the context) are left out.
    """
    w = np.asarray(weights, dtype=np.float64)
    n_new = len(tokens) - prompt_len
    if w.ndim != 4 or w.shape[2:] != (n_new, len(tokens) - 1) or n_new < 1:
        raise VizError(f"recorded attention of shape {w.shape} does not fit {prompt_len} prompt and {n_new} generated tokens")
    layers, heads = choose(w.shape[0], layer, "layer"), choose(w.shape[1], head, "head")
    seen = np.flatnonzero(np.isfinite(w).any(axis=(0, 1, 2)))
    first = int(seen[0]) if seen.size else 0
    return attention_grid(
        w[..., first:],
        tokens[prompt_len:],
        tokens[first:-1],
        layers=layers,
        heads=heads,
        title=title
        or f"attention while generating {_count(n_new, 'token')}: row, the generated token; column, what it read "
        "(dashed line: end of the prompt)",
        xlabel="context (read)",
        ylabel="generated token",
        boundary=prompt_len - first,
    )


# --- the terminal -------------------------------------------------------------------------------

_BOLD, _DIM, _RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"


def _weight(w: float) -> str:
    """A weight in three characters: ``.62``, ``.05``, ``1.0``."""
    return "1.0" if w >= 0.995 else f"{w:.2f}"[1:]


def attention_text(
    weights: Array,
    tokens: Sequence[str],
    prompt_len: int,
    *,
    layer: int | None = None,
    head: int | None = None,
    top: int = 3,
    color: bool = False,
) -> str:
    """For each generated token, the ``top`` context tokens each head of one layer attended to most.

    ``weights`` and ``tokens`` as in :func:`generation_attention_figure`; ``layer`` (from 1;
    default the last) is the layer shown, ``head`` (from 1) one head instead of all. One
    line per generated token: the token, then per head its ``top`` keys as ``token distance
    weight`` (distance -1: the token just before the generated one). With ``color``, heavy
    weights are bold and light ones dim (ANSI escape codes: for a terminal only).
    """
    w = np.asarray(weights, dtype=np.float64)
    n_new = len(tokens) - prompt_len
    if w.ndim != 4 or w.shape[2:] != (n_new, len(tokens) - 1):
        raise VizError(f"recorded attention of shape {w.shape} does not fit {prompt_len} prompt and {n_new} generated tokens")
    layer = choose(w.shape[0], layer, "layer")[-1]
    heads = choose(w.shape[1], head, "head")
    top = max(1, min(top, w.shape[-1]))
    glyphs = [visible(t) for t in tokens]
    glyph_w = max((len(g) for g in glyphs), default=1)
    dist_w = len(str(w.shape[-1]))  # "-" and the digits of the largest distance
    entry_w = glyph_w + 1 + dist_w + 1 + 1 + 3
    col_w = top * entry_w + (top - 1) * 2
    first_w = max(len("token"), glyph_w)
    lines = [
        f"layer {layer + 1} of {w.shape[0]}: for each generated token, the {top} context tokens each head "
        "attends to most (token, distance back, weight)",
        f"{'token':<{first_w}} │ " + " │ ".join(f"{'head ' + str(h + 1):<{col_w}}" for h in heads),
    ]
    for n in range(n_new):
        position = prompt_len + n
        cells = []
        for h in heads:
            row = np.nan_to_num(w[layer, h, n], nan=-1.0)
            order = np.argsort(-row, kind="stable")[:top]
            entries = []
            for j in order:
                if row[j] < 0:  # fewer keys than top: pad
                    entries.append(" " * entry_w)
                    continue
                text = f"{glyphs[j]:<{glyph_w}} {j - position:>{dist_w + 1}} {_weight(row[j])}"
                style = _BOLD if row[j] >= 0.5 else _DIM if row[j] < 0.2 else ""
                if color and style:
                    text = style + text + _RESET
                entries.append(text)
            cells.append("  ".join(entries))
        lines.append(f"{glyphs[position]:<{first_w}} │ " + " │ ".join(cells))
    return "\n".join(line.rstrip() for line in lines)
