"""Numbered run folders (bevialm.runs) and the trainer's use of them: a new folder per run,
the newest one found by number, stale temporary files cleared, and a failed start that
leaves no folder behind."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from bevialm import checkpoint, runs
from bevialm.train import TrainConfig, TrainError, train

ROOT = Path(__file__).resolve().parent.parent


def test_new_run_folders_are_numbered_and_never_shared(tmp_path: Path) -> None:
    root = str(tmp_path / "runs")
    assert runs.new_run_folder(root) == str(tmp_path / "runs" / "run-001")
    (tmp_path / "runs" / "run-002").write_text("a file in the way")  # as if another run took 002
    assert runs.new_run_folder(root) == str(tmp_path / "runs" / "run-003")
    (tmp_path / "runs" / "run-999").mkdir()
    assert runs.new_run_folder(root) == str(tmp_path / "runs" / "run-1000")
    (tmp_path / "runs" / "notes").mkdir()  # other folders are not runs
    assert runs.new_run_folder(root) == str(tmp_path / "runs" / "run-1001")


def test_the_newest_run_is_the_highest_number_that_holds_the_file(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    assert runs.newest_with(("best.npz",), str(root)) is None  # no runs folder at all
    for name in ("run-002", "run-010", "run-1000"):
        (root / name).mkdir(parents=True)
    (root / "run-002" / "best.npz").write_bytes(b"x")
    (root / "run-010" / "last.npz").write_bytes(b"x")
    assert runs.newest_with(("best.npz", "last.npz"), str(root)) == str(root / "run-010" / "last.npz")
    (root / "run-1000" / "best.npz").write_bytes(b"x")  # 1000 > 010 although "run-1000" < "run-010"
    assert runs.newest_with(("best.npz", "last.npz"), str(root)) == str(root / "run-1000" / "best.npz")
    assert runs.newest_with(("metrics.jsonl",), str(root)) is None


def test_only_our_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    for name in (".last.npz.abc.tmp", ".best.npz.x_y.tmp", "last.npz", ".other.npz.a.tmp", "mine.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert runs.remove_stale_temp_files(str(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.npz.a.tmp", "last.npz", "mine.tmp"]
    assert runs.remove_stale_temp_files(str(tmp_path / "missing")) == 0


def test_a_start_that_fails_after_creating_its_folder_removes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_checkpoint", full_disk)
    cfg = TrainConfig(data=str(ROOT / "data.txt"), ctx=8, dim=8, layers=1, mlp_hidden=8, batch=2, steps=2, sample_len=0)
    with pytest.raises(TrainError, match=r"cannot write checkpoint 'runs/run-001/last.npz': No space left on device"):
        train(cfg, stdout=io.StringIO())
    assert list((tmp_path / "runs").iterdir()) == []  # no half-started run-001 for `bevialm sample` to find
    with pytest.raises(TrainError):
        train(TrainConfig(**{**cfg.__dict__, "out": "a/b/c"}), stdout=io.StringIO())
    assert not (tmp_path / "a").exists()  # every folder it created, not just the last
