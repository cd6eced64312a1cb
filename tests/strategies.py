"""Hypothesis adapters for the registry's :class:`~bevialm.registry.Draw` protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from hypothesis import strategies as st

from bevialm.registry import Case, Draw

T = TypeVar("T")


class HypothesisDraw:
    """Draws through Hypothesis, so failing cases shrink to the smallest shapes."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self._draw(st.integers(lo, hi))

    def choice(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(options))


def cases(draw_case: Callable[[Draw], Case]) -> st.SearchStrategy[Case]:
    """A strategy of :class:`Case` from a registry entry's ``draw_case``."""

    @st.composite
    def build(draw: st.DrawFn) -> Case:
        return draw_case(HypothesisDraw(draw))

    return build()

