"""Hints never call a wrong tensor right: a tensor "matches" only when it matched in every case
the check ran, a wrong shape is named before any wrong number, and the rel-err column shows the
failing tensor's error (or ``shape``), never 0, on a failed check."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from bevialm.grading.cases import pair_points, telling
from bevialm.grading.compare import NOT_COMPARABLE, Comparison, compare, judge_cases
from bevialm.grading.grade import GradeReport, format_report
from bevialm.grading.report import format_rel
from bevialm.grading.rubric import Settings
from bevialm.registry import BY_NAME

from . import planted
from .test_grading import grade_here, solution_copy


@pytest.fixture(scope="module")
def solution(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return solution_copy(tmp_path_factory.mktemp("solution") / "pkg")


def _linear_backward(solution: Path, tmp_path: Path, code: str) -> tuple[GradeReport, str, str]:
    folder = tmp_path / "pkg"
    shutil.copytree(solution, folder)
    planted.plant(folder, "layers/linear.py", code)
    report = grade_here(folder, only=("linear.backward",))
    (result,) = report.results
    assert not result.passed
    return report, result.hint, format_rel(result.worst_rel)


def test_two_bugs_in_one_pair_each_named_and_neither_called_right(solution: Path, tmp_path: Path) -> None:
    report, hint, rel = _linear_backward(solution, tmp_path, planted.DW_TRANSPOSED_AND_DB_FROM_A_MEAN)
    assert hint.startswith("dW has shape ("), hint  # the shape first, whatever the numbers
    assert hint.endswith("; also wrong: db; dx matches"), hint  # neither dW nor db is said to match
    assert rel == "shape" and "shape" in format_report(report)
    folder = tmp_path / "pkg"
    gradcheck = grade_here(folder, only=("linear.gradcheck",)).results[0]
    assert not gradcheck.passed and format_rel(gradcheck.worst_rel) == "shape"
    assert gradcheck.hint.startswith("dW is (") and gradcheck.hint.endswith("; also, db disagrees with finite differences"), gradcheck.hint


def test_a_transposed_dw_is_a_shape_and_the_rest_match(solution: Path, tmp_path: Path) -> None:
    _, hint, rel = _linear_backward(solution, tmp_path, planted.DW_TRANSPOSED)
    assert hint.startswith("dW has shape (") and hint.endswith("; db, dx match"), hint
    assert rel == "shape"


def test_db_from_a_mean_names_db_with_its_error(solution: Path, tmp_path: Path) -> None:
    _, hint, rel = _linear_backward(solution, tmp_path, planted.DB_FROM_A_MEAN)
    assert hint.startswith("db differs from the reference") and hint.endswith("; dW, dx match"), hint
    assert rel not in ("-", "shape", "0.0e+00") and float(rel) > 0.1


def test_a_tensor_right_in_one_case_only_is_not_said_to_match() -> None:
    good = Comparison("dW", True, 0.0)
    bad = Comparison("dW", False, 0.5, "dW differs")
    worse = Comparison("db", False, 0.9, "db differs")
    verdict = judge_cases([([good, worse], "case 1"), ([bad, Comparison("db", True, 0.0)], "case 2")])
    assert not verdict.passed and verdict.worst_rel == 0.9
    assert verdict.hint == "db differs (case 1); also wrong: dW", verdict.hint
    assert verdict.details.splitlines() == ["db differs (case 1)", "dW differs (case 2)"]


def test_a_shape_beats_any_number_and_shows_as_shape() -> None:
    shape = compare("dW", np.zeros((3, 4)), np.zeros((4, 3)), None)
    number = Comparison("db", False, 0.99, "db differs")
    verdict = judge_cases([([number], "case 1"), ([shape, Comparison("dx", True, 0.0)], "case 2")])
    rel = verdict.worst_rel
    assert not verdict.passed and rel == NOT_COMPARABLE and format_rel(rel) == "shape"
    assert verdict.hint.startswith("dW has shape (3, 4), the reference's has (4, 3) (case 2); also wrong: db; dx matches")
    assert math.isinf(rel)


def test_non_square_multi_row_cases_run_first() -> None:
    points = pair_points(BY_NAME["linear"], Settings())
    flags = [telling(p.input.params, p.input.x) for p in points]
    assert flags[0] and flags == sorted(flags, reverse=True)
    assert any(not f for f in flags)  # the 1x1 and square cases still run, after
