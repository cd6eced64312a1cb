"""The command lines' argument types and parser, shared by :mod:`bevialm.cli` and
:mod:`bevialm.grading.cli` (so neither imports the other).

Each type rejects a bad value with argparse's one-line usage error; :class:`OneLineParser`
prints every usage error on one line.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NoReturn

# --- argument types: each rejects a bad value with argparse's one-line usage error -------------


def _number(text: str, kind: type[int] | type[float]) -> Any:
    try:
        value = float(text) if kind is float else _integer(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _integer(text: str) -> int:
    """``2000``, and also ``2e3`` or ``1e9`` (people write sizes so): any finite whole number."""
    try:
        return int(text)
    except ValueError:
        value = float(text)  # a ValueError here: not a number at all
        if not math.isfinite(value) or value != int(value):
            raise
        return int(value)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line (``prog: error: ... (see prog --help)``), exit 2:
    a wrong flag is one clear line, as every other bad input is, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _checked(kind: type[int] | type[float], ok: Callable[[Any], bool], requirement: str) -> Callable[[str], Any]:
    """An argparse ``type``: parse ``text`` as ``kind`` and require ``ok(value)``."""

    def parse(text: str) -> Any:
        value = _number(text, kind)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must {requirement}, got {text!r}")
        return value

    parse.number_kind = kind  # type: ignore[attr-defined]  # what a config file's value must be
    return parse


positive_int = _checked(int, lambda v: v > 0, "be a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "be an integer >= 0")
positive_float = _checked(float, lambda v: v > 0, "be a positive number")
non_negative_float = _checked(float, lambda v: v >= 0, "be a number >= 0")
probability = _checked(float, lambda v: 0 <= v < 1, "lie in [0, 1)")  # dropout, Adam's betas
top_p_value = _checked(float, lambda v: 0 < v <= 1, "lie in (0, 1]")  # a nucleus mass
