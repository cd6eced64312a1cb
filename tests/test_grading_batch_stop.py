"""Stopping grade-all: Ctrl-C, a second Ctrl-C, SIGTERM, and a broken grading environment
(``bevialm grade`` exit 3). Nothing is left running or in TMPDIR, nothing graded is lost, and
the next run grades the rest without a row twice. Through the real command line, with the
fake grader of grade_all_fake.py (and one run of the real grader)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bevialm.grading import batch
from bevialm.grading import cli as grading_cli

from .grade_all_fake import fake_grader, processes_mentioning, run, start, wait_for
from .test_grading import solution_copy
from .test_grading_batch import HANG_AT_IMPORT, RUBRIC


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def make_class(tmp_path: Path, slow: int) -> Path:
    """Student ``a_fast`` first, then ``slow`` students whose grading hangs while ``slow``
    files make the fake sleep."""
    subs = tmp_path / "subs"
    (subs / "a_fast").mkdir(parents=True)
    (subs / "a_fast" / "a.py").write_text("x = 1\n")
    for i in range(slow):
        (subs / f"s{i}").mkdir()
        (subs / f"s{i}" / "a.py").write_text(f"x = {i}\n")
        (subs / f"s{i}" / "slow").write_text("")
    return subs


def started(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize(
    ("signals", "stubborn", "code", "within"),
    [
        ([signal.SIGINT], False, 130, 8.0),  # the graders end at once on SIGTERM
        ([signal.SIGINT, signal.SIGINT], True, 130, 8.0),  # they ignore it: the second Ctrl-C kills
        ([signal.SIGTERM], True, 143, 8.0),  # SIGTERM: a short grace, then killed
    ],
)
def test_a_stopped_run_leaves_nothing_and_the_next_run_resumes(
    signals: list[int], stubborn: bool, code: int, within: float, tmp_path: Path
) -> None:
    subs = make_class(tmp_path, slow=4)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    log = tmp_path / "log"
    fake = fake_grader(tmp_path)
    gradebook = tmp_path / "g.csv"
    env = {"FAKE_LOG": str(log), "FAKE_SLEEP_IF": "slow", "TMPDIR": str(scratch)} | ({"FAKE_STUBBORN": "1"} if stubborn else {})
    process = start(fake, str(subs), "--csv", str(gradebook), "--jobs", "2", env=env)
    wait_for(lambda: started(log) == 3)  # a_fast done, two slow students running
    wait_for(lambda: len(list(scratch.glob("bevialm-grade-all-*/tmp/bevialm-check-*"))) == 2)
    stopped = time.monotonic()
    for sig in signals:
        process.send_signal(sig)
        time.sleep(0.5)
    out, err = process.communicate(timeout=60)
    assert time.monotonic() - stopped < within, err
    assert process.returncode == code, err
    assert err.splitlines()[-1] == "bevialm grade-all: stopped: 1 of 5 students are in the gradebook; run the same command again to grade the rest"
    assert started(log) == 3  # the queue stopped: the other two never started
    assert processes_mentioning(str(scratch)) == []  # no grader, nor any of its children
    assert list(scratch.iterdir()) == []  # no working folder left in TMPDIR
    assert [r["student"] for r in read_rows(gradebook)] == ["a_fast"]
    assert sorted(p.name for p in (tmp_path / "g-results").iterdir()) == ["a_fast.json"]  # no row for the stopped ones

    done = run(fake, str(subs), "--csv", str(gradebook), "--jobs", "2", env={"FAKE_LOG": str(log), "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stderr
    assert started(log) == 3 + 4  # the four others, and a_fast not again
    rows = read_rows(gradebook)
    assert [r["student"] for r in rows] == ["a_fast", "s0", "s1", "s2", "s3"]
    assert {r["status"] for r in rows} == {"graded"}


def test_a_broken_grading_environment_stops_the_run_and_writes_no_grade(tmp_path: Path) -> None:
    subs = make_class(tmp_path, slow=2)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    fake = fake_grader(tmp_path)
    gradebook = tmp_path / "g.csv"
    assert run(fake, str(subs), "--csv", str(gradebook), env={"TMPDIR": str(scratch)}).returncode == 0
    before = gradebook.read_bytes()
    s0_before = (tmp_path / "g-results" / "s0.json").read_bytes()
    for name in ("b_broken", "z_later"):
        (subs / name).mkdir()
        (subs / name / "a.py").write_text("x = 2\n")
    (subs / "b_broken" / "EXIT3").write_text("")  # its grader's canary failed
    (subs / "s0" / "a.py").write_text("x = 'changed'\n")  # regraded, and hangs meanwhile
    started_at = time.monotonic()
    done = run(fake, str(subs), "--csv", str(gradebook), "--jobs", "2", env={"TMPDIR": str(scratch), "FAKE_SLEEP_IF": "slow"})
    assert time.monotonic() - started_at < 30  # not after the hanging student's 900 s
    assert done.returncode == 3
    assert done.stderr == (
        "bevialm grade-all: error: the check user (uid 64000) cannot read NumPy at /root/venv; install where other "
        "users can read (grading stopped; the gradebook is unchanged)\n"
    )
    assert gradebook.read_bytes() == before  # rows graded before stay; none from this run
    assert (tmp_path / "g-results" / "s0.json").read_bytes() == s0_before  # stopped while regraded: the old result stays
    assert not (tmp_path / "g-results" / "b_broken.json").exists()
    assert not (tmp_path / "g-results" / "z_later.json").exists()  # queued after the failure: never graded
    assert processes_mentioning(str(scratch)) == [] and list(scratch.iterdir()) == []


def test_ctrl_c_stops_real_graders_within_seconds(tmp_path: Path) -> None:
    """The real ``bevialm grade`` on hanging submissions: Ctrl-C ends them and their checks."""
    root = tmp_path / "class"
    subs = root / "subs"
    subs.mkdir(parents=True)
    solution = solution_copy(root / "solution")
    for name in ("h1", "h2", "h3"):
        (subs / name).mkdir()
        shutil.copytree(solution, subs / name / "pkg")
        (subs / name / "pkg" / "__init__.py").write_text(HANG_AT_IMPORT)
    (root / "rubric.toml").write_text(RUBRIC.replace("time_limit = 3.0", "time_limit = 120.0"))  # hangs for long
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o755)
    gradebook = tmp_path / "g.csv"
    argv = [sys.executable, "-m", "bevialm.cli", "grade-all", str(subs), "--csv", str(gradebook), "--rubric", str(root / "rubric.toml"), "--jobs", "2"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(scratch)})
    # grade-all and its two graders (each check's shared folder may sit in a system temporary
    # folder instead of grade-all's private one, so the graders are found by their processes)
    wait_for(lambda: len(processes_mentioning(str(scratch))) >= 3, timeout=120)
    time.sleep(3.0)  # the checks are running (hung at import: each waits for its 120 s limit)
    stopped = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - stopped < 12, err  # within the grader's grace, not after the queue
    assert process.returncode == 130 and "bevialm grade-all: stopped: " in err
    # the graders' zygotes end a moment after their graders (measured: 0.1 s), never later than this
    wait_for(lambda: processes_mentioning(str(scratch)) == [], timeout=5)
    assert list(scratch.iterdir()) == []
    graded = [r["student"] for r in read_rows(gradebook)]
    assert sorted(p.stem for p in (tmp_path / "g-results").iterdir()) == graded  # none half-written
    assert f"stopped: {len(graded)} of 3 students" in err and len(graded) < 3


def test_ctrl_c_in_process_stops_the_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The same stop inside this process (so that coverage sees the signal path): Ctrl-C
    while two graders hang, then a second one while they ignore SIGTERM."""
    subs = make_class(tmp_path, slow=3)
    log = tmp_path / "log"
    monkeypatch.setattr(batch, "GRADE_COMMAND", (sys.executable, str(fake_grader(tmp_path))))
    for key, value in {"FAKE_LOG": str(log), "FAKE_SLEEP_IF": "slow", "FAKE_STUBBORN": "1", "TMPDIR": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)

    def interrupt() -> None:
        wait_for(lambda: started(log) == 3)
        time.sleep(0.5)
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)

    threading.Thread(target=interrupt, daemon=True).start()
    began = time.monotonic()
    assert grading_cli.main(["grade-all", str(subs), "--csv", str(tmp_path / "g.csv"), "--jobs", "2"]) == 130
    assert time.monotonic() - began < 30
    assert "stopped: 1 of 4 students are in the gradebook" in capsys.readouterr().err
    assert [r["student"] for r in read_rows(tmp_path / "g.csv")] == ["a_fast"]
    assert processes_mentioning(str(tmp_path)) == [] and not list(tmp_path.glob("bevialm-grade-all-*"))
