"""The project's size rules, held for every module of the package: no function over 60 lines, and
no file over 500 lines unless a comment at its top says why (contributing rules; issue 21)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import bevialm

PACKAGE = Path(bevialm.__file__).parent

MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 500

WHY_WITHIN = 50
"""The "why" of a long file stands in its first lines (its docstring), where a reader starts."""

WHY = re.compile(r"(?i)\b(over|longer than)\b[^\n]{0,20}\b500 lines")
"""How such a comment reads: "(Over 500 lines on purpose: ...)", "(Longer than the project's 500 lines: ...)"."""

def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def long_functions(path: Path) -> list[str]:
    """``name (lines)`` of every function or method of ``path`` over the limit, from ``def`` to its
    last line (a nested function counts in its parent's lines too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{node.name} ({lines} lines)")
    return found


def test_the_limits_see_long_code(tmp_path: Path) -> None:
    """The checks below can fail: a 61-line function is seen, a 60-line one is not."""
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\n    return 0\n\ndef short():\n{body}\n")
    assert long_functions(tmp_path / "m.py") == ["long (61 lines)"]
    assert WHY.search("(Over 500 lines on purpose: the child cannot import a sibling)")
    assert WHY.search("(Longer than the project's 500 lines: they share the figure)")
    assert not WHY.search("a file of 500 lines")


def test_no_function_is_over_60_lines() -> None:
    offenders = {
        _name(path): found for path in _modules() for found in [long_functions(path)] if found
    }  # fmt: skip
    assert offenders == {}, f"split these functions (at most {MAX_FUNCTION_LINES} lines each): {offenders}"


def test_no_file_is_over_500_lines_without_saying_why() -> None:
    offenders = []
    for path in _modules():
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) <= MAX_FILE_LINES:
            continue
        if not WHY.search("\n".join(lines[:WHY_WITHIN])):
            offenders.append(f"{_name(path)} ({len(lines)} lines)")
    assert offenders == [], f"split these files, or say at their top why they are over {MAX_FILE_LINES} lines: {offenders}"

