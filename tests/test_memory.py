"""The memory estimate (bevialm.memory): closed-form sizes that cover the peaks a real step and a
real sampling job reach (measured with tracemalloc, which sees NumPy's allocations), and what
the machine has, read from /proc, the address-space limit and cgroups."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bevialm import generate, memory, model, optim, parallel, shard_worker
from bevialm.data import Vocab

CONFIGS = [  # vocab, ctx, dim, layers, heads, hidden, batch
    (59, 64, 64, 1, 1, 512, 8),  # the quick start
    (65, 32, 32, 2, 4, 64, 6),
    (300, 16, 16, 1, 2, 16, 16),  # a large vocabulary: the logits dominate
    (59, 96, 16, 1, 4, 16, 4),  # a long context: the attention weights dominate
]


@pytest.mark.parametrize("sizes", CONFIGS)
def test_param_count_is_the_models(sizes: tuple[int, ...]) -> None:
    vocab, ctx, dim, layers, heads, hidden, _ = sizes
    cfg = model.ModelConfig(vocab, ctx, dim, layers, heads, hidden)
    assert memory.param_count(cfg) == model.count_params(cfg)
    assert memory.param_count(replace(cfg, n_layers=10**9)) > 10**9  # closed form: instant


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("sizes", CONFIGS)
def test_training_estimate_covers_a_measured_step(sizes: tuple[int, ...], activation: str) -> None:
    vocab, ctx, dim, layers, heads, hidden, batch = sizes
    cfg = model.ModelConfig(vocab, ctx, dim, layers, heads, hidden, activation, dropout=0.1)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, vocab, (batch, ctx)), rng.integers(0, vocab, (batch, ctx))
    tracemalloc.start()
    try:
        params = model.init_params(cfg, rng)
        opt = optim.init_state(params)
        loss, grads = model.loss_and_grads(params, x, y, cfg, rng=rng)
        grads, _ = optim.clip_by_global_norm(grads, 1e-6)  # clipping copies the gradients
        new = optim.step(params, grads, opt, optim.AdamWConfig(), 1e-3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del new
    estimate, breakdown = memory.training_bytes(cfg, batch=batch, itemsize=4, data_tokens=0, sample_len=0)
    assert peak <= estimate <= 3 * peak, (peak, estimate, breakdown)


def test_sampling_estimate_covers_a_measured_job() -> None:
    text = "the quick brown fox jumps over the lazy dog\n"
    vocab = Vocab.from_text(text)
    cfg = model.ModelConfig(vocab.size, 32, 32, 2, 2, 64)
    params = model.init_params(cfg, np.random.default_rng(0))
    tracemalloc.start()
    try:
        texts = generate.sample_text(params, cfg, vocab, "the", 100, num_samples=64, rng=np.random.default_rng(1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(texts) == 64
    estimate = memory.sampling_bytes(cfg, 64, 3 + 100, 4)
    assert peak <= estimate <= 4 * peak, (peak, estimate)
    assert memory.sampling_bytes(model.ModelConfig(8, 8, 8, 1, 1, 8), 1, 0, 4) == 0


def _fake_machine(tmp_path: Path, meminfo_kb: int | None, vm_kb: int, cgroup: tuple[str, str] | None, v1: bool = False) -> tuple[str, str]:
    proc, group = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    group.mkdir()
    if meminfo_kb is not None:
        (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {meminfo_kb} kB\n")
    (proc / "self" / "status").write_text(f"Name: python\nVmSize:\t{vm_kb} kB\n")
    if cgroup is not None:
        folder = group / "memory" if v1 else group
        folder.mkdir(exist_ok=True)
        names = ("memory.limit_in_bytes", "memory.usage_in_bytes") if v1 else ("memory.max", "memory.current")
        (folder / names[0]).write_text(cgroup[0] + "\n")
        (folder / names[1]).write_text(cgroup[1] + "\n")
    return str(proc), str(group)


def test_what_the_machine_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_address_space_limit", lambda: None)
    proc, group = _fake_machine(tmp_path / "a", 8 << 20, 100, None)
    assert memory.available(proc, group) == memory.Available(8 << 30, "MemAvailable")
    proc, group = _fake_machine(tmp_path / "b", 8 << 20, 100, (str(2 << 30), str(1 << 30)))
    assert memory.available(proc, group) == memory.Available(1 << 30, "the container's memory limit")
    proc, group = _fake_machine(tmp_path / "c", 8 << 20, 100, ("max", "123"))  # no cgroup limit
    assert memory.available(proc, group) == memory.Available(8 << 30, "MemAvailable")
    proc, group = _fake_machine(tmp_path / "d", 8 << 20, 100, (str(3 << 30), str(1 << 30)), v1=True)
    assert memory.available(proc, group) == memory.Available(2 << 30, "the container's memory limit")
    proc, group = _fake_machine(tmp_path / "e", None, 100, (str(2**63 - 4096), "5"), v1=True)  # v1's "unlimited"
    assert memory.available(proc, group) is None
    monkeypatch.setattr(memory, "_address_space_limit", lambda: 4 << 30)
    proc, group = _fake_machine(tmp_path / "f", 8 << 20, 1 << 20, None)  # 1 GiB mapped of a 4 GiB limit
    assert memory.available(proc, group) == memory.Available(3 << 30, "the address-space limit, ulimit -v")


def test_require_refuses_in_one_line_with_both_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available", lambda: memory.Available(3 << 30, "MemAvailable"))
    memory.require(2 << 30, "this run", "all of it", "use less")
    with pytest.raises(memory.MemoryLimitError) as caught:
        memory.require(5 << 30, "this run", "parameters 1 GiB", "use less")
    assert str(caught.value) == (
        "this run needs about 5.0 GiB of memory (parameters 1 GiB); this machine has 3.0 GiB available (MemAvailable); use less"
    )
    monkeypatch.setattr(memory, "available", lambda: None)
    memory.require(10**30, "this run", "", "")  # nothing known: nothing refused
    assert memory.gib(3 << 20) == "3 MiB" and memory.gib(-5) == "0 MiB"


def test_a_shard_workers_memory_is_in_the_estimate() -> None:
    cfg = model.ModelConfig(65, 64, 128, 2, 4, 512)
    batch = 16
    rng = np.random.default_rng(0)
    params = model.init_params(cfg, rng)
    x = rng.integers(0, 65, size=(batch, 64))
    for old in list(shard_worker._workers):
        shard_worker.discard(old)  # a fresh worker: its peak is this step's
    parallel.loss_and_grads(params, x, x, cfg, shards=2)
    (worker,) = shard_worker.workers(1)
    with open(f"/proc/{worker.process.pid}/status", encoding="ascii") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    plain, _ = memory.training_bytes(cfg, batch=batch, itemsize=4, data_tokens=0, sample_len=0)
    with_worker, breakdown = memory.training_bytes(cfg, batch=batch, itemsize=4, data_tokens=0, sample_len=0, workers=1)
    its_share = with_worker - plain + memory.step_activation_bytes(cfg, batch // 2, 4)  # and its half of the activations
    assert peak <= its_share <= 3 * peak, (peak, its_share)
    assert "1 shard worker(s)" in breakdown


@pytest.mark.parametrize(("ranks", "workers"), [(None, 3), (2, 1), (4, 0)])
def test_the_estimate_counts_the_workers_this_process_starts(
    monkeypatch: pytest.MonkeyPatch, ranks: int | None, workers: int
) -> None:
    # Four shards: one process starts three workers; under mpiexec each rank computes its own
    # block of the shards and starts workers for that block only.
    from types import SimpleNamespace
    from typing import Any, cast

    from bevialm import train
    from bevialm.train_config import TrainConfig

    told: list[str] = []
    monkeypatch.setattr(memory, "require", lambda need, what, breakdown, hint: told.append(breakdown))
    cfg = TrainConfig(data="unused", batch=16, shards=4)
    m = model.ModelConfig(vocab_size=65, ctx=64, dim=32, n_layers=1, n_heads=1, mlp_hidden=64)
    data = cast(Any, SimpleNamespace(train=np.zeros(100), val=np.zeros(10)))
    group = None if ranks is None else cast(Any, SimpleNamespace(owned=lambda n: range(n // ranks)))
    train._check_memory(cfg, m, data, group)
    (breakdown,) = told
    if workers:
        assert f", {workers} shard worker(s)" in breakdown, breakdown
    else:
        assert "shard worker" not in breakdown, breakdown
