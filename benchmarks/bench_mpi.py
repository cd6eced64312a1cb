"""`make bench-mpi`: one process with 2 shards (one in a worker process) against 2 MPI ranks of 1 thread each.

Both run the real trainer (``bevialm train``) on data.txt with configs (b) and (c) of
``benchmarks/bench.py``, in alternating rounds so both see the same machine weather; the
figure is the trainer's own ms/step (``metrics.jsonl``), median over the logged intervals after
the first. Then, under ``mpiexec -n 2``, the exchange alone (``Allgatherv`` of one shard's
gradient per rank) and the optimizer update alone are timed: the inputs of the projection in
docs/distributed.md. Results go to the terminal and to bench-mpi-results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from configs import CONFIGS

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"
STEPS, LOG_EVERY = 60, 10
LINK_BYTES_PER_S = 1.25e9  # 10 GbE
LINK_LATENCY_S = 50e-6  # a TCP message's latency on such a link (an assumption, not measured here)


def projected_ms(step_ms: float, exchange_ms: float, params: int, machines: int) -> float:
    """One step on ``machines`` machines, each one rank of 2 shards on its own batch of the config
    (global batch = machines x batch): this machine's step, plus an Allgatherv ring of M - 1 hops
    each carrying one machine's 2 shard rows (8 n bytes of float32), plus the rows' additions,
    which grow with their count (M times the measured 2-rank exchange here, an upper bound)."""
    hops = (machines - 1) * (LINK_LATENCY_S + 2 * 4 * params / LINK_BYTES_PER_S)
    return step_ms + hops * 1e3 + machines * exchange_ms


def train_ms_per_step(cfg: dict[str, Any], ranks: int) -> float:
    flags = ["--ctx", cfg["ctx"], "--dim", cfg["dim"], "--layers", cfg["layers"], "--heads", cfg["heads"]]
    flags += ["--mlp_hidden", cfg["mlp"], "--batch", cfg["batch"], "--shards", 2, "--steps", STEPS]
    flags += ["--log_every", LOG_EVERY, "--eval_every", 0, "--eval_iters", 1, "--sample_len", 0]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "bevialm", "train", "--data", str(ROOT / "data.txt"), "--out", "run", *map(str, flags)]
        if ranks > 1:
            cmd = [str(MPIEXEC), "-n", str(ranks), *cmd]
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
        lines = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    times = [r["ms_per_step"] for r in lines if r["kind"] == "train"][1:]
    return statistics.median(times)


def exchange_worker(cfg_name: str, repeats: int) -> None:
    """Under mpiexec -n 2: the step's Allgatherv (one shard's gradient per rank) and the update."""
    from mpi4py import MPI

    from bevialm import model, optim

    cfg = CONFIGS[cfg_name]
    mcfg = model.ModelConfig(65, cfg["ctx"], cfg["dim"], cfg["layers"], cfg["heads"], cfg["mlp"])
    params = model.init_params(mcfg, np.random.default_rng(0))
    n = model.count_params(mcfg)
    comm = MPI.COMM_WORLD
    send = np.ones((1, n), np.float32)
    received = np.empty((comm.size, n), np.float32)
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allgatherv(send, (received, [n] * comm.size))
        total = received[0]
        for row in received[1:]:
            total += row
        times.append(time.perf_counter() - t0)
    grads = {k: np.full_like(p, 1e-3) for k, p in params.items()}
    state, adamw, update = optim.init_state(params), optim.AdamWConfig(lr=3e-4), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        clipped, _ = optim.clip_by_global_norm(grads, 1.0)
        params, state = optim.step(params, clipped, state, adamw, 3e-4)
        update.append(time.perf_counter() - t0)
    if comm.rank == 0:
        print(json.dumps({"params": n, "exchange_ms": statistics.median(times) * 1e3, "update_ms": statistics.median(update) * 1e3}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--exchange", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per config (default 3)")
    ap.add_argument("--configs", default="bc", help="which configs of benchmarks/bench.py (default bc)")
    ap.add_argument("--json", default=str(ROOT / "bench-mpi-results.json"))
    args = ap.parse_args()
    if args.exchange:
        exchange_worker(args.exchange, 200)
        return
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        print("bench-mpi: mpi4py is not installed (pip install 'bevialm[mpi]'); nothing to measure")
        return
    results: dict[str, Any] = {"load_average_before": os.getloadavg(), "configs": {}}
    print(f"{'config':<22}{'2 shards ms':>12}{'2 ranks ms':>12}{'ratio':>7}{'exchange ms':>13}{'update ms':>11}{'MB/step':>9}")
    for name in args.configs:
        cfg = CONFIGS[name]
        shards, ranks = [], []
        for _ in range(args.rounds):
            shards.append(train_ms_per_step(cfg, 1))
            ranks.append(train_ms_per_step(cfg, 2))
        probe = subprocess.run(
            [str(MPIEXEC), "-n", "2", sys.executable, __file__, "--exchange", name], check=True, capture_output=True, text=True
        )
        ex = json.loads(probe.stdout)
        row = {
            "label": cfg["label"],
            "two_shards_ms": statistics.median(shards),
            "two_ranks_ms": statistics.median(ranks),
            "rounds": {"two_shards_ms": shards, "two_ranks_ms": ranks},
            **ex,
            "bytes_received_per_rank": ex["params"] * 4,
        }
        row["ratio"] = row["two_ranks_ms"] / row["two_shards_ms"]
        row["projection_ms"] = {m: projected_ms(row["two_shards_ms"], ex["exchange_ms"], ex["params"], m) for m in (2, 4, 8)}
        results["configs"][name] = row
        print(
            f"({name}) {cfg['label']:<18}{row['two_shards_ms']:>12.1f}{row['two_ranks_ms']:>12.1f}{row['ratio']:>7.2f}"
            f"{ex['exchange_ms']:>13.3f}{ex['update_ms']:>11.2f}{row['bytes_received_per_rank'] / 1e6:>9.2f}"
        )
    print("projection, 10 GbE, one rank x 2 shards per machine, global batch = machines x batch (ms/step, efficiency):")
    for name, row in results["configs"].items():
        cells = [f"{m} machines {t:.1f} ({row['two_shards_ms'] / t:.0%})" for m, t in row["projection_ms"].items()]
        print(f"  ({name}) " + "; ".join(cells))
    results["load_average_after"] = os.getloadavg()
    print(f"load average before {results['load_average_before']}, after {results['load_average_after']}")
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
