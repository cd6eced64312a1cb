"""grade-all's scan of one submission: limits, fingerprints that stream and change with what
is graded, and Gradescope metadata it cannot parse (the folder name stands in)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from bevialm.grading import batch_scan
from bevialm.grading.batch_scan import fingerprint, open_regular, scan, stage
from bevialm.grading.batch_students import find_students, submitters


def test_limits_cost_only_the_submission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / "deep"
    (deep / Path(*["d"] * (batch_scan.MAX_DEPTH + 2))).mkdir(parents=True)
    assert scan(deep).problem == f"the submission nests folders more than {batch_scan.MAX_DEPTH} deep"
    many = tmp_path / "many"
    many.mkdir()
    monkeypatch.setattr(batch_scan, "MAX_FILES", 3)
    for i in range(4):
        (many / f"{i}.py").write_text("")
    assert scan(many).problem == "the submission holds more than 3 files"
    big_zip = tmp_path / "big.zip"
    with big_zip.open("wb") as f:
        f.truncate(batch_scan.MAX_SUBMISSION_BYTES + 1)
    assert scan(big_zip).problem == "the zip is larger than 64 MiB"
    os.mkfifo(tmp_path / "fifo.zip")
    assert scan(tmp_path / "fifo.zip").problem == "the submission is not a folder or a zip"
    assert scan(tmp_path / "missing").problem == "cannot read the submission (No such file or directory)"
    with pytest.raises(OSError, match="not a plain file"):
        open_regular(tmp_path / "fifo.zip")  # opened without blocking, then refused


def test_fingerprints_follow_what_is_graded(tmp_path: Path) -> None:
    sub = tmp_path / "s"
    sub.mkdir()
    (sub / "a.py").write_text("x = 1\n")
    first = fingerprint(sub, scan(sub), "rubric")
    assert fingerprint(sub, scan(sub), "rubric") == first
    assert fingerprint(sub, scan(sub), "other rubric") != first
    (sub / "a.py").write_text("x = 2\n")
    second = fingerprint(sub, scan(sub), "rubric")
    assert second != first
    (sub / "link").symlink_to("/etc/hostname")
    assert fingerprint(sub, scan(sub), "rubric") != second  # what is left out counts too
    with (sub / "big.bin").open("wb") as f:
        f.truncate(batch_scan.MAX_FILE_BYTES + 1)
    assert [rel for rel, _ in scan(sub).files] == ["a.py"]


def test_staging_copies_plain_files_only(tmp_path: Path) -> None:
    sub = tmp_path / "s"
    (sub / "pkg").mkdir(parents=True)
    (sub / "pkg" / "a.py").write_text("x = 1\n")
    found = scan(sub)
    (sub / "pkg" / "a.py").unlink()
    (sub / "pkg" / "a.py").symlink_to("/etc/passwd")  # swapped after the scan
    stage(sub, found, tmp_path / "copy")
    assert not (tmp_path / "copy" / "pkg" / "a.py").exists()
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("pkg/b.py", "y = 2\n")
    stage(archive, scan(archive), tmp_path / "unzipped")
    assert (tmp_path / "unzipped" / "pkg" / "b.py").read_text() == "y = 2\n"


def test_metadata_that_cannot_be_read_leaves_folder_names(tmp_path: Path) -> None:
    (tmp_path / "submission_1").mkdir()
    (tmp_path / "submission_metadata.json").write_text("{not json")
    (tmp_path / "submission_metadata.yml").write_text("submission_1:\n  :submitters:\n  - :name: &anchor Ada\n")
    assert submitters(tmp_path) == {"submission_1": ("", "")}
    assert [(s.name, s.display) for s in find_students(tmp_path)] == [("submission_1", "submission_1")]
    (tmp_path / "submission_metadata.json").unlink()
    (tmp_path / "submission_metadata.yml").unlink()
    (tmp_path / "submission_metadata.yml").symlink_to("/etc/hostname")  # not read through a link
    assert submitters(tmp_path) == {}
    os.mkfifo(tmp_path / "not_a_student")  # never opened, and no student
    assert [s.name for s in find_students(tmp_path)] == ["submission_1"]
