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

from bevialm.grading.task_list import PAIR_TASKS, TASKS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (Gradescope's Ubuntu 22.04 image)
    import tomli as tomllib

PAIR_KINDS = ("forward", "backward", "gradcheck", "purity")
"""Checks run for every pair of the registry."""

COMPOSED_KINDS = ("loss_and_grads", "training")
"""Checks of the student's pairs composed into the model (the student's own model when the
assignment includes it, the handed-out one otherwise)."""

MODEL_KINDS = ("forward", "backward", *COMPOSED_KINDS)
"""The model's checks: its own forward and backward (when the student writes the model), then
the composed ones."""

TASK_KINDS: dict[str, tuple[str, ...]] = {
    **{task.name: PAIR_KINDS for task in PAIR_TASKS},
    "model": MODEL_KINDS,
    "adamw": ("decays", "step"),
    "schedule": ("key_points",),
    "clipping": ("global_norm", "clip"),
    "bpe": ("stats", "merge", "train", "encode", "decode"),
}
"""Every graded task (:data:`bevialm.grading.task_list.TASKS`) with its kinds of check, in order."""

KINDS = tuple(dict.fromkeys(k for kinds in TASK_KINDS.values() for k in kinds))

PRESETS: dict[str, tuple[str, ...]] = {
    "all": tuple(task.name for task in TASKS),
    "layers": tuple(task.name for task in PAIR_TASKS),
    "attention": ("softmax", "attention"),
    "model-optimizer": ("model", "adamw", "schedule", "clipping"),
    "optimizer": ("adamw", "schedule", "clipping"),
    "tokenizer": ("bpe",),
}
"""Ready assignments: the tasks students write. Every other task is handed out filled in."""

KIND_TITLES = {
    "forward": "forward output matches the reference",
    "backward": "backward (fed your own cache) matches the reference dx and every grad",
    "gradcheck": "your backward agrees with finite differences of your own forward",
    "purity": "purity, shapes and dtypes (inputs unchanged, grads shaped like params)",
    "loss_and_grads": "your pairs inside the model give the reference's loss and gradients",
    "training": "a few training steps lower the loss as the reference's do",
    "decays": "decays(name) picks the parameters that get weight decay",
    "step": "AdamW steps in lockstep with the reference (t = 1, large t, zero gradients, decay)",
    "key_points": "the learning rate at the schedule's key points (warmup, cosine, floor)",
    "global_norm": "the global norm over every gradient tensor",
    "clip": "clipping by the global norm (below, at, above the threshold; one huge tensor)",
    "stats": "get_stats counts every pair of adjacent tokens (overlaps included)",
    "merge": "merge replaces a pair left to right, never overlapping ('aaa')",
    "train": "train learns the reference's merges (ties to the smallest pair)",
    "encode": "encode applies the merges by rank",
    "decode": "decode joins the bytes and decodes them with errors='replace'",
}

VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")
"""Gradescope's visibility values; ``bevialm grade --visible-only`` runs the ``visible`` checks."""

DEFAULT_RUBRIC = """\
# BeviaLLM grading rubric. Every key is optional: a missing one takes the value shown here.
# Checks are named SUBJECT.KIND: SUBJECT a task (a pair such as linear, ..., block; model;
# adamw, schedule, clipping; bpe), KIND one of its kinds ('bevialm grade --list-checks').

[assignment]
preset = "all"           # the tasks students write: all, layers, attention, model-optimizer, optimizer, tokenizer
# tasks = ["softmax", "attention"]   # or name them (overrides preset); the rest is handed out filled in

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

[kinds.decays]
points = 2
visibility = "visible"

[kinds.step]
points = 6
visibility = "visible"

[kinds.key_points]
points = 3
visibility = "visible"

[kinds.global_norm]
points = 2
visibility = "visible"

[kinds.clip]
points = 3
visibility = "visible"

[kinds.stats]
points = 2
visibility = "visible"

[kinds.merge]
points = 2
visibility = "visible"

[kinds.train]
points = 3
visibility = "visible"

[kinds.encode]
points = 3
visibility = "visible"

[kinds.decode]
points = 2
visibility = "visible"

# The model's own forward and backward (when students write the model) weigh more than a pair's.
[checks."model.forward"]
points = 3

[checks."model.backward"]
points = 6

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
    tasks: tuple[str, ...] = PRESETS["all"]
    """The tasks students write in this assignment (the ``[assignment]`` table)."""

    def graded(self, subject: str, kind: str) -> bool:
        """Whether the assignment grades check ``subject.kind``: every check of a task students
        write, and the model's composed checks whenever they write a pair (their pairs inside
        the handed-out model)."""
        if subject in self.tasks:
            return True
        writes_a_pair = any(task.name in self.tasks for task in PAIR_TASKS)
        return subject == "model" and kind in COMPOSED_KINDS and writes_a_pair

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


def _assignment(raw: Mapping[str, Any], base: tuple[str, ...], source: str) -> tuple[str, ...]:
    unknown = sorted(set(raw) - {"preset", "tasks"})
    if unknown:
        raise RubricError(f"{source}: [assignment] {unknown[0]}: unknown key (expected preset or tasks)")
    tasks = base
    if "preset" in raw:
        tasks = preset(raw["preset"], f"{source}: [assignment] preset")
    if "tasks" in raw:
        names = raw["tasks"]
        known = {task.name for task in TASKS}
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise RubricError(f"{source}: [assignment] tasks must be a non-empty list of task names")
        wrong = [n for n in names if n not in known]
        if wrong:
            raise RubricError(f"{source}: [assignment] tasks: unknown task {wrong[0]!r} (known: {', '.join(known)})")
        tasks = tuple(task.name for task in TASKS if task.name in names)  # the registry's order
    return tasks


def preset(name: Any, where: str = "preset") -> tuple[str, ...]:
    """The tasks of preset ``name`` (:data:`PRESETS`); a :class:`RubricError` names the presets."""
    if name not in PRESETS:
        raise RubricError(f"{where} must be one of {', '.join(PRESETS)}; got {name!r}")
    return PRESETS[name]


def with_preset(text: str, name: str, source: str) -> str:
    """Rubric ``text`` with its assignment set to preset ``name``: the built-in rubric's preset
    line replaced, or an ``[assignment]`` table added to a rubric that has none."""
    preset(name, "--preset")
    if text == DEFAULT_RUBRIC:
        return text.replace('preset = "all"', f'preset = "{name}"', 1)
    try:
        has_assignment = "assignment" in tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RubricError(f"{source}: not valid TOML: {exc}") from None
    if has_assignment:
        raise RubricError(f"{source} has its own [assignment]: set the preset there, not with --preset")
    return text.rstrip() + f'\n\n[assignment]\npreset = "{name}"\n'


def parse(text: str, source: str, base: Rubric | None = None) -> Rubric:
    """A rubric from TOML ``text``, every missing key taken from ``base`` (nothing when None)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RubricError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"settings", "kinds", "checks", "assignment"})
    if unknown:
        raise RubricError(f"{source}: unknown table [{unknown[0]}] (expected [assignment], [settings], [kinds.*], [checks.*])")
    tasks = _assignment(_table(data, "assignment", source), base.tasks if base else PRESETS["all"], source)
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
    return Rubric(settings, kinds, checks, source, tasks)


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
