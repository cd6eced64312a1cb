"""Type aliases shared by every pair.

A layer's parameters live in a flat mapping from local names (``"W"``, ``"b"``,
``"gamma"``) to arrays; the model's mapping uses hierarchical names
(``"block0.attn.q.W"``). Gradients have exactly the keys and shapes of the
parameters they belong to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

Array: TypeAlias = npt.NDArray[Any]
"""A floating-point array: float64 for gradient checks, float32 for training."""

IntArray: TypeAlias = npt.NDArray[Any]
"""An array of integer token or position indices."""

Params: TypeAlias = Mapping[str, Array]
"""Read-only view of a pair's parameters; pairs never mutate it."""

Grads: TypeAlias = dict[str, Array]
"""Gradients, keyed exactly like the parameters."""

FloatDType: TypeAlias = type[np.floating[Any]] | np.dtype[Any]
"""A floating dtype such as ``np.float32`` or ``np.float64``."""
