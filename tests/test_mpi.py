"""``mpiexec -n N bevialm train``: bitwise the run of one process with ``--shards N``, resumable
(also on another N), stopped once by SIGTERM, stopped by a killed rank without a torn checkpoint,
refused when the ranks' flags differ; and nothing of MPI outside ``mpiexec``.

The runs go through the real command line. They need the ``[mpi]`` extra (mpi4py and the mpich
wheel, whose ``mpiexec`` sits beside this interpreter); without it they skip, saying why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bevialm import distributed, model, parallel
from bevialm.checkpoint import load_checkpoint
from bevialm.types import IntArray

ROOT = Path(__file__).resolve().parent.parent
DATA = str(ROOT / "data.txt")
MPIEXEC = Path(sys.executable).parent / "mpiexec"
BEVIALM = [sys.executable, "-m", "bevialm", "train"]
# Tiny, but each batch has 24 x 32 = 768 tokens: up to three shards of at least 256 (four with ctx 48).
FLAGS = "--ctx 32 --dim 16 --layers 1 --mlp_hidden 32 --batch 24 --log_every 2 --eval_every 3 --eval_iters 2 --warmup 0".split()
LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_SIZE", "PMIX_RANK")

try:
    import mpi4py  # noqa: F401

    MISSING = None if MPIEXEC.exists() else f"no mpiexec beside {sys.executable}: pip install 'bevialm[mpi]'"
except ImportError:
    MISSING = "mpi4py is not installed: pip install 'bevialm[mpi]' (make install does)"

needs_mpi = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}


def train(tmp: Path, out: str, *flags: str, ranks: int = 0, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [*BEVIALM, "--data", DATA, *FLAGS, "--out", out, *flags]
    if ranks:
        cmd = [str(MPIEXEC), "-n", str(ranks), *cmd]
    return subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout, env=clean_env())


def same_params(a: Path, b: Path) -> bool:
    pa, pb = load_checkpoint(a).params, load_checkpoint(b).params
    return pa.keys() == pb.keys() and all(pa[k].tobytes() == pb[k].tobytes() for k in pa)


@needs_mpi
@pytest.mark.parametrize(
    ("ranks", "flags"),
    [
        (2, ["--shards", "2"]),
        (2, ["--shards", "2", "--accum", "2"]),
        (2, ["--shards", "4"]),  # three shards (768 tokens): rank 1 computes two, one in a worker process
        (2, ["--shards", "2", "--dropout", "0.1"]),  # one shard, computed on every rank
        (3, ["--shards", "3", "--ctx", "48"]),  # an Allreduce would not promise this order
    ],
)
def test_ranks_give_the_bits_of_one_process_with_as_many_shards(tmp_path: Path, ranks: int, flags: list[str]) -> None:
    one = train(tmp_path, "one", "--steps", "6", "--sample_len", "0", *flags)
    assert one.returncode == 0, one.stderr
    mpi = train(tmp_path, "mpi", "--steps", "6", "--sample_len", "0", *flags, ranks=ranks)
    assert mpi.returncode == 0, mpi.stderr
    assert f"mpi: {ranks} ranks" in mpi.stdout
    for name in ("best.npz", "last.npz"):
        assert same_params(tmp_path / "one" / name, tmp_path / "mpi" / name), name
    assert mpi.stdout.count("done: step 6/6") == 1  # rank 0 alone prints


@needs_mpi
def test_the_default_shards_follow_the_ranks_and_the_writer_is_rank_zero(tmp_path: Path) -> None:
    one = train(tmp_path, "one", "--steps", "3", "--shards", "3", "--ctx", "48", "--sample_len", "20")
    mpi = train(tmp_path, "mpi", "--steps", "3", "--ctx", "48", "--sample_len", "20", ranks=3)  # --shards 2 < 3 ranks
    assert one.returncode == mpi.returncode == 0, mpi.stderr
    assert same_params(tmp_path / "one" / "last.npz", tmp_path / "mpi" / "last.npz")
    assert mpi.stdout.count("----- sample at step 3 -----") == 1
    assert load_checkpoint(tmp_path / "mpi" / "last.npz").train_config["shards"] == 3


@needs_mpi
def test_resume_under_mpi_is_bit_exact_also_on_another_number_of_ranks(tmp_path: Path) -> None:
    constant = ["--min_lr", "3e-4", "--sample_len", "0"]  # a constant rate: --steps changes nothing else
    whole = train(tmp_path, "whole", "--steps", "6", *constant, ranks=2)
    first = train(tmp_path, "split", "--steps", "3", *constant)  # one process, --shards 2 (the default)
    second = train(tmp_path, "split", "--steps", "6", "--resume", *constant, ranks=2)
    assert whole.returncode == first.returncode == second.returncode == 0, second.stderr
    assert "resuming from step 3" in second.stdout
    assert same_params(tmp_path / "whole" / "last.npz", tmp_path / "split" / "last.npz")
    fewer = train(tmp_path, "split", "--steps", "8", "--resume", *constant, ranks=4, timeout=180)
    assert fewer.returncode == 0, fewer.stderr
    assert "shards 2 -> 4" in fewer.stdout  # four ranks cut the batch in four: said, in one line


def _started(tmp: Path, out: str) -> tuple[subprocess.Popen[str], list[int]]:
    cmd = [str(MPIEXEC), "-n", "2", *BEVIALM, "--data", DATA, *FLAGS, "--out", out, "--steps", "1000000", "--sample_len", "0", "--eval_every", "200"]
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("mpi: 2 ranks"):
            pids = [int(part.split(":")[1].rstrip(",);")) for part in line.split("(")[1].split(")")[0].split(", ")]
            break
    else:  # pragma: no cover - the run failed to start
        raise AssertionError(proc.communicate()[1])
    while not (tmp / out / "metrics.jsonl").exists() or not (tmp / out / "metrics.jsonl").stat().st_size:
        time.sleep(0.1)  # some steps done and logged
    return proc, pids


@needs_mpi
def test_sigterm_to_mpiexec_saves_once_and_says_so_in_one_line(tmp_path: Path) -> None:
    proc, _ = _started(tmp_path, "run")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("terminated (SIGTERM) at step "), err
    step = int(lines[0].split("at step ")[1].split("/")[0])
    assert load_checkpoint(tmp_path / "run" / "last.npz").step == step


@needs_mpi
def test_a_killed_rank_stops_every_rank_within_seconds_and_tears_no_checkpoint(tmp_path: Path) -> None:
    proc, pids = _started(tmp_path, "run")
    os.kill(pids[1], signal.SIGKILL)
    start = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 10
    assert proc.returncode != 0
    assert f"PID {pids[1]} " in out + err  # mpiexec names it; the header line maps the PID to rank 1
    ckpt = load_checkpoint(tmp_path / "run" / "last.npz")  # whole: written aside and renamed
    assert ckpt.step >= 0 and ckpt.opt_state is not None


@needs_mpi
def test_ranks_started_with_other_flags_are_refused_in_one_line(tmp_path: Path) -> None:
    base = [*BEVIALM, "--data", DATA, *FLAGS, "--out", "run", "--steps", "3"]
    cmd = [str(MPIEXEC), "-n", "1", *base, "--lr", "1e-3", ":", "-n", "1", *base, "--lr", "2e-3"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=clean_env())
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: rank 1 started with other flags or data than rank 0 (lr 0.002 on rank 1, 0.001 on rank 0): "
        "every rank must run the same command on the same data"
    )
    assert not (tmp_path / "run").exists()


def test_a_launcher_without_the_extra_is_one_line_naming_the_install(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker" / "mpi4py"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no mpi4py here')\n")
    for rank, expected in (("0", 1), ("1", 0)):
        env = {**clean_env(), "PMI_SIZE": "2", "PMI_RANK": rank, "PYTHONPATH": f"{blocker.parent}{os.pathsep}{ROOT}"}
        done = subprocess.run(
            [*BEVIALM, "--data", DATA, *FLAGS, "--steps", "2"], cwd=tmp_path, capture_output=True, text=True, env=env
        )
        assert done.returncode == 1
        assert done.stderr.count("\n") == expected, done.stderr  # rank 0 alone says it
        if expected:
            assert done.stderr.strip() == (
                "error: this run was started by an MPI launcher (2 processes) but mpi4py is not installed: "
                "pip install 'bevialm[mpi]'"
            )
    assert not (tmp_path / "runs").exists()


def test_outside_mpiexec_nothing_imports_mpi4py(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom bevialm.cli import main\n"
        f"assert main(['train', '--data', {DATA!r}, '--ctx', '16', '--dim', '8', '--layers', '1', '--mlp_hidden', '8', "
        "'--steps', '2', '--eval_iters', '1', '--sample_len', '0', '--out', 'run']) == 0\n"
        "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'\nprint('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=clean_env())
    assert done.returncode == 0 and done.stdout.endswith("ok\n"), done.stderr


# --- in this process: one rank of the exchange (MPI.COMM_SELF) --------------------------------


@needs_mpi
@pytest.mark.parametrize("accum", [1, 3])
def test_one_ranks_exchange_is_the_shards_sum_bitwise(accum: int) -> None:
    from mpi4py import MPI

    cfg = model.ModelConfig(vocab_size=11, ctx=16, dim=8, n_layers=1, n_heads=2, mlp_hidden=12)
    params = model.init_params(cfg, np.random.default_rng(0), np.float32)
    group = distributed.Group(MPI.COMM_SELF, 0, 1, sys.stderr)

    def drawer() -> Callable[[], tuple[IntArray, IntArray]]:  # the same micro-batches each time
        it = iter(np.random.default_rng(1).integers(0, 11, size=(accum, 2, 72, 16)))
        return lambda: (lambda xy: (xy[0], xy[1]))(next(it))

    loss, grads = group.step_loss_and_grads(params, drawer(), cfg, batch=72, accum=accum, shards=3)
    ref_loss, ref = parallel.step_loss_and_grads(params, drawer(), cfg, batch=72, accum=accum, shards=3)
    assert loss == ref_loss
    assert all(grads[k].tobytes() == ref[k].tobytes() for k in ref)
    assert "batch cut into 3 shards" in distributed.describe(group, 72, 16, 3, cfg)
    group.stop[0] = True
    with pytest.raises(KeyboardInterrupt):
        group.step_loss_and_grads(params, drawer(), cfg, batch=72, accum=accum, shards=3)


@needs_mpi
def test_join_under_a_launcher_gives_this_ranks_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from bevialm.runtime import find_openblas

    blas = find_openblas()
    threads = None if blas is None else blas.get()
    monkeypatch.setenv("PMI_SIZE", "2")  # as if launched; this process is MPI's singleton, rank 0 of 1
    try:
        group = distributed.join()
    finally:
        if blas is not None and threads is not None:
            blas.set(threads)
    assert group is not None and group.rank == 0 and group.writer
