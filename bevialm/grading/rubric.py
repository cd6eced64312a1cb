"""The grading rubric: points and visibility per check, and the grader's settings.

A rubric is a TOML file (read with :mod:`tomllib`); every key is optional and
falls back to :data:`DEFAULT_RUBRIC`, which is also what ``bevialm autograder``
bundles when no rubric is given. Checks are named ``SUBJECT.KIND``: ``SUBJECT``
is a pair of the registry (``linear``, ``attention``, ...) or ``model``;
``KIND`` is one of :data:`KINDS`. A check's points and visibility come from its
``[kinds.KIND]`` table, overridden by its own ``[checks."SUBJECT.KIND"]`` table.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (Gradescope's Ubuntu 22.04 image)
    import tomli as tomllib

PAIR_KINDS = ("forward", "backward", "gradcheck", "purity")
"""Checks run for every pair of the registry."""

MODEL_KINDS = ("loss_and_grads", "training")
"""Checks of the student's pairs composed into the reference model."""

KINDS = PAIR_KINDS + MODEL_KINDS

KIND_TITLES = {
    "forward": "forward output matches the reference",
    "backward": "backward (fed your own cache) matches the reference dx and every grad",
    "gradcheck": "your backward agrees with finite differences of your own forward",
    "purity": "purity, shapes and dtypes (inputs unchanged, grads shaped like params)",
    "loss_and_grads": "your pairs inside the reference model give its loss and gradients",
    "training": "a few training steps lower the loss as the reference's do",
}

VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")
"""Gradescope's visibility values; ``bevialm grade --visible-only`` runs the ``visible`` checks."""

DEFAULT_RUBRIC = """\
# BeviaLLM grading rubric. Every key is optional: a missing one takes the value shown here.
# Checks are named SUBJECT.KIND, SUBJECT a pair (linear, layernorm, ..., block) or "model".

[settings]
seed = 20240901          # the cases are drawn from this seed (the same for every student)
drawn_cases = 2          # random cases per pair, on top of the registry's fixed examples
gradcheck_entries = 24   # entries per tensor compared with finite differences (0 = all)
training_steps = 4       # gradient steps of the training check
time_limit = 60.0        # seconds of wall time per check
memory_limit_mb = 1024   # memory a check may allocate beyond the grader's own
output_limit_kb = 256    # printing more than this in one check is a flood and fails it
results_visibility = "visible"   # Gradescope's visibility of the whole result

# Default points and visibility of each kind of check.
[kinds.forward]
points = 2
visibility = "visible"

[kinds.backward]
points = 3
visibility = "visible"

[kinds.gradcheck]
points = 2
visibility = "visible"

[kinds.purity]
points = 1
visibility = "visible"

[kinds.loss_and_grads]
points = 10
visibility = "visible"

[kinds.training]
points = 5
visibility = "after_published"

# Overrides for single checks, for example:
# [checks."attention.backward"]
# points = 6
# [checks."dropout.gradcheck"]
# enabled = false
"""


class RubricError(Exception):
    """The rubric cannot be used; the message is one line naming the file and the key."""


@dataclass(frozen=True)
class Rule:
    """Points and visibility of one check (or the default of one kind)."""

    points: float
    visibility: str = "visible"
    enabled: bool = True


@dataclass(frozen=True)
class Settings:
    """How the grader runs (see :data:`DEFAULT_RUBRIC` for what each means)."""

    seed: int = 20240901
    drawn_cases: int = 2
    gradcheck_entries: int = 24
    training_steps: int = 4
    time_limit: float = 60.0
    memory_limit_mb: int = 1024
    output_limit_kb: int = 256
    results_visibility: str = "visible"


@dataclass(frozen=True)
class Rubric:
    settings: Settings
    kinds: Mapping[str, Rule]
    checks: Mapping[str, Rule] = field(default_factory=dict)
    source: str = "the built-in rubric"

    def rule(self, check_id: str) -> Rule:
        """The rule of check ``SUBJECT.KIND``: its own table over its kind's."""
        return self.checks.get(check_id, self.kinds[check_id.rpartition(".")[2]])

    def validate_checks(self, known: set[str]) -> None:
        """Raise when the rubric names a check that does not exist."""
        unknown = sorted(set(self.checks) - known)
        if unknown:
            raise RubricError(
                f"{self.source}: unknown check {unknown[0]!r} in [checks] (known checks look like "
                f"{sorted(known)[0]!r}; run 'bevialm grade --list-checks' to see them all)"
            )


def _where(source: str, table: str, key: str) -> str:
    return f"{source}: [{table}] {key}"


def _number(value: Any, where: str, *, integer: bool = False, positive: bool = False) -> Any:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "an integer" if integer else "a number"
        raise RubricError(f"{where} must be {kind} {'> 0' if positive else '>= 0'}, got {value!r}")
    return value


def _visibility(value: Any, where: str) -> str:
    if value not in VISIBILITIES:
        raise RubricError(f"{where} must be one of {', '.join(VISIBILITIES)}; got {value!r}")
    return str(value)


def _table(data: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise RubricError(f"{source}: {key} must be a table ([{key}])")
    return value


def _rule(raw: Any, base: Rule, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise RubricError(f"{where} must be a table")
    unknown = sorted(set(raw) - {"points", "visibility", "enabled"})
    if unknown:
        raise RubricError(f"{where}: unknown key {unknown[0]!r} (expected points, visibility, enabled)")
    rule = base
    if "points" in raw:
        rule = replace(rule, points=float(_number(raw["points"], f"{where} points")))
    if "visibility" in raw:
        rule = replace(rule, visibility=_visibility(raw["visibility"], f"{where} visibility"))
    if "enabled" in raw:
        if not isinstance(raw["enabled"], bool):
            raise RubricError(f"{where} enabled must be true or false")
        rule = replace(rule, enabled=raw["enabled"])
    return rule


def _settings(raw: Mapping[str, Any], base: Settings, source: str) -> Settings:
    known = {f.name: f for f in fields(Settings)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = _where(source, "settings", key)
        if key not in known:
            raise RubricError(f"{where}: unknown setting (expected one of {', '.join(known)})")
        if key == "results_visibility":
            values[key] = _visibility(value, where)
        elif key in ("time_limit",):
            values[key] = float(_number(value, where, positive=True))
        elif key in ("memory_limit_mb", "output_limit_kb"):
            values[key] = _number(value, where, integer=True, positive=True)
        else:
            values[key] = _number(value, where, integer=True)
    return replace(base, **values)


def parse(text: str, source: str, base: Rubric | None = None) -> Rubric:
    """A rubric from TOML ``text``, every missing key taken from ``base`` (nothing when None)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RubricError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"settings", "kinds", "checks"})
    if unknown:
        raise RubricError(f"{source}: unknown table [{unknown[0]}] (expected [settings], [kinds.*], [checks.*])")
    settings = _settings(_table(data, "settings", source), base.settings if base else Settings(), source)
    kinds: dict[str, Rule] = dict(base.kinds) if base else {}
    for kind, raw in _table(data, "kinds", source).items():
        if kind not in KINDS:
            raise RubricError(f"{source}: unknown kind [kinds.{kind}] (expected one of {', '.join(KINDS)})")
        kinds[kind] = _rule(raw, kinds.get(kind, Rule(0.0)), f"{source}: [kinds.{kind}]")
    missing = [k for k in KINDS if k not in kinds]
    if missing:
        raise RubricError(f"{source}: no points for kind {missing[0]!r} ([kinds.{missing[0]}])")
    checks: dict[str, Rule] = dict(base.checks) if base else {}
    for check_id, raw in _table(data, "checks", source).items():
        kind = check_id.rpartition(".")[2]
        if kind not in KINDS or "." not in check_id:
            raise RubricError(f"{source}: check {check_id!r} is not SUBJECT.KIND with KIND one of {', '.join(KINDS)}")
        checks[check_id] = _rule(raw, checks.get(check_id, kinds[kind]), f"{source}: [checks.{check_id!r}]")
    return Rubric(settings, kinds, checks, source)


def default_rubric() -> Rubric:
    return parse(DEFAULT_RUBRIC, "the built-in rubric")


def load(path: Path | None) -> Rubric:
    """The rubric in ``path`` over the built-in one (the built-in one when ``path`` is None)."""
    base = default_rubric()
    if path is None:
        return base
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RubricError(f"cannot read rubric {path}: {exc.strerror or exc}") from None
    return parse(text, str(path), base)
