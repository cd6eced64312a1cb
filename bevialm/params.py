"""Flat parameter mappings with hierarchical names (playbook 4.2).

The model keeps every parameter in one mapping, ``"block0.attn.q.W" -> array``.
A composite pair hands each sub-pair the slice of that mapping under one
prefix, with local names (``scope(params, "attn.q.")`` gives ``{"W", "b"}``), and
puts the sub-pair's gradients back under the same prefix (``unscope``). No
arrays are copied: only the small dicts of references are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from bevialm.types import Array, Params

V = TypeVar("V")


def scope(params: Params, prefix: str) -> dict[str, Array]:
    """The entries under ``prefix`` (which ends with a dot), with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix)}


def unscope(grads: Mapping[str, V], prefix: str) -> dict[str, V]:
    """``grads`` (or parameters, or their shapes) with every key put under ``prefix``."""
    return {prefix + k: v for k, v in grads.items()}

