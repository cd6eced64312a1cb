"""Reading ``metrics.jsonl``, whoever wrote it: one record per line, the malformed ones counted.

The trainer writes one JSON object per log line (``"kind": "train"``, with ``step``,
``loss``, ``lr``, ...) and per evaluation (``"kind": "eval"``, with ``step``,
``train_loss``, ``val_loss``, ``lr``, ...). A file may also hold lines nobody can
use: one cut short by a crash or still being written, or records written by
another program (no ``step``, a string where a number belongs). Readers (``bevialm
plot``, a board) skip those and say how many they skipped: :func:`read_records`
returns the good records and that count, and :func:`skipped_note` words it.

A record is good when it is a JSON object whose ``kind`` is ``"train"`` or
``"eval"``, whose ``step`` is a whole number of at least 0, and whose numeric
fields, where present, are numbers (not ``true``, not ``"0.5"``). A train record
needs its ``loss``. Other fields are kept as they are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

KINDS = ("train", "eval")
"""The record kinds the trainer writes."""

NUMBERS = ("loss", "lr", "grad_norm", "ms_per_step", "tokens_per_s", "train_loss", "val_loss", "val_bpc", "time")
"""Fields that must be numbers when a record has them."""

REQUIRED = {"train": ("step", "loss"), "eval": ("step",)}
"""Fields each kind of record must have."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_record(line: str) -> dict[str, Any] | None:
    """The record on ``line``, or None when it is not a good one (module docstring)."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    kind = record.get("kind")
    if kind not in KINDS or not all(name in record for name in REQUIRED[kind]):
        return None
    step = record["step"]
    if not _is_number(step) or not math.isfinite(step) or step < 0 or step != int(step):
        return None
    if not all(_is_number(record[name]) for name in NUMBERS if name in record):
        return None
    return record


@dataclass(frozen=True)
class Records:
    """The good records of a metrics file, in file order, and how many lines were skipped."""

    records: list[dict[str, Any]]
    skipped: int


def read_records(lines: Iterable[str]) -> Records:
    """The good records among ``lines``. Blank lines, and a last line without its line
    break (a record being written right now), are neither records nor counted as skipped."""
    records: list[dict[str, Any]] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        record = parse_record(line)
        if record is None:
            skipped += line.endswith("\n")
        else:
            records.append(record)
    return Records(records, skipped)


def skipped_note(path: str, skipped: int) -> str | None:
    """One line saying ``skipped`` unreadable lines of ``path`` were left out, or None for none."""
    if not skipped:
        return None
    lines = "line" if skipped == 1 else "lines"
    return (
        f"note: skipped {skipped} {lines} of '{path}' that are not metrics records "
        "(cut short, or written by something else)"
    )
