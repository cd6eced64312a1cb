"""Training config files: ``--config run.toml`` holds training flags, and every run folder gets
``config.toml`` with the run's effective config, so ``--config runs/run-007/config.toml`` repeats it.

A config file is flat TOML whose keys are the training flags' names (``ctx = 64``,
``tokenizer = "bpe"``, ``resume = true``). The command line's flags override it. Each value is
checked by the very argparse type that checks the flag (so ``ctx = 0`` is refused as
``--ctx 0`` is), after a check of its TOML type (``ctx = "64"`` is a string, not an
integer). Every problem is one line naming the file and the key (:class:`ConfigError`).

:func:`to_toml` writes the flat tables this module reads; it needs no TOML library.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: tomli, a conditional dependency in pyproject.toml
    import tomli as tomllib

CONFIG_NAME = "config.toml"

NOT_IN_CONFIG = ("out", "resume", "overwrite", "config")
"""Flags a written config leaves out: where a run lives and how it was started are not its
config (``--config runs/run-007/config.toml`` then trains a new run, not run-007 again)."""


class ConfigError(ValueError):
    """A config file that cannot be read or holds a key or value no flag accepts: one line."""


def _kind(action: argparse.Action) -> tuple[type, ...]:
    """The TOML value types a flag accepts: bool for switches, numbers for numeric flags, else strings."""
    if isinstance(action, argparse._StoreTrueAction):
        return (bool,)
    kind = getattr(action.type, "number_kind", None)
    if kind is int:
        return (int,)
    if kind is float:
        return (int, float)
    return (str,)


def _type_name(kinds: tuple[type, ...]) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kinds[-1]]


def _check_value(key: str, value: Any, action: argparse.Action) -> Any:
    kinds = _kind(action)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        got = type(value).__name__ if not isinstance(value, dict) else "a table"
        raise ConfigError(f"{key} must be {_type_name(kinds)}, got {value!r} ({got})")
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    if callable(action.type) and not isinstance(value, bool):
        try:
            return action.type(str(value))  # the flag's own check: ranges, finiteness
        except (argparse.ArgumentTypeError, ValueError) as e:
            raise ConfigError(f"{key}: {e}") from None
    return value


def read(path: str, actions: Mapping[str, argparse.Action]) -> dict[str, Any]:
    """The flag values in config file ``path``, checked against ``actions`` (flag name -> action)."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file '{path}' is not valid TOML ({' '.join(str(e).split())})") from None
    values: dict[str, Any] = {}
    for key, value in table.items():
        action = actions.get(key)
        if action is None or key == "config":
            raise ConfigError(f"config file '{path}': unknown key '{key}' (not a training flag; see --help)")
        try:
            values[key] = _check_value(key, value, action)
        except ConfigError as e:
            raise ConfigError(f"config file '{path}': {e}") from None
    return values


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML config: cannot write the number {value!r}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    raise TypeError(f"TOML config: cannot write {type(value).__name__}")


def to_toml(values: Mapping[str, Any], comment: str = "") -> str:
    """A flat TOML table of ``values``; None values are left out (the flag's default then applies)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"{key} = {_toml_value(v)}" for key, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def write(folder: str, values: Mapping[str, Any], comment: str = "") -> str:
    """Write ``config.toml`` into ``folder`` atomically (a temporary file, then a rename)."""
    path = os.path.join(folder, CONFIG_NAME)
    temp = path + ".tmp"
    with open(temp, "w", encoding="utf-8") as f:
        f.write(to_toml({k: v for k, v in values.items() if k not in NOT_IN_CONFIG}, comment))
    os.replace(temp, path)
    return path
