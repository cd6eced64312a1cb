"""Uploads as students make them: a package folder, a folder holding it, the files without their
folders, or (by mistake) two packages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bevialm.grading.student import SubmissionError, find_package_root

from .test_grading import failing, grade_here, solution_copy


@pytest.fixture(scope="module")
def solution(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return solution_copy(tmp_path_factory.mktemp("uploads") / "pkg")


def flatten(package: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    for path in package.rglob("*.py"):
        if path.name != "__init__.py" or path.parent == package:
            shutil.copyfile(path, out / path.name)
    return out


def test_flattened_upload_is_graded_with_files_found_by_name(solution: Path, tmp_path: Path) -> None:
    upload = flatten(solution, tmp_path / "upload")
    assert (upload / "linear.py").is_file() and not (upload / "layers").exists()
    root = find_package_root(upload)
    assert root != upload and (root / "layers" / "linear.py").is_file() and (root / "losses.py").is_file()
    report = grade_here(upload, only=("linear", "attention.forward", "cross_entropy.forward"))
    assert failing(report) == set() and report.missing == []


def test_flattened_upload_one_level_down_is_found_too(solution: Path, tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    flatten(solution, upload / "my files")
    assert (find_package_root(upload) / "layers" / "attention.py").is_file()


def test_two_packages_fail_with_one_line_naming_both(solution: Path, tmp_path: Path) -> None:
    shutil.copytree(solution, tmp_path / "upload" / "final")
    shutil.copytree(solution, tmp_path / "upload" / "old" / "draft")
    with pytest.raises(SubmissionError) as info:
        find_package_root(tmp_path / "upload")
    message = str(info.value)
    assert "\n" not in message and "final/" in message and "old/draft/" in message


def test_a_package_and_loose_files_beside_it_are_two_candidates(solution: Path, tmp_path: Path) -> None:
    shutil.copytree(solution, tmp_path / "upload" / "pkg")
    flatten(solution, tmp_path / "upload" / "loose")
    with pytest.raises(SubmissionError, match="two packages .*loose/.*pkg/|two packages .*pkg/.*loose/"):
        find_package_root(tmp_path / "upload")


def test_package_folder_is_returned_as_it_is(solution: Path, tmp_path: Path) -> None:
    shutil.copytree(solution, tmp_path / "upload" / "mine")
    assert find_package_root(tmp_path / "upload") == tmp_path / "upload" / "mine"
    assert find_package_root(tmp_path / "upload" / "mine") == tmp_path / "upload" / "mine"
