"""Gradescope's results.json as students read it: what is announced for checks they cannot see
yet, and each test's output saying every thing once."""

from __future__ import annotations

import pytest

from bevialm.grading import gradescope
from bevialm.grading.grade import GradeReport, format_report
from bevialm.grading.rubric import default_rubric, parse

from . import planted
from .test_grading import grade_here, solution_copy

RUBRIC = """
[checks."relu.forward"]
visibility = "hidden"
[checks."relu.backward"]
visibility = "after_due_date"
[checks."relu.gradcheck"]
visibility = "after_due_date"
[checks."relu.purity"]
visibility = "after_published"
[checks."gelu.backward"]
visibility = "hidden"
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> GradeReport:
    folder = solution_copy(tmp_path_factory.mktemp("results") / "pkg")
    planted.plant(folder, "layers/gelu.py", "def backward(params, cache, dy):\n    raise ValueError('no gelu backward today')")
    rubric = parse(RUBRIC, "r.toml", default_rubric())
    return grade_here(folder, rubric=rubric, only=("relu", "gelu"))


def test_hidden_checks_are_never_announced_as_shown_later(report: GradeReport) -> None:
    output = gradescope.results(report)["output"]
    assert "2 more checks are shown after the due date" in output
    assert "1 more check is shown once grades are published" in output
    assert "2 more checks are never shown to students" in output
    assert "relu.forward" not in output and "gelu.backward" not in output
    assert "relu.forward" in format_report(report)  # the instructor's table has every row


def test_test_output_says_name_and_hint_once(report: GradeReport) -> None:
    tests = {t["tags"][0] + "." + t["tags"][1]: t for t in gradescope.results(report)["tests"]}
    failed = tests["gelu.backward"]
    assert failed["status"] == "failed" and failed["output_format"] == "text"
    assert failed["name"] not in failed["output"]
    assert failed["output"].count("no gelu backward today") == 1, failed["output"]
    assert tests["relu.forward"]["output"].startswith("ok")
