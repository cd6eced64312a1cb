"""Attention maps: a prompt's (``model.attention_maps``) or what sampling recorded
(:class:`bevialm.generate.AttentionRecorder`) as grids of heat maps, and the same record as
plain text for the terminal."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bevialm.types import Array
from bevialm.viz_figure import MONO, VizError, count, new_figure, require_matplotlib, visible, wrap

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_LABEL_PT = 7.0  # tick labels: 7 pt monospace, ~0.1 in per label
_CELL_IN = 0.11  # a heat-map cell, in inches, while every token gets its label
_MAX_LABELS = 64  # beyond this many tokens on an axis, label every k-th one and shrink the cells
_LONG_AXIS_IN = 4.8  # the shortest a long axis gets (256 tokens: ~1.9 pixels each at 100 dpi)
_MIN_PANEL_IN = 1.7  # a panel is never smaller than this (room for its title)
_MIN_BAR_IN = 2.0  # the colour bar is never shorter than this (room for its ticks and label)
_WRAP_IN = 10.0  # one layer's heads wrap to stay this wide: 1,000 pixels, a docs page's width at 100 dpi


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
    kw: dict[str, Any] = {"fontfamily": MONO, "fontsize": _LABEL_PT, "parse_math": False, "label": f"{which}-token"}
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


@dataclass(frozen=True)
class _Grid:
    """Where a grid of maps goes, in inches: ``placed`` holds (row, column, layer, head) per map."""

    placed: list[tuple[int, int, int, int]]
    wrapped: bool
    rows: int
    panel: tuple[float, float]  # width, height
    gap: tuple[float, float]  # between maps across, down
    room: tuple[float, float]  # for the key (x) and query (y) labels
    strides: tuple[int, int]  # label every k-th key (x), query (y)
    left: float
    right: float
    width: float
    height: float
    grid_top: float
    bar_h: float
    title: str


def _grid(n_q: int, n_k: int, query_tokens: Sequence[str], key_tokens: Sequence[str], layers: Sequence[int], heads: Sequence[int], title: str) -> _Grid:
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
    title = wrap(title, width - left - 0.2)
    top = 0.55 + 0.18 * title.count("\n")  # the title, and the first maps' titles
    grid_h = nr * panel_h + (nr - 1) * gap_y
    bar_h = min(max(grid_h, _MIN_BAR_IN), 4.0)  # beside the top row; tall enough for its labels
    grid_top = bottom + max(grid_h, bar_h)
    height = grid_top + top + 0.25
    return _Grid(
        placed, wrapped, nr, (panel_w, panel_h), (gap_x, gap_y), (room_x, room_y), (stride_x, stride_y),
        left, right, width, height, grid_top, bar_h, title,
    )  # fmt: skip


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
    g = _grid(n_q, n_k, query_tokens, key_tokens, layers, heads, title)
    (panel_w, panel_h), (gap_x, gap_y), (room_x, room_y) = g.panel, g.gap, g.room
    width, height = g.width, g.height
    fig = new_figure(width, height)
    cmap = colormaps["viridis"].with_extremes(bad="white")
    # square-root colour scale: a head spreading its weight evenly over 64 positions (1/64 each)
    # is still visible against one ignoring them, and a weight near 1 stands out as bright
    norm = PowerNorm(0.5, vmin=0.0, vmax=1.0)
    image = None
    for r, c, layer, head in g.placed:
        x0 = g.left + c * (panel_w + gap_x)
        y0 = g.grid_top - (r + 1) * panel_h - r * gap_y
        ax = fig.add_axes((x0 / width, y0 / height, panel_w / width, panel_h / height))
        image = ax.imshow(np.ma.masked_invalid(weights[layer, head]), cmap=cmap, norm=norm, interpolation="nearest", aspect="auto")
        if boundary is not None and 0 < boundary < n_k:
            ax.axvline(boundary - 0.5, color="0.5", lw=0.8, ls="--")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8, pad=3)
        if r == g.rows - 1 or g.wrapped:  # labels on the outer maps only: the others share them
            _label_axis(fig, ax, "x", key_tokens, g.strides[0])
            ax.text(0.5, -room_x / panel_h, xlabel, transform=ax.transAxes, ha="center", va="top", fontsize=8)
        if c == 0:
            _label_axis(fig, ax, "y", query_tokens, g.strides[1])
            ax.text(-room_y / panel_w, 0.5, ylabel, transform=ax.transAxes, ha="right", va="center", rotation=90, fontsize=8)
    assert image is not None  # layers and heads are never empty
    _colour_bar(fig, image, g)
    fig.text(g.left / width, (height - 0.2) / height, g.title, fontsize=10, va="top")
    return fig


def _colour_bar(fig: Figure, image: Any, g: _Grid) -> None:
    """One colour bar for every map, beside the top row."""
    width, height = g.width, g.height
    bar = fig.add_axes(((width - g.right + 0.25) / width, (g.grid_top - g.bar_h) / height, 0.16 / width, g.bar_h / height))
    bar.set_label("colorbar")
    fig.colorbar(image, cax=bar, ticks=[0, 0.01, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1]).set_label(
        "weight (square-root scale)", fontsize=8
    )
    bar.tick_params(labelsize=7)


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
        title=title or f"attention over a prompt of {count(len(tokens), 'token')} (row: query, column: the key it reads)",
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
        or f"attention while generating {count(n_new, 'token')}: row, the generated token; column, what it read "
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
