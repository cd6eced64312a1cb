"""Loss curves: a run's ``metrics.jsonl`` (also while it is still being written) as train and
validation loss against the step, the learning rate on a second axis; several runs overlay."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bevialm import metrics
from bevialm.types import Array
from bevialm.viz_figure import VizError, new_figure, require_matplotlib, wrap

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS = "metrics.jsonl"


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
    if not runs:
        raise VizError("loss_figure needs at least one run")
    run_rows = math.ceil(len(runs) / 2)
    legend_h = 0.25 + 0.2 * max(3, run_rows)  # under the plot: what the styles mean, which colour is which run
    width, plot_h = 8.0, 3.8
    height = 0.45 + plot_h + 0.55 + legend_h
    fig = new_figure(width, height)
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
    _legends(fig, runs, colours, tokenizers, width, height)
    fig.text(0.8 / width, 1 - 0.12 / height, wrap(title or ("bits per character: " if bpc else "loss: ") + ", ".join(r.name for r in runs), width - 1), fontsize=10, va="top")
    return fig


def _legends(
    fig: Figure, runs: Sequence[RunMetrics], colours: list[str], tokenizers: Sequence[str | None] | None, width: float, height: float
) -> None:
    """Under the plot: what the line styles mean, and which colour is which run."""
    from matplotlib.lines import Line2D

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
