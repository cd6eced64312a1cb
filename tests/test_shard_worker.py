"""The shard workers (bevialm.shard_worker): a worker's shard has the bits this process would
give it, failures come back as one clear error, and a worker never outlives its use: not an
interrupt, not its own death, not its parent's."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bevialm import model, optim, parallel, shard_worker
from bevialm.flat_params import FlatTensors, Layout
from bevialm.model import ModelConfig
from bevialm.types import Array, IntArray

ROOT = Path(__file__).resolve().parent.parent


def tiny(dim: int = 8) -> ModelConfig:
    return ModelConfig(vocab_size=7, ctx=6, dim=dim, n_layers=2, n_heads=2, mlp_hidden=12)


def batch_of(cfg: ModelConfig, rows: int, dtype: type = np.float32) -> tuple[dict[str, Array], IntArray, IntArray]:
    rng = np.random.default_rng(rows)
    params = model.init_params(cfg, rng, dtype)
    return params, rng.integers(0, cfg.vocab_size, size=(rows, cfg.ctx)), rng.integers(0, cfg.vocab_size, size=(rows, cfg.ctx))


@pytest.fixture(autouse=True)
def split_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "MIN_SHARD_TOKENS", 1)


def in_one_process(params: dict[str, Array], idx: IntArray, targets: IntArray, cfg: ModelConfig, shards: int) -> tuple[float, dict[str, Array]]:
    """The shards' sums computed one after another here, with ShardSums' and combine's arithmetic."""
    rows = parallel.shard_rows(idx.shape[0], shards)
    losses, sums = [], []
    for r in rows:
        weight = (r.stop - r.start) / idx.shape[0]
        loss, grads = model.loss_and_grads(params, idx[r], targets[r], cfg)
        losses.append(weight * loss)
        sums.append({k: g * weight for k, g in grads.items()})
    return parallel.combine(losses, sums)


@pytest.mark.parametrize("shards", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_workers_shard_has_the_bits_of_this_process(shards: int, dtype: type) -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 7, dtype)
    loss, grads = parallel.loss_and_grads(params, idx, targets, cfg, shards=shards)
    ref_loss, ref = in_one_process(params, idx, targets, cfg, shards)
    assert loss == ref_loss
    assert all(grads[k].dtype == dtype and grads[k].tobytes() == ref[k].tobytes() for k in ref)


def test_flat_parameters_and_a_larger_model_after_a_smaller_one() -> None:
    small, idx, targets = batch_of(tiny(), 4)
    state = optim.init_state(small)
    _, grads = parallel.loss_and_grads(small, idx, targets, tiny(), shards=2)
    flat, _ = optim.flat_step(small, grads, state, optim.AdamWConfig())
    assert isinstance(flat, FlatTensors)  # the workers now read the optimizer's buffers
    loss, grads = parallel.loss_and_grads(flat, idx, targets, tiny(), shards=2)
    ref_loss, ref = in_one_process(dict(flat), idx, targets, tiny(), 2)
    assert loss == ref_loss and all(grads[k].tobytes() == ref[k].tobytes() for k in ref)
    large, idx, targets = batch_of(tiny(dim=32), 4)  # the shared file grows
    loss, grads = parallel.loss_and_grads(large, idx, targets, tiny(dim=32), shards=2)
    ref_loss, ref = in_one_process(large, idx, targets, tiny(dim=32), 2)
    assert loss == ref_loss and all(grads[k].tobytes() == ref[k].tobytes() for k in ref)


def test_the_callers_floating_point_settings_reach_the_worker() -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 4)
    idx[3] = 1
    params["tok_emb.W"][1] = np.float32(3e38)  # layer norm's square of it overflows in the second shard only
    with np.errstate(over="ignore", invalid="ignore"):
        parallel.loss_and_grads(params, idx, targets, cfg, shards=2)
    with np.errstate(over="raise"), pytest.raises(FloatingPointError, match="overflow"):
        parallel.loss_and_grads(params, idx, targets, cfg, shards=2)


@pytest.fixture
def one_worker() -> Iterator[shard_worker.Worker]:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 4)
    parallel.loss_and_grads(params, idx, targets, cfg, shards=2)  # started, and idle
    (worker,) = shard_worker.workers(1)
    yield worker


def test_a_worker_that_died_between_steps_is_replaced(one_worker: shard_worker.Worker) -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 4)
    one_worker.process.kill()  # e.g. the kernel's out-of-memory killer
    one_worker.process.wait()
    with pytest.warns(RuntimeWarning, match=r"worker process \(pid \d+\) had ended \(exit code -9\) between steps; a new one"):
        loss, grads = parallel.loss_and_grads(params, idx, targets, cfg, shards=2)
    assert shard_worker.workers(1)[0] is not one_worker
    ref_loss, ref = in_one_process(params, idx, targets, cfg, 2)
    assert loss == ref_loss and all(grads[k].tobytes() == ref[k].tobytes() for k in ref)


def test_a_worker_that_dies_during_a_shard_is_one_clear_error(one_worker: shard_worker.Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 4)
    real = model.loss_and_grads

    def kill_the_worker_first(*args: Any, **kwargs: Any) -> Any:
        one_worker.process.kill()
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "loss_and_grads", kill_the_worker_first)
    os.kill(one_worker.process.pid, signal.SIGSTOP)  # so it cannot answer before it is killed
    with pytest.raises(ChildProcessError, match=r"^parallel: a shard's worker process ended unexpectedly \(exit code -9\); try --shards 1$"):
        parallel.loss_and_grads(params, idx, targets, cfg, shards=2)
    monkeypatch.setattr(model, "loss_and_grads", real)
    assert parallel.loss_and_grads(params, idx, targets, cfg, shards=2)[0] == in_one_process(params, idx, targets, cfg, 2)[0]


def test_an_interrupt_with_work_in_flight_discards_the_worker(one_worker: shard_worker.Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 4)
    real = model.loss_and_grads

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # while the worker computes the other shard

    monkeypatch.setattr(model, "loss_and_grads", interrupted)
    with pytest.raises(KeyboardInterrupt):
        parallel.loss_and_grads(params, idx, targets, cfg, shards=2)
    assert one_worker.process.wait(timeout=10) is not None  # killed: its late answer is never read
    monkeypatch.setattr(model, "loss_and_grads", real)
    loss, _ = parallel.loss_and_grads(params, idx, targets, cfg, shards=2)
    assert loss == in_one_process(params, idx, targets, cfg, 2)[0]


def test_ctrl_c_and_sigterm_are_the_parents_to_handle(one_worker: shard_worker.Worker) -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 4)
    os.kill(one_worker.process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
    os.kill(one_worker.process.pid, signal.SIGTERM)  # so does Slurm's scancel
    time.sleep(0.2)
    assert one_worker.process.poll() is None
    loss, _ = parallel.loss_and_grads(params, idx, targets, cfg, shards=2)
    assert shard_worker.workers(1)[0] is one_worker and loss == in_one_process(params, idx, targets, cfg, 2)[0]


def test_workers_end_with_their_parent_even_one_that_skips_its_exit_handlers(tmp_path: Path) -> None:
    script = (
        "import os, numpy as np\n"
        "from bevialm import model, parallel, shard_worker\n"
        "parallel.MIN_SHARD_TOKENS = 1\n"
        "cfg = model.ModelConfig(vocab_size=7, ctx=6, dim=8, n_layers=1, n_heads=2, mlp_hidden=12)\n"
        "p = model.init_params(cfg, np.random.default_rng(0))\n"
        "x = np.zeros((2, 6), dtype=np.int64)\n"
        "parallel.loss_and_grads(p, x, x, cfg, shards=2)\n"
        "print(shard_worker.workers(1)[0].process.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT, timeout=60)
    pid = int(out.stdout)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def served() -> tuple[ModelConfig, dict[str, Array], IntArray, IntArray, Layout, shard_worker.SharedFile]:
    """A batch, its transport layout, and a shared file holding its parameters, as a parent leaves it."""
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 2)
    layout = shard_worker.transport_layout(params)
    shared = shard_worker.SharedFile.create()
    shared.fit(2 * sum(layout.sizes.values()) * layout.dtype.itemsize, grow=True)
    for k, t in shared.tensors(layout, 0).items():
        t[...] = params[k]
    return cfg, params, idx, targets, layout, shared


def test_serve_answers_until_the_pipe_closes() -> None:
    """The worker's loop, run on a thread here (so coverage sees it), with a real shared file."""
    cfg, params, idx, targets, layout, parent = served()
    child = shard_worker.SharedFile(os.dup(parent.fd))
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    with os.fdopen(to_r, "rb") as reader, os.fdopen(from_w, "wb") as writer:
        thread = threading.Thread(target=shard_worker.serve, args=(reader, writer, child))
        thread.start()
        with os.fdopen(to_w, "wb") as send, os.fdopen(from_r, "rb") as receive:
            for first, bad in ((True, False), (False, False), (True, True)):
                t = targets.copy()
                t[0, 0] = 99 if bad else t[0, 0]
                pickle.dump(("shard", layout, cfg, idx, t, 0.5, first, np.geterr()), send)
                send.flush()
                reply = pickle.load(receive)
                if bad:
                    assert reply[0] == "error" and isinstance(reply[1], ValueError) and reply[2] == []
                    continue
                loss, grads = model.loss_and_grads(params, idx, targets, cfg)
                assert reply == ("ok", loss, [])
                expect = {k: g * 0.5 for k, g in grads.items()} if first else {k: g * 0.5 + g * 0.5 for k, g in grads.items()}
                assert all(parent.tensors(layout, 1)[k].tobytes() == expect[k].tobytes() for k in expect)
        thread.join(timeout=10)  # the pipe closed: serve returned
    assert not thread.is_alive()
    os.close(parent.fd)
    os.close(child.fd)


def test_serve_stops_quietly_when_nobody_reads_its_answer() -> None:
    cfg, _, idx, targets, layout, shared = served()
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    os.close(from_r)  # the parent died while the worker computed
    with os.fdopen(to_w, "wb") as send:
        pickle.dump(("shard", layout, cfg, idx, targets, 1.0, True, np.geterr()), send)
    reader, writer = os.fdopen(to_r, "rb"), os.fdopen(from_w, "wb")
    shard_worker.serve(reader, writer, shared)  # returns, no BrokenPipeError
    reader.close()
    with pytest.raises(BrokenPipeError):  # the answer is still buffered: main() closes it quietly
        writer.close()
    os.close(shared.fd)


def test_a_warning_in_a_workers_shard_reaches_the_caller_once_per_place() -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 4)
    idx[3] = 1
    params["tok_emb.W"][1] = np.float32(3e38)  # overflows in the second shard only: the worker's
    with np.errstate(over="warn", invalid="ignore"), pytest.warns(RuntimeWarning, match="overflow"):
        parallel.loss_and_grads(params, idx, targets, cfg, shards=2)
    idx[:] = 1  # now in both shards
    counts = []
    for shards in (1, 2):
        with np.errstate(over="warn", invalid="ignore"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            parallel.loss_and_grads(params, idx, targets, cfg, shards=shards)
        counts.append(sorted((str(w.message), w.filename, w.lineno) for w in caught))
    assert counts[0] == counts[1] and counts[0]  # the same warnings, each once, as in one process


def test_an_exception_that_cannot_be_pickled_crosses_as_its_text() -> None:
    class Local(Exception):
        pass

    assert isinstance(shard_worker._picklable(ValueError("x")), ValueError)
    crossed = shard_worker._picklable(Local("no pickle for a local class"))
    assert type(crossed) is RuntimeError and str(crossed) == "Local: no pickle for a local class"


def test_two_threads_training_in_shards_take_turns_with_the_workers() -> None:
    cfg = tiny()
    batches = [batch_of(cfg, rows) for rows in (4, 5, 6, 7)]
    expected = [in_one_process(p, i, t, cfg, 2) for p, i, t in batches]
    results: dict[int, tuple[float, dict[str, Array]]] = {}

    def run(n: int) -> None:
        for _ in range(5):
            results[n] = parallel.loss_and_grads(*batches[n], cfg, shards=2)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for n, (loss, grads) in results.items():
        assert loss == expected[n][0] and all(grads[k].tobytes() == expected[n][1][k].tobytes() for k in grads)
    assert len(results) == 4


def test_a_forked_child_starts_its_own_workers_and_leaves_the_parents_alone(one_worker: shard_worker.Worker) -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 4)
    expected = in_one_process(params, idx, targets, cfg, 2)[0]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        warnings.simplefilter("error")  # not "a worker had ended": the parent's were never the child's
        ok = parallel.loss_and_grads(params, idx, targets, cfg, shards=2)[0] == expected
        ok = ok and shard_worker.workers(1)[0] is not one_worker
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert shard_worker.workers(1)[0] is one_worker and one_worker.process.poll() is None
    assert parallel.loss_and_grads(params, idx, targets, cfg, shards=2)[0] == expected


def test_the_worker_imports_this_bevialm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert shard_worker._python_path() == os.pathsep.join([str(ROOT), "/elsewhere"])  # a source checkout: first
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"purelib": str(ROOT), "platlib": str(ROOT)})
    assert shard_worker._python_path() == "/elsewhere"  # installed: found anyway, never put before the standard library


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_the_trainer_reports_a_killed_worker_in_one_line(tmp_path: Path) -> None:
    flags = "--ctx 32 --dim 16 --layers 1 --mlp_hidden 32 --batch 16 --steps 100000 --eval_every 100000 --sample_len 0"
    trainer = subprocess.Popen(
        [sys.executable, "-m", "bevialm", "train", "--data", str(ROOT / "data.txt"), "--out", str(tmp_path / "run"), *flags.split()],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (workers := _children(trainer.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        (worker,) = workers
        os.kill(worker, signal.SIGSTOP)  # it cannot answer: within a step the trainer waits for it
        time.sleep(0.5)
        os.kill(worker, signal.SIGKILL)  # dies with a step in flight (between steps: replaced, see above)
        _, err = trainer.communicate(timeout=60)
    finally:
        trainer.kill()
    assert trainer.returncode != 0
    assert err.strip().splitlines()[-1] == (
        "error: parallel: a shard's worker process ended unexpectedly (exit code -9); try --shards 1"
    ), err
    assert "Traceback" not in err


def test_a_worker_that_cannot_start_is_the_callers_error_and_leaks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny()
    params, idx, targets = batch_of(cfg, 4)
    parallel.loss_and_grads(params, idx, targets, cfg, shards=2)  # one worker running: a second is asked for below

    def no_more_processes(*args: Any, **kwargs: Any) -> Any:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    before = len(os.listdir("/proc/self/fd"))
    with monkeypatch.context() as patch, pytest.raises(BlockingIOError):
        patch.setattr(subprocess, "Popen", no_more_processes)
        parallel.loss_and_grads(params, idx, targets, cfg, shards=3)
    assert len(os.listdir("/proc/self/fd")) == before
    assert parallel.loss_and_grads(params, idx, targets, cfg, shards=3)[0] == in_one_process(params, idx, targets, cfg, 3)[0]
