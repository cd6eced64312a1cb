"""What the student's code returned in one check, as the grader recorded it (and nothing else).

An :class:`Observation` is made in the grader's process by the check's runner (see
:mod:`bevialm.grading.tasks`) and read by the check's judge: arrays by key, the type of
whatever came back where an array was expected, the keys of each dict returned, plain
answers compared exactly, per-case findings, and the exception the student's code raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bevialm.gradcheck import TensorResult
from bevialm.types import Array


@dataclass(frozen=True)
class StudentFault:
    """An exception the student's code raised: its type, message and where (``file:line in f``)."""

    type: str
    message: str
    where: str = ""


@dataclass
class Findings:
    """What the grader found in one case of a pair's gradient check or purity check."""

    problems: list[str] = field(default_factory=list)
    """Wrong shapes, keys, dtypes; changed inputs; calls that disagree (in the checker's words)."""
    results: list[TensorResult] = field(default_factory=list)
    """Gradient check: how each tensor compared with finite differences of the student's forward."""
    y: tuple[tuple[int, ...], str] | None = None
    """Purity: the shape and dtype of the forward's output."""
    init: dict[str, Any] | None = None
    """Purity: ``init(cfg, rng, np.float64)``'s keys -> ``[shape, dtype]`` (or ``{"type": name}``)."""
    init_default: dict[str, Any] | None = None
    """Purity: the same for ``init(cfg, rng)`` (float32 by default)."""
    probes_differ: str = ""
    """Gradient check: where the forward, right at the case's point, gave another output than the
    reference's forward at one of the finite differences' points ("" when it never did)."""


@dataclass
class Observation:
    """What the student's code returned in one check."""

    arrays: dict[str, Array] = field(default_factory=dict)
    """Numeric results by key (``0/y``, ``1/grads/W``, ``losses``)."""
    types: dict[str, str] = field(default_factory=dict)
    """What came back where an array (or a dict) was expected, by key: ``list``, ``float``."""
    keys: dict[str, list[str]] = field(default_factory=dict)
    """The keys of each dict returned, by the key it was stored under (``0/grads``)."""
    answers: list[Any] = field(default_factory=list)
    """Plain answers, compared exactly (the decay rule's, the BPE functions')."""
    findings: dict[int, Findings] = field(default_factory=dict)
    """Per-case findings of the gradient and purity checks, by case number."""
    error: StudentFault | None = None
    """The exception the student's code raised (None when it raised none)."""
    case: int | None = None
    """The case reached (the one that raised, when ``error`` is set)."""


def type_name(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array"
    return str(getattr(value, "type_name", type(value).__name__))


def store(obs: Observation, key: str, value: Any) -> None:
    """Record ``value`` under ``key``: numeric arrays as they are, numbers as 0-d arrays (the
    type noted), anything else by its type name only."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        obs.arrays[key] = value
        return
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        obs.arrays[key] = np.asarray(value)
    obs.types[key] = type_name(value)


def store_mapping(obs: Observation, key: str, value: Any) -> None:
    """A dict of arrays under ``key/<name>``, its keys under ``key`` (or its type, when it is no dict)."""
    if not isinstance(value, Mapping):
        obs.types[key] = type(value).__name__
        return
    obs.keys[key] = sorted(str(k) for k in value)
    for name, array in value.items():
        store(obs, f"{key}/{name}", array)


def array_of(obs: Observation, key: str) -> tuple[Array | None, str | None]:
    """The array stored under ``key``, and the type of what came back there (None, None: nothing)."""
    return obs.arrays.get(key), obs.types.get(key)
