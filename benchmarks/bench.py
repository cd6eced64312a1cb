"""`make bench`: BeviaLLM's training step raced against PyTorch eager in the same run.

Each measurement runs in a fresh worker process (this file with ``--worker``):
warm-up steps first, then timed steps; the parent alternates NumPy and PyTorch
workers round by round so both see the same machine weather, and reports the
median and spread over rounds. Results go to the terminal and to JSON.

FLOPs per trained token (forward + backward), the PaLM/Kaplan estimate:
``6 N + 12 L T C`` with N the parameters of the matrix products (every ``.W`` but
the embedding tables), L layers, T context, C width; the second term is the
attention scores and the weighted sum (forward 4 L T C, backward twice that).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from configs import CONFIGS, VOCAB
from matmul_floor import floor_seconds

from bevialm.parallel import DEFAULT_SHARDS, shard_count
from bevialm.runtime import tune_malloc

ROOT = Path(__file__).resolve().parent.parent

LR, WD, BETA2, CLIP = 3e-4, 0.1, 0.95, 1.0


def flops_per_step(cfg: dict[str, Any]) -> float:
    from bevialm.model import ModelConfig, param_shapes

    mcfg = ModelConfig(VOCAB, cfg["ctx"], cfg["dim"], cfg["layers"], cfg["heads"], cfg["mlp"], cfg.get("activation", "relu"))
    n = sum(int(np.prod(s)) for k, s in param_shapes(mcfg).items() if k.endswith(".W") and not k.startswith(("tok_emb", "pos_emb")))
    tokens = cfg["batch"] * cfg["ctx"]
    return float(tokens * (6 * n + 12 * cfg["layers"] * cfg["ctx"] * cfg["dim"]))


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The machine's large float32 matmul rate (best of ``repeats``): the ceiling for our step."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- workers ---------------------------------------------------------------------------------


def time_steps(step: Any, cfg: dict[str, Any], steps: int, warmup: int) -> list[float]:
    """Seconds per call of ``step(x, y)`` on random batches, after ``warmup`` untimed calls."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, VOCAB, size=100_000)
    times = []
    for i in range(warmup + steps):
        starts = rng.integers(0, data.size - cfg["ctx"] - 1, size=cfg["batch"])
        idx = starts[:, None] + np.arange(cfg["ctx"])
        x, y = data[idx], data[idx + 1]
        t0 = time.perf_counter()
        step(x, y)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def numpy_worker(cfg: dict[str, Any], steps: int, warmup: int, shards: int) -> list[float]:
    from bevialm import optim, parallel
    from bevialm.model import ModelConfig, init_params

    mcfg = ModelConfig(VOCAB, cfg["ctx"], cfg["dim"], cfg["layers"], cfg["heads"], cfg["mlp"], cfg.get("activation", "relu"))
    params = init_params(mcfg, np.random.default_rng(0))
    state = optim.init_state(params)
    ocfg = optim.AdamWConfig(lr=LR, beta2=BETA2, weight_decay=WD)

    def step(x: Any, y: Any) -> None:  # the trainer's step: loss and grads (in shards), clip, AdamW
        nonlocal params, state
        _, grads = parallel.loss_and_grads(params, x, y, mcfg, shards=shards)
        grads, _ = optim.clip_by_global_norm(grads, CLIP)
        params, state = optim.flat_step(params, grads, state, ocfg)

    return time_steps(step, cfg, steps, warmup)


def torch_worker(cfg: dict[str, Any], steps: int, warmup: int, shards: int) -> list[float]:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_reference import make_step

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.manual_seed(0)
    _, step = make_step({**cfg, "vocab": VOCAB, "activation": cfg.get("activation", "relu")}, LR, WD, BETA2, CLIP)
    return time_steps(step, cfg, steps, warmup)


def run_worker(impl: str, config: str, steps: int, warmup: int, shards: int) -> float:
    """Median ms/step of one fresh worker process."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", impl, "--config", config, "--steps", str(steps), "--warmup", str(warmup), "--shards", str(shards)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["median_ms"])


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def sampling_speed(quick: bool) -> dict[str, float]:
    """Tokens/s of greedy sampling of one sequence (batch 1) from one token up to a full context
    of 256, with the key/value cache (bevialm.generate) and by recomputing the whole context every
    token; the two alternate over 3 repeats and the fastest of each counts (the machine is shared)."""
    from bevialm import generate
    from bevialm.model import ModelConfig, forward, init_params

    ctx = 64 if quick else 256
    cfg = ModelConfig(VOCAB, ctx=ctx, dim=128, n_layers=2, n_heads=4, mlp_hidden=512)
    params = init_params(cfg, np.random.default_rng(0))
    prompt = np.zeros((1, 1), dtype=np.int64)
    n_new = ctx - 1

    def greedy(logits: Any) -> Any:
        return np.argmax(logits, axis=1)

    def recompute() -> None:
        tokens = np.zeros((1, ctx), dtype=np.int64)
        for i in range(1, ctx):
            logits, _ = forward(params, tokens[:, :i], cfg)
            tokens[0, i] = int(np.argmax(logits[0, -1]))

    cached, full = [], []
    for _ in range(1 if quick else 3):
        cached.append(_timed(lambda: generate.generate(params, cfg, prompt, n_new, greedy)))
        full.append(_timed(recompute))
    with_cache, without = n_new / min(cached), n_new / min(full)
    return {"ctx": ctx, "kv_cache_tokens_per_s": with_cache, "recompute_tokens_per_s": without, "speedup": with_cache / without}


def suite_time() -> float:
    """Wall time of the gradient-check tests (the per-pair and model checks)."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_pairs.py", "tests/test_model.py"],
        check=True, capture_output=True, cwd=ROOT,
    )
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["numpy", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--config", default="a", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per worker (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps per worker (default 5)")
    ap.add_argument("--rounds", type=int, default=5, help="fresh-process rounds per config and implementation (default 5)")
    ap.add_argument("--shards", type=int, default=DEFAULT_SHARDS, help=f"most shards per step, as the trainer's --shards (default {DEFAULT_SHARDS})")
    ap.add_argument("--configs", default="abc", help="which configs to run, e.g. 'ac' (default abc)")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    ap.add_argument("--no-suite", action="store_true", help="skip timing the gradient-check suite")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 round, few steps, small sampling")
    ap.add_argument("--json", default="bench-results.json", help="where to write the results (default bench-results.json)")
    args = ap.parse_args(argv)

    tune_malloc()  # as `bevialm train` and `bevialm sample` do
    if args.worker:
        fn = numpy_worker if args.worker == "numpy" else torch_worker
        times = fn(CONFIGS[args.config], args.steps, args.warmup, args.shards)
        print(json.dumps({"median_ms": 1000 * statistics.median(times)}))
        return 0

    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 3, 1
    use_torch = torch_available() and not args.no_torch
    peak = matmul_gflops()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}")
    print(f"large float32 matmul: {peak:.1f} GFLOP/s (the 'of peak' columns: each step's GFLOP/s as a share of it); load average {os.getloadavg()[0]:.1f} at the start")
    if not use_torch:
        print("--no-torch: NumPy figures only" if args.no_torch else "PyTorch not installed (pip install -e '.[bench]'): NumPy figures only")
    results: dict[str, Any] = {"matmul_gflops": peak, "numpy": np.__version__, "load_average": os.getloadavg(), "configs": {}}
    header = f"{'config':<24}{'shards':>7}{'ms/step':>10}{'spread':>16}{'tokens/s':>11}{'GFLOP/s':>9}{'of peak':>8}"
    header += f"{'products':>10}"
    header += f"{'torch ms':>10}{'of peak':>8}{'ratio':>7}" if use_torch else ""
    print(header)
    for name in args.configs:
        cfg = CONFIGS[name]
        ours: list[float] = []
        theirs: list[float] = []
        for r in range(args.rounds):
            order = ["numpy", "torch"] if r % 2 == 0 else ["torch", "numpy"]
            for impl in order:
                if impl == "numpy":
                    ours.append(run_worker("numpy", name, args.steps, args.warmup, args.shards))
                elif use_torch:
                    theirs.append(run_worker("torch", name, args.steps, args.warmup, args.shards))
        med = statistics.median(ours)
        gflops = flops_per_step(cfg) / (med / 1000) / 1e9
        tokens = cfg["batch"] * cfg["ctx"] / (med / 1000)
        shards = shard_count(cfg["batch"], cfg["ctx"], args.shards)
        row: dict[str, Any] = {**cfg, "shards": shards, "ms_per_step": med, "runs_ms": ours, "tokens_per_s": tokens, "gflops": gflops, "share_of_peak": gflops / peak}
        floor = 1000 * floor_seconds(cfg, VOCAB, shards, 3 if args.quick else 20)
        row["products_ms"] = floor
        line = f"({name}) {cfg['label']:<20}{shards:>7}{med:>10.2f}{f'{min(ours):.1f}-{max(ours):.1f}':>16}{tokens:>11.0f}{gflops:>9.1f}{gflops / peak:>8.0%}{floor:>10.2f}"
        if theirs:
            tmed = statistics.median(theirs)
            torch_gflops = flops_per_step(cfg) / (tmed / 1000) / 1e9  # the same FLOPs: the same model and step
            row.update(torch_ms_per_step=tmed, torch_runs_ms=theirs, ratio=med / tmed, torch_gflops=torch_gflops, torch_share_of_peak=torch_gflops / peak)
            line += f"{tmed:>10.2f}{torch_gflops / peak:>8.0%}{med / tmed:>7.2f}"
        print(line, flush=True)
        results["configs"][name] = row
    sampling = sampling_speed(args.quick)
    if sampling:  # always true; keeps the JSON's shape obvious
        results["sampling"] = sampling
        print(
            f"sampling at ctx {sampling['ctx']}: {sampling['kv_cache_tokens_per_s']:.0f} tokens/s with the "
            f"key/value cache, {sampling['recompute_tokens_per_s']:.0f} recomputing the context: {sampling['speedup']:.1f}x"
        )
    if not args.no_suite and not args.quick:
        results["gradient_suite_s"] = suite_time()
        print(f"gradient-check tests: {results['gradient_suite_s']:.1f} s")
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
