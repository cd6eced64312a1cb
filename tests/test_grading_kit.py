"""The student kit (``bevialm student-kit``): no solution in it, the grader's visible verdicts on
every planted mistake, and it runs where only NumPy is installed."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bevialm.grading import kit_check
from bevialm.grading.cli import main as grading_main
from bevialm.grading.grade import Options, format_report, grade
from bevialm.grading.kit import PACKAGE, write_kit
from bevialm.grading.rubric import PRESETS, default_rubric, parse
from bevialm.grading.student import forget_package
from bevialm.grading.task_list import TASKS

from . import planted
from .test_grading import grade_here, solution_copy


@pytest.fixture(scope="module")
def solution(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return solution_copy(tmp_path_factory.mktemp("kit_solution") / "pkg")


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kit") / "kit"
    write_kit(out, default_rubric())
    return out


# --- no solution in the kit ----------------------------------------------------------------------


def _body(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """A function's body without its docstring, as a normalised AST dump (no line numbers, no
    comments, no formatting): two functions with the same code compare equal."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        body = body[1:]
    return ast.dump(ast.Module(body=body, type_ignores=[]), annotate_fields=False, include_attributes=False)


def _functions(source: str) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def reference_bodies() -> dict[str, str]:
    """Normalised body -> ``module.function`` of every function a student writes, as the reference has it."""
    out = {}
    for task in TASKS:
        source = Path(task.module.__file__ or "").read_text(encoding="utf-8")
        for node in _functions(source):
            if node.name in task.functions and node.col_offset == 0:
                out[_body(node)] = f"{task.module.__name__}.{node.name}"
    return out


def solutions_in(folder: Path) -> list[str]:
    bodies = reference_bodies()
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in _functions(path.read_text(encoding="utf-8")):
            if _body(node) in bodies:
                found.append(f"{path.relative_to(folder)}: {node.name} is {bodies[_body(node)]}")
    return found


@pytest.mark.parametrize("preset", ["all", "tokenizer", "attention"])
def test_no_reference_function_body_is_in_the_kit(preset: str, tmp_path: Path) -> None:
    rubric = parse(f'[assignment]\npreset = "{preset}"\n', "r.toml", default_rubric())
    out = tmp_path / "kit"
    write_kit(out, rubric)
    written = set(rubric.tasks)
    bodies = reference_bodies()
    assert len(bodies) >= sum(len(t.functions) for t in TASKS) - 5  # (a few short bodies coincide: `return {}`)
    handed_out = [f for f in solutions_in(out) if not any(f.endswith(f"is {t.module.__name__}.{fn}") for t in TASKS if t.name in written for fn in t.functions)]
    assert solutions_in(out) == handed_out  # only what the assignment hands out filled in
    if preset == "all":
        assert solutions_in(out) == []
    with np.load(out / "check" / "expected.npz", allow_pickle=False) as stored:  # no pickle: would raise
        assert all(stored[k].dtype.kind in "biuf" for k in stored.files)
    json.loads((out / "check" / "cases.json").read_text())


def test_the_body_check_finds_a_solution(tmp_path: Path) -> None:
    solution_copy(tmp_path / "sneaky")
    found = solutions_in(tmp_path)
    assert any("linear.py: backward is bevialm.layers.linear.backward" in f for f in found)
    assert any("bpe.py: train is bevialm.bpe.train" in f for f in found)


# --- the kit's verdicts are the grader's ---------------------------------------------------------


RETURNING = {
    "gelu backward returns a list": ("layers/gelu.py", planted.returning("backward", "dx", "[1, 2]")),
    "softmax forward returns a list": ("layers/softmax.py", planted.returning("forward", "y.tolist()", "cache")),
    "dropout grads with an extra key": ("layers/dropout.py", planted.returning("backward", "dx", "{'extra': dx}")),
    "linear grads without db": ("layers/linear.py", planted.returning("backward", "dx", "{'W': grads['W']}")),
    "relu dx upcast": ("layers/relu.py", planted.returning("backward", "dx.astype(np.float64)", "grads")),
}
MISTAKES = {name: (file, getattr(planted, name)) for name, file in planted.PLANTED_IN.items()} | RETURNING


def test_every_planted_mistake_is_in_the_table() -> None:
    names = {n for n, v in vars(planted).items() if n.isupper() and isinstance(v, str)}
    assert names == set(planted.PLANTED_IN)


def kit_verdicts(kit: Path, folder: Path) -> dict[str, bool]:
    try:
        return {c["id"]: passed for c, (passed, _) in kit_check.check_package(kit / "check", folder)}
    finally:
        forget_package(folder.name)


SANDBOXED = {"reference", "COTANGENT_DOUBLED_IN_PLACE", "POS_EMB_GRADIENT_AVERAGED", "BPE_OVERLAPPING_MERGE"}
"""Mistakes compared with the real, sandboxed ``bevialm grade --visible-only`` (about 9 s each on an
idle machine): the reference, a mutated argument (the sandbox copies it back), the model and the BPE
task's pair counts (which cross the sandbox's wire). The other mistakes are compared with in-process
grading (2 s each), which hands the student's functions the student's own config classes as the
sandbox does (tests/test_grading_training.py holds the two gradings equal on a wrong decay rule)."""


@pytest.mark.slow
@pytest.mark.parametrize("mistake", ["reference", *MISTAKES])
def test_the_kit_passes_and_fails_what_the_grader_does(mistake: str, kit: Path, solution: Path, tmp_path: Path) -> None:
    folder = tmp_path / f"kit_pkg_{sorted(['reference', *MISTAKES]).index(mistake)}"
    shutil.copytree(solution, folder)
    if mistake != "reference":
        planted.plant(folder, *MISTAKES[mistake])
    report = grade(folder, Options(visible_only=True)) if mistake in SANDBOXED else grade_here(folder, visible_only=True)
    grader = {r.check.id: r.passed for r in report.results}
    assert kit_verdicts(kit, folder) == grader, format_report(report, width=300)
    assert (mistake == "reference") == all(grader.values())


def test_the_bare_skeleton_fails_every_check_in_the_kit(kit: Path) -> None:
    results = kit_check.check_package(kit / "check", kit / PACKAGE)
    forget_package(PACKAGE)
    assert results and all(not passed and "NotImplementedError" in hint for _, (passed, hint) in results)
    assert "score 0/" in kit_check.report(results)


# --- the command and the kit on its own --------------------------------------------------------------


def test_student_kit_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kit"
    assert grading_main(["student-kit", str(out), "--preset", "tokenizer"]) == 0
    assert "no solutions" in capsys.readouterr().out
    plan = json.loads((out / "check" / "cases.json").read_text())
    assert {c["subject"] for c in plan["checks"]} == set(PRESETS["tokenizer"]) and (out / PACKAGE / "bpe.py").is_file()
    readme = (out / "README.md").read_text() + (out / PACKAGE / "README.md").read_text()
    assert "python -m check" in readme and "docs/grading-students.md" not in readme
    (out / "mine.txt").write_text("keep me")
    assert grading_main(["student-kit", str(out)]) == 1  # not empty: nothing overwritten
    assert "pass --force" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep me"
    (tmp_path / "bad.toml").write_text("[settings]\nseed = -1\n")
    assert grading_main(["student-kit", str(tmp_path / "k2"), "--rubric", str(tmp_path / "bad.toml")]) == 1
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "k2").exists()


def test_kit_bad_inputs(kit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kit_check.main(kit / "check", [str(tmp_path)]) == 1
    assert "no package in" in capsys.readouterr().err
    assert kit_check.main(kit / "check", ["--help"]) == 2
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy" / "__init__.py").write_text("")
    assert kit_check.main(kit / "check", [str(tmp_path / "numpy")]) == 1
    assert "clashes with a Python module" in capsys.readouterr().err
    assert kit_check.main(tmp_path, []) == 1
    assert "cannot read the kit's cases" in capsys.readouterr().err


@pytest.fixture(scope="module")
def numpy_only_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with NumPy and nothing else (pip uses PyPI, through its cache when it has one)."""
    venv = tmp_path_factory.mktemp("numpy_only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "numpy"], check=True, capture_output=True, timeout=600)
    return python


def test_the_kit_runs_with_numpy_only(numpy_only_python: Path, kit: Path, solution: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COV_", "COVERAGE"))}
    alone = subprocess.run([str(numpy_only_python), "-c", "import bevialm"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert alone.returncode != 0 and "No module named 'bevialm'" in alone.stderr  # the venv has no BeviaLLM
    bare = subprocess.run([str(numpy_only_python), "-m", "check"], cwd=kit, env=env, capture_output=True, text=True, timeout=600)
    assert bare.returncode == 0 and "score 0/135 (visible checks only)" in bare.stdout, bare.stderr
    mine = tmp_path / "my_work"
    shutil.copytree(solution, mine)
    planted.plant(mine, "bpe.py", planted.BPE_DECODE_STRICT)
    done = subprocess.run([str(numpy_only_python), "-m", "check", str(mine)], cwd=kit, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "score 133/135" in done.stdout and "bpe.decode" in done.stdout and "UnicodeDecodeError" in done.stdout


def test_the_guides_kit_command_runs(tmp_path: Path) -> None:
    import re
    import shlex

    page = (Path(__file__).resolve().parent.parent / "docs" / "grading-instructors.md").read_text(encoding="utf-8")
    (line,) = re.findall(r"^ {4}(bevialm student-kit .*)$", page, re.MULTILINE)
    done = subprocess.run([sys.executable, "-m", "bevialm.cli", *shlex.split(line)[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    kit = tmp_path / "student_kit"
    for name in ("my_pkg", "check/checks.py", "check/expected.npz", "bevialm/gradcheck.py", "README.md"):
        assert (kit / name).exists(), name
    students = (Path(__file__).resolve().parent.parent / "docs" / "grading-students.md").read_text(encoding="utf-8")
    assert "$ cd student_kit && python -m check" in students
    checked = subprocess.run([sys.executable, "-m", "check"], cwd=kit, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0 and "score 0/12 (visible checks only)" in checked.stdout, checked.stderr
