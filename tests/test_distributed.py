"""bevialm.distributed in this process, with stand-in communicators (no MPI needed): one rank
alone trains what one process trains, bitwise; a follower rank prints and writes nothing; a
mismatch names the flag; a stop raises on every rank at the same exchange; an error on one rank
alone aborts them all. ``tests/test_mpi.py`` runs the real thing under ``mpiexec``."""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bevialm import distributed, runtime, train
from bevialm.checkpoint import load_checkpoint
from bevialm.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
DATA = str(ROOT / "data.txt")


class Alone:
    """Rank 0 of 1: every collective returns this rank's part; ``bcast`` payloads are recorded."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.aborted: int | None = None

    def allgather(self, part: Any) -> list[Any]:
        return [part]

    def bcast(self, obj: Any, root: int = 0) -> Any:
        self.sent.append(obj)
        return obj

    def Allgatherv(self, send: np.ndarray[Any, Any], spec: tuple[np.ndarray[Any, Any], list[int]]) -> None:  # noqa: N802
        received, _ = spec
        received[...] = send

    def Abort(self, code: int) -> None:  # noqa: N802
        self.aborted = code
        raise SystemExit(code)


class Follower(Alone):
    """Rank 1 of 2 whose rank 0 is a replay: its broadcasts, and its rows equal to this rank's."""

    def __init__(self, replay: list[Any]) -> None:
        super().__init__()
        self.replay = iter(replay)

    def allgather(self, part: Any) -> list[Any]:
        return [part, part]

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return next(self.replay)

    def Allgatherv(self, send: np.ndarray[Any, Any], spec: tuple[np.ndarray[Any, Any], list[int]]) -> None:  # noqa: N802
        received, _ = spec
        received[...] = np.concatenate([send, send])


def config(out: Path, **overrides: Any) -> TrainConfig:
    fields: dict[str, Any] = {
        "data": DATA, "ctx": 32, "dim": 16, "layers": 1, "mlp_hidden": 32, "batch": 24, "steps": 4, "log_every": 2,
        "eval_every": 2, "eval_iters": 1, "sample_len": 10, "warmup": 0, "out": str(out),
    }  # fmt: skip
    return TrainConfig(**{**fields, **overrides})


def test_one_rank_alone_trains_the_bits_of_one_process(tmp_path: Path) -> None:
    comm = Alone()
    group = distributed.Group(comm, 0, 1, sys.stderr)
    printed = io.StringIO()
    train.train(config(tmp_path / "mpi", accum=2), stdout=printed, group=group)
    train.train(config(tmp_path / "one", accum=2), stdout=io.StringIO())
    a, b = (load_checkpoint(tmp_path / name / "last.npz").params for name in ("mpi", "one"))
    assert all(a[k].tobytes() == b[k].tobytes() for k in b)
    assert "mpi: 1 ranks" in printed.getvalue() and "batch cut into 2 shards" in printed.getvalue()
    assert comm.sent[-1][0] is True  # rank 0 shared its start


def test_a_follower_rank_prints_and_writes_nothing(tmp_path: Path) -> None:
    comm = Alone()
    train.train(config(tmp_path / "run"), stdout=io.StringIO(), group=distributed.Group(comm, 0, 1, sys.stderr))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    printed = io.StringIO()
    cfg = config(tmp_path / "run", resume=True, steps=6)
    result = train.train(cfg, stdout=printed, group=distributed.Group(Follower(comm.sent), 1, 2, sys.stderr))
    assert result.step == 6 and printed.getvalue() == ""
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == before


def test_rank_zero_failing_to_start_fails_the_others_quietly(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.npz").write_text("a run is here")
    with pytest.raises(train.TrainError, match="already holds a run"):
        train.train(config(tmp_path / "run"), stdout=io.StringIO(), group=distributed.Group(Alone(), 0, 1, sys.stderr))
    with pytest.raises(distributed.PeerFailed, match="rank 0 could not start the run"):
        train.train(config(tmp_path / "run"), group=distributed.Group(Follower([(False, None)]), 1, 2, sys.stderr))


def test_a_rank_with_other_flags_is_named_with_the_flag() -> None:
    class Odd(Alone):
        def allgather(self, part: Any) -> list[Any]:
            return [part, "another digest"]

        def bcast(self, obj: Any, root: int = 0) -> Any:
            return {"lr": 0.002, "batch": 8} if root == 1 else obj  # rank 1's fingerprint

    group = distributed.Group(Odd(), 0, 2, sys.stderr)
    with pytest.raises(ValueError, match=r"^rank 1 started with other flags or data than rank 0 \(lr 0.002 on rank 1, 0.001 on rank 0\)"):
        group.require_same_run({"lr": 0.001, "batch": 8})


def test_the_fingerprint_holds_the_flags_and_the_data(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    cfg = config(tmp_path)
    got = distributed.fingerprint(cfg, str(tmp_path / "a.txt"))
    assert got["lr"] == cfg.lr
    assert got["data sha256"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert distributed.fingerprint(cfg, str(tmp_path / "none.txt"))["data sha256"].startswith("unreadable: ")


def test_a_signal_raises_the_flag_and_the_next_exchange_stops_every_rank() -> None:
    group = distributed.Group(Alone(), 0, 1, sys.stderr)
    with distributed.stop_signals(group):
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt here: only the flag
        assert group.stop == [True] and group.stop_signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt) as caught:
            group._agree_to_go_on([0, 1])
        assert not isinstance(caught.value, runtime.Terminated)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    group._agree_to_go_on([0, 0])  # nobody signalled: go on


def test_an_error_on_one_rank_alone_aborts_every_rank(capsys: pytest.CaptureFixture[str]) -> None:
    comm = Alone()
    group = distributed.Group(comm, 1, 2, sys.stderr)
    with pytest.raises(KeyboardInterrupt), distributed.abort_alone(group, (KeyboardInterrupt,)):
        raise KeyboardInterrupt  # agreed: every rank raises it
    assert comm.aborted is None
    with pytest.raises(SystemExit), distributed.abort_alone(group, (KeyboardInterrupt,)):
        raise OSError("No space left on device")
    assert comm.aborted == 1
    assert capsys.readouterr().err == "error: rank 1: No space left on device; stopping every rank\n"


def test_a_launcher_without_mpi4py_is_refused_and_ranks_beyond_zero_are_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py fails
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "2")
    with pytest.raises(ValueError, match=r"started by an MPI launcher \(3 processes\) .* pip install 'bevialm\[mpi\]'"):
        distributed.join()
    assert sys.stdout.name == os.devnull


def test_outside_a_launcher_there_is_no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched_size() == 1 and distributed.join() is None
    monkeypatch.setenv("PMI_SIZE", "1")  # mpiexec -n 1: one process, as without mpiexec
    assert distributed.join() is None


def test_describe_says_when_every_rank_computes_the_one_shard() -> None:
    group = distributed.Group(Alone(), 0, 2, sys.stderr)
    small = config(Path("x")).model_config(59)
    assert "a batch of 256 tokens makes one shard: every rank computes it" in distributed.describe(group, 4, 64, 2, small)
    assert "dropout draws" in distributed.describe(group, 24, 32, 2, config(Path("x"), dropout=0.1).model_config(59))
    three = distributed.Group(Alone(), 0, 3, sys.stderr)
    assert "1 rank(s) have no shard" in distributed.describe(three, 16, 32, 3, small)  # 512 tokens: 2 shards


def test_one_shard_is_computed_by_every_rank_and_only_the_flags_travel(tmp_path: Path) -> None:
    group = distributed.Group(Alone(), 0, 1, sys.stderr)
    train.train(config(tmp_path / "mpi", dropout=0.1), stdout=io.StringIO(), group=group)
    train.train(config(tmp_path / "one", dropout=0.1), stdout=io.StringIO())
    a, b = (load_checkpoint(tmp_path / name / "last.npz").params for name in ("mpi", "one"))
    assert all(a[k].tobytes() == b[k].tobytes() for k in b)
    assert group.layout is None  # no gradient rows were exchanged
