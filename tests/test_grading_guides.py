"""The grading guides' commands run as written, and the generated skeleton type-checks."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bevialm
from bevialm.grading.skeleton import write_skeleton

DOCS = Path(__file__).resolve().parent.parent / "docs"
COMMAND = re.compile(r"^\$ (bevialm .*)$", re.MULTILINE)
TOML = re.compile(r"^```toml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def commands(page: str) -> list[list[str]]:
    return [shlex.split(line)[1:] for line in COMMAND.findall((DOCS / page).read_text(encoding="utf-8"))]


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bevialm.cli", *argv], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_instructor_guide_commands_work(tmp_path: Path) -> None:
    page = (DOCS / "grading-instructors.md").read_text(encoding="utf-8")
    (tmp_path / "rubric.toml").write_text(TOML.findall(page)[0])
    argvs = commands("grading-instructors.md")
    assert [a[0] for a in argvs] == ["skeleton", "skeleton", "skeleton", "grade", "grade", "grade", "autograder", "grade-all"]
    outputs = []
    for argv in argvs:
        if argv[0] == "grade-all":  # a class of two: the bare skeleton and the reference
            shutil.copytree(tmp_path / "student_pkg", tmp_path / "submissions" / "ann")
            shutil.copytree(tmp_path / "solution_pkg", tmp_path / "submissions" / "ben")
        done = run(argv, tmp_path)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        outputs.append(done.stdout)
    assert "In one call of the example" in (tmp_path / "student_pkg_shapes" / "layers" / "linear.py").read_text()
    assert "score 140/140" in outputs[3]  # the reference gets full marks (built-in rubric)
    assert "attention.backward" in outputs[4]
    assert "score 0/" in outputs[5] and (tmp_path / "results.json").is_file()
    assert (tmp_path / "autograder.zip").is_file()
    gradebook = (tmp_path / "grades.csv").read_text().splitlines()
    assert gradebook[0].startswith("student,name,email,status,score,max,checks,") and "graded 2 students" in outputs[7]
    assert gradebook[1].startswith("ann,,,graded,0,") and gradebook[2].startswith("ben,,,graded,")


def test_student_guide_commands_work(tmp_path: Path) -> None:
    write_skeleton(tmp_path / "my_pkg")
    argvs = commands("grading-students.md")
    assert argvs and all(a[0] == "grade" for a in argvs)
    for argv in argvs:
        done = run(argv, tmp_path)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        assert "not implemented yet" in done.stdout


@pytest.mark.slow
def test_skeleton_imports_and_type_checks(tmp_path: Path) -> None:
    write_skeleton(tmp_path / "student_pkg")
    write_skeleton(tmp_path / "solution_pkg", with_solutions=True)
    # mypy finds bevialm through MYPYPATH here (an editable install hides it from mypy)
    env = {**os.environ, "MYPYPATH": str(Path(bevialm.__file__).parent.parent)}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "student_pkg", "solution_pkg"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    check = "import student_pkg.layers.block, student_pkg.losses; print('ok')"
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
