"""Gradescope's results.json as students read it: what is announced for checks they cannot see
yet, and each test's output saying every thing once."""

from __future__ import annotations

from typing import Any

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


def _grade_cli(folder: object, *args: str) -> tuple[str, str, dict[str, Any]]:
    import json
    import subprocess
    import sys
    from pathlib import Path

    results = Path(str(folder)).parent / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bevialm", "grade", str(folder), "--only", "relu", "--results", str(results), *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr, json.loads(results.read_text())


def test_students_see_no_grader_path_and_no_instructor_note(tmp_path_factory: pytest.TempPathFactory) -> None:
    import json

    folder = solution_copy(tmp_path_factory.mktemp("clean") / "alice_pkg")
    out, err, data = _grade_cli(folder, "--display-name", "alice")
    text = json.dumps(data)
    assert out.startswith("BeviaLLM grading of alice\n") and str(folder) not in out
    assert str(folder.parent) not in text and "/tmp" not in text and "note:" not in text
    assert "note:" not in out  # the instructor's notes go to standard error only
    assert data["output"].startswith("BeviaLLM grading of alice\n")
    out, _, data = _grade_cli(folder)
    assert out.startswith("BeviaLLM grading of alice_pkg\n")  # the folder's name, never its path


def test_visible_only_says_one_total_everywhere(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = solution_copy(tmp_path_factory.mktemp("total") / "pkg")
    rubric = folder.parent / "r.toml"
    rubric.write_text(RUBRIC)
    out, _, data = _grade_cli(folder, "--visible-only", "--rubric", str(rubric))
    visible = sum(float(t["max_score"]) for t in data["tests"])
    assert data["max_score"] == data["score"] == visible and data["scope"] == "visible checks only"
    assert f"score {visible:g}/{visible:g} (visible checks only)" in out
    assert f"score {visible:g}/{visible:g} (visible checks only)" in str(data["output"])


def test_list_checks_says_pt_for_one_point(capsys: pytest.CaptureFixture[str]) -> None:
    from bevialm.grading import cli as grading_cli

    assert grading_cli.main(["grade", "--list-checks", "--only", "linear"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(" 1 pt " in line for line in lines) and not any(" 1 pts" in line for line in lines)
    assert any(" 2 pts " in line for line in lines)


def test_bundle_declares_the_repository_dependencies_and_tests_venv_creation() -> None:
    import sys
    from pathlib import Path

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    pyproject = Path(__file__).parent.parent / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    assert list(gradescope.DEPENDENCIES) == declared
    assert tomllib.loads(gradescope.pyproject())["project"]["dependencies"] == declared
    assert "if ! python3 -m venv --help" not in gradescope.SETUP_SH and 'if ! python3 -m venv "$AUTOGRADER/venv"' in gradescope.SETUP_SH
    assert "-m bevialm.grading.canary" in gradescope.SETUP_SH


@pytest.mark.parametrize(("code", "scored"), [(3, False), (1, True)])
def test_run_autograder_writes_no_score_when_grading_failed(code: int, scored: bool, tmp_path_factory: pytest.TempPathFactory) -> None:
    import json
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("autograder")
    (root / "source").mkdir()
    bin_dir = root / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    line = "bevialm grade: error: grading cannot run (...): the check user (uid 900100) cannot read NumPy at /x"
    (bin_dir / "bevialm").write_text(f"#!/bin/sh\necho '{line}' >&2\nexit {code}\n")
    (bin_dir / "bevialm").chmod(0o755)
    script = root / "run_autograder"
    script.write_text(gradescope.RUN_AUTOGRADER)
    done = subprocess.run(["bash", str(script)], env={"PATH": "/usr/bin:/bin", "AUTOGRADER": str(root)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    data = json.loads((root / "results" / "results.json").read_text())
    assert ("score" in data) == scored
    if not scored:
        assert data["output"] == "GRADING FAILED (this is not a grade; the instructor must fix the autograder): " + line
        assert line in done.stdout  # in the log the instructor reads
