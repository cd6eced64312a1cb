"""Skeleton options: how much of the derivation the stubs' docstrings keep."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bevialm.grading import cli as grading_cli
from bevialm.grading.skeleton import SkeletonError, traced_shapes, write_skeleton
from bevialm.grading.task_list import PAIR_TASKS, TASK_BY_NAME, TASKS


def docstring(path: Path, function: str) -> str:
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    return ast.get_docstring(node) or ""


def test_full_docstrings_keep_the_derivation(tmp_path: Path) -> None:
    write_skeleton(tmp_path / "pkg")
    assert "mean(g * xhat)" in docstring(tmp_path / "pkg" / "layers" / "layernorm.py", "backward")


def test_shape_docstrings_give_signature_and_shapes_only(tmp_path: Path) -> None:
    write_skeleton(tmp_path / "pkg", docstrings="shapes")
    doc = docstring(tmp_path / "pkg" / "layers" / "linear.py", "backward")
    assert "dy: (2, 3, 6) float64" in doc and "returns: ((2, 3, 4) float64, {W: (4, 6) float64, b: (6,) float64})" in doc
    assert "x^T" not in doc
    layernorm = (tmp_path / "pkg" / "layers" / "layernorm.py").read_text()
    assert "mean(g * xhat)" not in layernorm and "raise NotImplementedError" in layernorm
    assert "q: (" in docstring(tmp_path / "pkg" / "layers" / "attention.py", "attend")
    # helpers the student does not write keep their reference docstrings and bodies
    assert "def causal_mask" in (tmp_path / "pkg" / "layers" / "attention.py").read_text()


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_every_graded_function_is_called_by_its_example(task: object) -> None:
    from bevialm.grading.task_list import TaskSpec

    assert isinstance(task, TaskSpec)
    traced = traced_shapes(task)
    assert set(traced) == set(task.functions)
    assert all("returns: " in text for text in traced.values())


def test_traced_functions_are_restored() -> None:
    linear = TASK_BY_NAME["linear"]
    before = linear.module.forward
    traced_shapes(linear)
    assert linear.module.forward is before


def test_cli_docstrings_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert grading_cli.main(["skeleton", str(tmp_path / "s"), "--docstrings", "shapes"]) == 0
    assert "In one call of the example" in (tmp_path / "s" / "losses.py").read_text()
    with pytest.raises(SystemExit):
        grading_cli.main(["skeleton", str(tmp_path / "t"), "--docstrings", "none"])
    with pytest.raises(SkeletonError, match="docstrings must be one of"):
        write_skeleton(tmp_path / "u", docstrings="none")
    assert len(PAIR_TASKS) < len(TASKS)
