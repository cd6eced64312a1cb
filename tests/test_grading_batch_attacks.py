"""grade-all against a hostile class, through the real command line (with a fake grader that
reports exactly which files it was given: see grade_all_fake.py).

Links are never followed out of a submission, FIFOs and devices are never opened, a huge
file costs only its own row even under a 1 GB memory cap, the CSV cannot run formulas, and
students are named from Gradescope's metadata, with no grader temp path anywhere."""

from __future__ import annotations

import csv
import json
import os
import resource
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bevialm.grading import batch
from bevialm.grading import cli as grading_cli
from bevialm.grading.batch_csv import FORMULA_STARTS, Row, write_csv

from .grade_all_fake import command, fake_grader, run


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {r["student"]: r for r in csv.DictReader(f)}


def graded_files(results: Path, student: str) -> list[str]:
    return [t["name"] for t in json.loads((results / f"{student}.json").read_text())["tests"]]


@pytest.fixture
def solution(tmp_path: Path) -> Path:
    """Stands for the instructor's solution: any read of it shows in the fake's output."""
    folder = tmp_path / "instructor" / "solution"
    folder.mkdir(parents=True)
    (folder / "linear.py").write_text("SOLUTION_SECRET = 1\n")
    return folder


def test_links_are_not_followed_and_special_files_not_opened(tmp_path: Path, solution: Path) -> None:
    subs = tmp_path / "subs"
    eve = subs / "eve" / "pkg"
    eve.mkdir(parents=True)
    (eve / "mine.py").write_text("x = 1\n")
    (eve / "linear.py").symlink_to(solution / "linear.py")  # the instructor's solution
    (subs / "eve" / "passwd").symlink_to("/etc/passwd")
    (subs / "eve" / "sol").symlink_to(solution)  # a folder link
    (subs / "eve" / "zero").symlink_to("/dev/zero")  # reading it never ends
    os.mkfifo(subs / "eve" / "pipe")  # opening it blocks
    if os.geteuid() == 0:
        os.mknod(subs / "eve" / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    (subs / "mallory").symlink_to(solution)  # the whole submission is a link
    (subs / "trudy.zip").symlink_to(tmp_path / "instructor" / "anything.zip")
    gradebook = tmp_path / "g.csv"
    done = run(fake_grader(tmp_path), str(subs), "--csv", str(gradebook), "--jobs", "2", timeout=60)
    assert done.returncode == 0, done.stderr
    rows = read_rows(gradebook)
    assert graded_files(tmp_path / "g-results", "eve") == ["pkg/mine.py"]  # what eve really wrote
    assert rows["eve"]["status"] == "graded" and rows["eve"]["score"] == "1"
    assert "links not followed: passwd, pkg/linear.py, sol and 1 more" in rows["eve"]["flags"]
    special = "special files not read: null, pipe" if os.geteuid() == 0 else "special files not read: pipe"
    assert special in rows["eve"]["flags"]
    for name in ("mallory", "trudy"):
        assert rows[name]["status"] == "could not run" and rows[name]["score"] == ""
        assert "the submission is a link (not followed)" in rows[name]["flags"]
    everything = gradebook.read_text() + "".join(p.read_text() for p in (tmp_path / "g-results").iterdir())
    assert "SOLUTION_SECRET" not in everything and "root:" not in everything


def test_gradebook_cells_never_run_as_formulas(tmp_path: Path) -> None:
    subs = tmp_path / "subs"
    for name in ("=HYPERLINK(1)", "+sum", "-1", "@cmd", "\ttab", "ok"):
        (subs / name).mkdir(parents=True)
        (subs / name / "a.py").write_text("x = 1\n")
    (subs / "ok" / "CRASH").write_text("")  # its error line, in the flags, is "=2+5"
    meta = {"ok": {":submitters": [{":name": "=cmd|' /C calc'!A0", ":email": "\tx@example.edu"}]}}
    (subs / "submission_metadata.json").write_text(json.dumps(meta))
    gradebook = tmp_path / "g.csv"
    assert run(fake_grader(tmp_path), str(subs), "--csv", str(gradebook)).returncode == 0
    with gradebook.open(newline="") as f:
        cells = [c for r in csv.reader(f) for c in r]
    assert cells and not [c for c in cells if c.startswith(FORMULA_STARTS)]
    for escaped in ("'=HYPERLINK(1)", "'+sum", "'-1", "'@cmd", "'\ttab", "'=cmd|' /C calc'!A0"):
        assert escaped in cells
    assert read_rows(gradebook)["ok"]["email"] == "x@example.edu"  # names and emails are one line each
    assert read_rows(gradebook)["ok"]["flags"] == "not graded: =2+5"  # inside a cell: harmless


def sparse(path: Path, size: int) -> None:
    with path.open("wb") as f:
        f.truncate(size)


def test_huge_files_cost_only_their_row_under_a_1gb_memory_cap(tmp_path: Path) -> None:
    subs = tmp_path / "subs"
    for name in ("alice", "bigfile", "hoarder"):
        (subs / name).mkdir(parents=True)
        (subs / name / "a.py").write_text("x = 1\n")
    sparse(subs / "bigfile" / "data.bin", 8 * 2**30)  # 8 GiB of holes: reading it whole would fail
    for i in range(5):
        sparse(subs / "hoarder" / f"part{i}.bin", 15 * 2**20)  # each allowed, 75 MiB in all

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))

    gradebook = tmp_path / "g.csv"
    started = time.monotonic()
    done = subprocess.run(
        command(fake_grader(tmp_path), str(subs), "--csv", str(gradebook), "--jobs", "1"),
        capture_output=True, text=True, timeout=120, preexec_fn=cap, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60  # the 8 GiB are neither hashed nor copied
    rows = read_rows(gradebook)
    assert rows["alice"]["status"] == rows["bigfile"]["status"] == "graded"
    assert graded_files(tmp_path / "g-results", "bigfile") == ["a.py"]
    assert "files over 16 MiB not graded: data.bin (8192 MiB)" in rows["bigfile"]["flags"]
    assert rows["hoarder"]["status"] == "could not run" and "more than 64 MiB of files" in rows["hoarder"]["flags"]


@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_an_unwritable_gradebook_is_found_before_grading(where: str, tmp_path: Path) -> None:
    subs = tmp_path / "subs"
    (subs / "alice").mkdir(parents=True)
    (subs / "alice" / "a.py").write_text("x = 1\n")
    if where == "folder":
        gradebook = tmp_path / "grades.csv"
        gradebook.mkdir()
    else:
        (tmp_path / "notes").write_text("")
        gradebook = tmp_path / "notes" / "grades.csv"
    log = tmp_path / "log"
    done = run(fake_grader(tmp_path), str(subs), "--csv", str(gradebook), "--results-dir", str(tmp_path / "r"), env={"FAKE_LOG": str(log)})
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("bevialm grade-all: error:") and "gradebook" in done.stderr
    assert not log.exists()  # nobody was graded
    assert not [p for p in tmp_path.rglob(".grades-*")]


def test_a_failed_gradebook_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "grades.csv"
    target.mkdir()
    (target / "keep").write_text("")  # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        write_csv(target, [Row("a", "graded", 1, 1, {}, [])], [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grades.csv"]


GRADESCOPE_YML = """\
submission_101:
  :submitters:
  - :name: Ada Lovelace
    :sid: '1815'
    :email: ada@example.edu
  :created_at: 2026-01-01 10:00:00.000000000 -08:00
  :score: 10.0
submission_102:
  :submitters:
  - :name: 'Patrick O''Brian'
    :email: pat@example.edu
  - :name: "Zo\\u00eb Li"
    :email: zoe@example.edu
"""


@pytest.mark.parametrize("form", ["yml", "json"])
def test_students_are_named_from_gradescope_metadata(form: str, tmp_path: Path) -> None:
    subs = tmp_path / "export"
    for folder in ("submission_101", "submission_102", "submission_103"):
        (subs / folder).mkdir(parents=True)
        (subs / folder / "a.py").write_text("x = 1\n")
    if form == "yml":
        (subs / "submission_metadata.yml").write_text(GRADESCOPE_YML)
    else:
        meta = {
            "submission_101": {":submitters": [{":name": "Ada Lovelace", ":email": "ada@example.edu"}]},
            "submission_102": {":submitters": [{":name": "Patrick O'Brian", ":email": "pat@example.edu"}, {":name": "Zoë Li", ":email": "zoe@example.edu"}]},
        }
        (subs / "submission_metadata.json").write_text(json.dumps(meta))
    gradebook = tmp_path / "g.csv"
    assert run(fake_grader(tmp_path), str(subs), "--csv", str(gradebook)).returncode == 0
    rows = read_rows(gradebook)
    assert list(rows) == ["submission_101", "submission_102", "submission_103"]  # the metadata is no student
    assert (rows["submission_101"]["name"], rows["submission_101"]["email"]) == ("Ada Lovelace", "ada@example.edu")
    assert rows["submission_102"]["name"] == "Patrick O'Brian; Zoë Li"
    assert rows["submission_102"]["email"] == "pat@example.edu; zoe@example.edu"
    assert rows["submission_103"]["name"] == ""  # not in the metadata: the folder name only
    student = json.loads((tmp_path / "g-results" / "submission_101.json").read_text())
    assert student["output"].startswith("BeviaLLM grading of Ada Lovelace")  # its name, never a temp folder
    assert "read a.py in Ada Lovelace:" in student["tests"][0]["output"]
    text = gradebook.read_text() + "".join(p.read_text() for p in (tmp_path / "g-results").iterdir())
    assert "/tmp" not in text and "bevialm-grade-all" not in text and str(tmp_path) not in text


def test_timed_out_and_crashed_gradings_are_never_a_plain_zero(tmp_path: Path) -> None:
    subs = tmp_path / "subs"
    for name in ("crash", "hang", "ok"):
        (subs / name).mkdir(parents=True)
        (subs / name / "a.py").write_text("x = 1\n")
    (subs / "crash" / "CRASH").write_text("")
    (subs / "hang" / "slow").write_text("")
    gradebook = tmp_path / "g.csv"
    done = run(fake_grader(tmp_path), str(subs), "--csv", str(gradebook), "--student-time-limit", "2", env={"FAKE_SLEEP_IF": "slow"})
    assert done.returncode == 0, done.stderr
    rows = read_rows(gradebook)
    assert [(r["status"], r["score"], r["linear"]) for r in rows.values()] == [
        ("could not run", "", ""), ("timed out", "", ""), ("graded", "1", "1"),
    ]  # fmt: skip
    assert rows["hang"]["flags"] == "not graded: grading took longer than 2 s and was stopped"
    assert json.loads((tmp_path / "g-results" / "hang.json").read_text())["bevialm_grade_all"]["status"] == "timed out"
    assert "hang: timed out" in done.stderr and "crash: could not run" in done.stderr


def test_the_grader_is_given_the_students_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bevialm grade --display-name`` gets the student's name, even one that starts with "-"."""
    subs = tmp_path / "subs"
    (subs / "-1").mkdir(parents=True)
    (subs / "-1" / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(batch, "GRADE_COMMAND", (sys.executable, str(fake_grader(tmp_path))))
    assert grading_cli.main(["grade-all", str(subs), "--csv", str(tmp_path / "g.csv")]) == 0
    data = json.loads((tmp_path / "g-results" / "-1.json").read_text())
    assert data["output"].startswith("BeviaLLM grading of -1 (by --display-name)\n")
