"""Never a silent zero: when the environment, not the submission, breaks the checks (as root, the
check's uid cannot read NumPy), grading stops with one line and exit code 3 and writes no
scores; when NumPy is private only to the grader's install, the checks get a readable copy."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bevialm.grading import canary, folders
from bevialm.grading import cli as grading_cli
from bevialm.grading.canary import EXIT_GRADING_FAILED, GradingFailure, diagnose
from bevialm.grading.grade import Options, grade
from bevialm.grading.kinds import PairAnswer
from bevialm.grading.observation import Observation, StudentFault
from bevialm.grading.rubric import Settings
from bevialm.grading.sandbox import Limits, Outcome
from bevialm.registry import BY_NAME

from .test_grading import solution_copy

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the check's own uid exists only when grading as root")


@pytest.fixture(scope="module")
def solution(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return solution_copy(tmp_path_factory.mktemp("solution") / "pkg")


@pytest.fixture
def clean_temp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary folder of this test's own (other graders may run on the machine at once),
    that the checks' uid can enter, as /tmp."""
    temp = Path(tempfile.mkdtemp(prefix="canary-test-", dir="/tmp"))
    temp.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    yield temp
    shutil.rmtree(temp, ignore_errors=True)


def _private_numpy(base: Path) -> list[Path]:
    """NumPy's folders as hard links in a folder only root can enter (a venv under /root)."""
    private = base / "private-venv"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    copies = []
    for folder in folders.numpy_folders():
        folders._readable_copy(folder, private / folder.name)
        copies.append(private / folder.name)
    return copies


def _link_numpy_from(copies: list[Path], after: int = 0) -> Callable[[Path], None]:
    """``provide_numpy`` as it was before the fix (a link however private the target), from its
    ``after``-th call on (the calls before it get the real, readable NumPy)."""
    calls = [0]
    real = folders.provide_numpy

    def provide(lib: Path) -> None:
        calls[0] += 1
        if calls[0] <= after:
            return real(lib)
        lib.mkdir(mode=0o755, exist_ok=True)
        for copy in copies:
            (lib / copy.name).symlink_to(copy)

    return provide


@root_only
def test_a_private_numpy_is_copied_and_the_reference_gets_full_marks(solution: Path, tmp_path: Path, clean_temp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copies = _private_numpy(tmp_path)
    monkeypatch.setattr(folders, "numpy_folders", lambda: copies)
    report = grade(solution, Options(only=("linear", "layernorm.forward")))
    assert [r.hint for r in report.results if not r.passed] == []
    assert report.score == report.max_score > 0
    assert list(clean_temp.iterdir()) == []  # no bevialm-check-*, -grader-* or -canary-* left


@root_only
def test_unreadable_numpy_stops_grading_with_one_line_and_exit_3(
    solution: Path, tmp_path: Path, clean_temp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    copies = _private_numpy(tmp_path)
    monkeypatch.setattr(folders, "numpy_folders", lambda: copies)
    monkeypatch.setattr(folders, "provide_numpy", _link_numpy_from(copies))
    results = tmp_path / "results.json"
    code = grading_cli.main(["grade", str(solution), "--only", "linear", "--results", str(results)])
    out, err = capsys.readouterr()
    assert code == EXIT_GRADING_FAILED
    assert not results.exists() and "score" not in out  # nothing that looks like a grade
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "cannot read NumPy at " + str(copies[0]) in lines[0] and "as the autograder's setup.sh does" in lines[0]
    assert lines[0].startswith("bevialm grade: error: grading cannot run (the reference's own linear.forward fails in the sandbox): the check user (uid ")
    assert list(clean_temp.iterdir()) == []


@root_only
def test_an_environment_that_breaks_midway_is_a_grading_failure_not_a_score(
    solution: Path, tmp_path: Path, clean_temp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = _private_numpy(tmp_path)
    monkeypatch.setattr(folders, "numpy_folders", lambda: copies)
    monkeypatch.setattr(folders, "provide_numpy", _link_numpy_from(copies, after=1))  # the first canary passes
    with pytest.raises(GradingFailure, match=r"midway: .*cannot read NumPy"):
        grade(solution, Options(only=("linear", "relu")))
    assert list(clean_temp.iterdir()) == []


def test_a_submission_failing_every_check_alike_is_still_scored(tmp_path: Path, clean_temp: Path) -> None:
    """The canary, run again, passes: the failures are the submission's own (scored 0), not the machine's."""
    pkg = solution_copy(tmp_path / "pkg")
    (pkg / "__init__.py").write_text("raise RuntimeError('broken on purpose')\n")
    report = grade(pkg, Options(only=("linear", "relu.forward")))
    assert report.score == 0 and {r.reason for r in report.results} == {"error"}
    assert len({r.cause for r in report.results}) == 1


def test_the_canary_names_each_cause() -> None:
    crashed = Outcome("crashed", detail="killed by signal SIGSEGV", output="Fatal Python error")
    nothing = PairAnswer(BY_NAME["linear"], [])
    assert diagnose(crashed, nothing, 900100) == "its child crashed (killed by signal SIGSEGV); Fatal Python error"
    obs = Observation()
    obs.error = StudentFault("ModuleNotFoundError", "No module named 'numpy.typing'")
    said = diagnose(Outcome("ok", obs), nothing, 900100)
    assert said is not None and said.startswith("the check user (uid 900100) cannot read NumPy at ")
    obs.error = StudentFault("PermissionError", "denied", "layers/linear.py:3 in <module>")
    said = diagnose(Outcome("ok", obs), nothing, None)
    assert said is not None and said.startswith("PermissionError: denied at layers/linear.py:3 in <module> (the checks may lack")


def test_canary_command_and_sandbox_that_cannot_start(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert canary.main() == 0
    assert capsys.readouterr().out.startswith("bevialm canary: ok")

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no unused uid for the checks")

    monkeypatch.setattr(canary, "Sandbox", refuse)
    assert canary.main() == EXIT_GRADING_FAILED
    assert capsys.readouterr().err.strip() == (
        "bevialm canary: error: grading cannot run (the reference's own linear.forward fails in the sandbox): "
        "the sandbox could not start (no unused uid for the checks)"
    )
    with pytest.raises(GradingFailure):
        canary.run_canary(Limits(), Settings(), None)


def test_no_sandbox_runs_no_canary(solution: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the canary ran")

    monkeypatch.setattr("bevialm.grading.grade.run_canary", fail)
    from .test_grading import grade_here

    assert grade_here(solution, only=("relu.forward",)).score > 0
