"""What every picture of :mod:`bevialm.viz` shares: the errors, the optional matplotlib, a
figure on the Agg canvas, tokens as visible text, and writing a figure to a file."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bevialm.types import Array

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install 'bevialm[plot]' (in a clone of the repository: make install)"
FORMATS = (".png", ".svg")

GLYPHS = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
MONO = "DejaVu Sans Mono"  # ships with matplotlib; has the glyphs above


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


def new_figure(width: float, height: float) -> Figure:
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
    return "".join(GLYPHS.get(c, chr(0x2400 + ord(c)) if ord(c) < 0x20 else c) for c in token)


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


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def wrap(text: str, inches: float, points: float = 10) -> str:
    """``text`` broken into lines that fit ``inches`` at a font size of ``points``."""
    return textwrap.fill(text, max(20, int(inches * 72 / (0.55 * points))))
