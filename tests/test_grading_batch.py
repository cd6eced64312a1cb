"""grade-all: a class's submissions into a gradebook. A correct, a broken and a hostile
submission each get their own, right row; a second run grades only what changed."""

from __future__ import annotations

import csv
import json
import re
import resource
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bevialm.grading import cli as grading_cli
from bevialm.grading.batch_scan import SubmissionRefused, safe_extract
from bevialm.grading.batch_students import ExportError, find_students

from .test_grading import solution_copy

RUBRIC = """
[assignment]
preset = "layers"
[settings]
time_limit = 3.0
[kinds.backward]
enabled = false
[kinds.gradcheck]
enabled = false
[kinds.purity]
enabled = false
[kinds.loss_and_grads]
enabled = false
[kinds.training]
enabled = false
"""

HANG_AT_IMPORT = "import os, time\nprint('spam ' * 10000)\nwhile True:\n    time.sleep(0.01)\n"


def zip_folder(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as z:
        for path in sorted(folder.rglob("*")):
            z.write(path, Path("pkg") / path.relative_to(folder))
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("class")
    solution = solution_copy(root / "solution")
    subs = root / "submissions"
    subs.mkdir()
    shutil.copytree(solution, subs / "alice" / "my_package")  # correct, one level down
    (subs / "bob").mkdir()
    (subs / "bob" / "notes.txt").write_text("I could not get it to work\n")  # broken: no package
    shutil.copytree(solution, root / "mallory")
    (root / "mallory" / "__init__.py").write_text(HANG_AT_IMPORT)  # hostile: hangs and floods
    zip_folder(root / "mallory", subs / "mallory.zip")
    (subs / "submission_metadata.yml").write_text("not a student\n")
    (root / "rubric.toml").write_text(RUBRIC)
    return subs


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {r["student"]: r for r in csv.DictReader(f)}


def test_grade_all_gives_each_student_their_own_row(export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gradebook = tmp_path / "grades.csv"
    argv = ["grade-all", str(export), "--csv", str(gradebook), "--rubric", str(export.parent / "rubric.toml"),
            "--jobs", "2", "--student-time-limit", "8"]  # fmt: skip
    assert grading_cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "graded 3 students" in captured.out and "[3/3]" in captured.err and "spam" not in captured.out + captured.err
    rows = read_csv(gradebook)
    assert list(rows) == ["alice", "bob", "mallory"]
    alice, bob, mallory = rows["alice"], rows["bob"], rows["mallory"]
    assert alice["score"] == alice["max"] == "22" and alice["linear"] == "2" and alice["flags"] == ""
    assert alice["status"] == "graded" and alice["checks"] == "all"
    # never a plain 0: a submission that could not be graded says why, with no score
    assert bob["status"] == "could not run" and bob["score"] == bob["linear"] == "" and bob["max"] == "22"
    assert "no BeviaLLM package in bob:" in bob["flags"] and "/tmp" not in bob["flags"]
    assert mallory["status"] == "timed out" and mallory["score"] == "" and mallory["max"] == "22"
    assert "took longer than 8 s" in mallory["flags"]
    results = tmp_path / "grades-results"
    assert json.loads((results / "alice.json").read_text())["score"] == 22
    assert {p.name for p in results.glob("*.json")} == {"alice.json", "bob.json", "mallory.json"}

    # a second run grades nothing again, a changed submission is graded again
    (export / "bob" / "notes.txt").write_text("still nothing\n")
    assert grading_cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "[3/3] bob" in captured.err and "alice" not in captured.err and "2 unchanged" in captured.out
    assert read_csv(gradebook) == rows


def test_zip_of_the_whole_export_is_graded_too(export: Path, tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((export / "alice").rglob("*")):
            z.write(path, Path("assignment_1_export") / "submission_1" / path.relative_to(export / "alice"))
    gradebook = tmp_path / "g.csv"
    rubric = str(export.parent / "rubric.toml")
    assert grading_cli.main(["grade-all", str(archive), "--csv", str(gradebook), "--rubric", rubric, "--jobs", "1"]) == 0
    assert read_csv(gradebook)["submission_1"]["score"] == "22"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "does not exist"),
        (lambda tmp: tmp, "no submissions"),
        (lambda tmp: (tmp / "notes.txt").write_text("x") and tmp / "notes.txt", "neither a folder nor a .zip"),
    ],
)
def test_bad_inputs_fail_with_one_line(make: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    target = make(tmp_path / "in")  # type: ignore[operator]
    assert grading_cli.main(["grade-all", str(target), "--csv", str(tmp_path / "g.csv")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("bevialm grade-all: error:")
    assert not (tmp_path / "g.csv").exists()


def test_hostile_zips_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside.py", "x = 1\n")
    with pytest.raises(SubmissionRefused, match="outside its folder"):
        safe_extract(evil, tmp_path / "out")
    assert not (tmp_path / "outside.py").exists()
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.bin", b"\0" * (65 * 2**20))
    with pytest.raises(SubmissionRefused, match="more than 64 MiB"):
        safe_extract(bomb, tmp_path / "out2")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(SubmissionRefused, match="not a readable zip"):
        safe_extract(tmp_path / "bad.zip", tmp_path / "out3")


def test_a_student_as_folder_and_zip_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann.zip").write_bytes(b"")
    with pytest.raises(ExportError, match="both a folder and a zip"):
        find_students(tmp_path)


def test_flags_name_what_the_instructor_should_look_at() -> None:
    from bevialm.grading.batch import flags

    data = {
        "output": "score 3/10\nFLAGGED: this package uses the reference implementation instead of its own:",
        "flags": ["imported bevialm.layers", "b", "c", "d"],
        "tests": [
            {"status": "failed", "output": "timed out: no result within 2 s"},
            {"status": "failed", "output": "timed out: no result within 2 s"},
            {"status": "failed", "output": "crashed: killed by signal SIGSEGV"},
            {"status": "passed", "output": "ok"},
        ],
    }
    assert flags(data) == ["uses the reference", "imported bevialm.layers", "b", "c", "... (1 more flags)", "2 checks timed out", "1 check crashed"]


def test_visible_only_has_one_total_and_a_link_to_the_solution_earns_nothing(tmp_path: Path) -> None:
    solution = solution_copy(tmp_path / "instructor" / "solution")
    subs = tmp_path / "subs"
    shutil.copytree(solution, subs / "alice" / "pkg")
    (subs / "eve").mkdir()
    (subs / "eve" / "pkg").symlink_to(solution)  # the instructor's own solution, by a link
    rubric = tmp_path / "rubric.toml"
    rubric.write_text(RUBRIC + '[checks."block.forward"]\nvisibility = "hidden"\n')
    gradebook = tmp_path / "grades.csv"
    argv = ["grade-all", str(subs), "--csv", str(gradebook), "--rubric", str(rubric), "--visible-only", "--jobs", "2"]
    assert grading_cli.main(argv) == 0
    rows = read_csv(gradebook)
    alice, eve = rows["alice"], rows["eve"]
    assert (alice["status"], alice["score"], alice["max"], alice["checks"]) == ("graded", "20", "20", "visible only")
    assert "block" not in alice  # the hidden check's task is no column
    data = json.loads((tmp_path / "grades-results" / "alice.json").read_text())
    assert sum(t["max_score"] for t in data["tests"]) == data["score"] == 20
    assert "score 20/20 (visible checks only)" in data["output"] and re.match(r"BeviaLLM grading of alice(/pkg)?\n", data["output"])
    assert eve["status"] == "could not run" and eve["score"] == "" and eve["max"] == "20"
    assert eve["flags"].startswith("links not followed: pkg; not graded: no BeviaLLM package in eve:")
    everything = gradebook.read_text() + "".join(p.read_text() for p in (tmp_path / "grades-results").iterdir())
    assert "bevialm-grade-all" not in everything and "bevialm-export" not in everything and str(tmp_path) not in everything


def test_a_class_under_a_1gb_memory_cap_with_an_8gib_file(tmp_path: Path) -> None:
    """The real grader in a 1 GB address space (``ulimit -v``, a Slurm job): the 8 GiB file
    costs its student nothing but a flag, and the checks still run (their own memory limit
    cannot exceed the one they start under)."""
    solution = solution_copy(tmp_path / "solution")
    subs = tmp_path / "subs"
    for name in ("alice", "bigfile"):
        shutil.copytree(solution, subs / name / "pkg")
    with (subs / "bigfile" / "data.bin").open("wb") as f:
        f.truncate(8 * 2**30)
    (tmp_path / "rubric.toml").write_text(RUBRIC)
    gradebook = tmp_path / "g.csv"

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))

    argv = [sys.executable, "-m", "bevialm.cli", "grade-all", str(subs), "--csv", str(gradebook), "--rubric", str(tmp_path / "rubric.toml")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=cap, check=False)
    assert done.returncode == 0, done.stderr
    rows = read_csv(gradebook)
    assert [(r["status"], r["score"]) for r in rows.values()] == [("graded", "22"), ("graded", "22")]
    assert rows["bigfile"]["flags"] == "files over 16 MiB not graded: data.bin (8192 MiB)"
