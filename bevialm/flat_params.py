"""Named tensors stored in a few contiguous buffers: a dict whose values are views of them.

The model reads its parameters by name (``"block0.attn.q.W"``), but an optimizer step does the
same element-wise arithmetic on every tensor. With the tensors laid end to end in one buffer
per *group* (AdamW's groups: the tensors that decay and those that do not), that arithmetic is
a handful of whole-buffer NumPy passes instead of a handful per tensor, and the names are still
there: ``tensors["block0.attn.q.W"]`` is a view of its group's buffer, so writing through either
changes both. Element-wise arithmetic rounds each element alike whether it runs over one tensor
or over a buffer of many, so the bits do not change (``tests/test_flat_params.py``).

:class:`Layout` is the names, shapes, groups and dtype; :class:`FlatTensors` is a dict of the
views plus the buffers (``parts``, keyed by group), whose keys cannot be rebound (a rebound key
would leave the buffers silently out of date).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NoReturn

import numpy as np

from bevialm.types import Array

CHUNK = 65_536
"""The most elements a buffer holds (unless one tensor is larger). Not one buffer for all: an
optimizer step makes about a dozen passes over its buffers, and a buffer of this size, with
its gradient, moments and temporaries, stays in a core's L2 cache through all of them
(256 KiB each in float32), where one buffer of the whole model would be fetched from memory
on every pass. Measured on an AVX-512 Xeon: see docs/optimizer.md."""


@dataclass(frozen=True)
class Layout:
    """Where each named tensor lives: ``names`` in the dict's order, their ``shapes``, the
    ``groups`` (buffers) they belong to, one ``dtype``. In a buffer, tensors follow the dict's order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    groups: tuple[str, ...]
    dtype: np.dtype[Any]

    @classmethod
    def of(cls, tensors: Mapping[str, Array], kind: Callable[[str], str], chunk: int = CHUNK) -> Layout:
        """The layout of ``tensors``: those of one ``kind(name)`` laid end to end, in the dict's
        order, in buffers named ``f"{i}.{kind}"`` of at most ``chunk`` elements each (or one
        tensor, if larger: a tensor is never split). ValueError for mixed dtypes."""
        dtypes = {a.dtype for a in tensors.values()}
        if len(dtypes) > 1:
            raise ValueError(f"flat tensors need one dtype, got {sorted(map(str, dtypes))}")
        dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        filled: dict[str, tuple[str, int]] = {}  # kind -> (its current buffer, elements in it)
        groups: list[str] = []
        for k, a in tensors.items():
            label = kind(k)
            group, used = filled.get(label, (f"0.{label}", 0))
            if used and used + a.size > chunk:
                group, used = f"{len({g for g in groups if g.endswith('.' + label)})}.{label}", 0
            filled[label] = (group, used + a.size)
            groups.append(group)
        return cls(tuple(tensors), tuple(a.shape for a in tensors.values()), tuple(groups), dtype)

    @cached_property
    def spans(self) -> tuple[tuple[str, int, int], ...]:
        """Per name: its group and its ``[lo, hi)`` in that group's buffer."""
        used: dict[str, int] = {}
        spans = []
        for shape, g in zip(self.shapes, self.groups, strict=True):
            lo = used.get(g, 0)
            used[g] = lo + int(np.prod(shape))
            spans.append((g, lo, used[g]))
        return tuple(spans)

    @cached_property
    def sizes(self) -> dict[str, int]:
        """Each group's buffer length, groups in order of first appearance."""
        sizes: dict[str, int] = {}
        for g, _, hi in self.spans:
            sizes[g] = hi
        return sizes

    def views(self, parts: Mapping[str, Array]) -> dict[str, Array]:
        """Each name's view of its group's buffer, with its shape."""
        return {k: parts[g][lo:hi].reshape(s) for k, s, (g, lo, hi) in zip(self.names, self.shapes, self.spans, strict=True)}

    def pack(self, tensors: Mapping[str, Array]) -> FlatTensors:
        """``tensors`` copied into new buffers in this layout (as they are if already laid out so)."""
        if isinstance(tensors, FlatTensors) and tensors.layout == self:
            return tensors
        parts = {g: np.concatenate([tensors[k].reshape(-1) for k in names]).astype(self.dtype, copy=False) for g, names in self.members.items()}
        return FlatTensors(self, parts)

    @cached_property
    def members(self) -> dict[str, tuple[str, ...]]:
        """Each group's names, in buffer order."""
        return {g: tuple(k for k, kg in zip(self.names, self.groups, strict=True) if kg == g) for g in self.sizes}


class FlatTensors(dict[str, Array]):
    """A dict of named views of a few buffers, ``parts`` (one per group), laid out by ``layout``.

    Its values may be changed in place (that changes ``parts``); its keys may not be rebound,
    added or removed.
    """

    def __init__(self, layout: Layout, parts: Mapping[str, Array]) -> None:
        for g, n in layout.sizes.items():
            a = parts[g]
            if a.shape != (n,) or a.dtype != layout.dtype:
                raise ValueError(f"flat buffer '{g}' is {a.dtype}{a.shape}, the layout needs {layout.dtype}({n},)")
        super().__init__(layout.views(parts))
        self.layout = layout
        self.parts = {g: parts[g] for g in layout.sizes}

    def __reduce__(self) -> tuple[Any, ...]:  # pickling (e.g. to another process) keeps the buffers
        return (FlatTensors, (self.layout, self.parts))

    def _frozen(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("FlatTensors: the names are fixed (change a tensor in place, or build a new dict)")

    __setitem__ = __delitem__ = pop = popitem = clear = update = setdefault = __ior__ = _frozen
