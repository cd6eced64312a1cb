"""How long a training step's matrix products alone take: the floor under BeviaLLM's step.

For one of ``bench.py``'s configs, this runs every matrix product of one step — forward and
backward, with the operands laid out (and transposed) as the layers lay them out — and
nothing else, on random float32 data; the fastest of ``--repeats`` runs counts. Whatever
the element-wise work costs comes on top, so when this alone is near PyTorch's whole step,
no amount of element-wise tuning brings the ratio far below 1.

    python benchmarks/matmul_floor.py --configs bc [--shards 2]

With ``--shards 2`` the products of two half batches run at the same time, one BLAS thread
each, as the trainer's shards do. Threads suffice here, where the trainer needs processes
(bevialm/shard_worker.py): a product releases Python's lock for all of its run, and with no
element-wise calls between the products the threads seldom wait for each other.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from configs import CONFIGS, VOCAB

from bevialm.runtime import blas_threads


def products(cfg: dict[str, Any], batch: int, vocab: int) -> list[tuple[Any, Any]]:
    """(a, b) operand pairs of every product ``a @ b`` in one step of ``batch`` rows."""
    rng = np.random.default_rng(0)
    t, c, hidden, heads = cfg["ctx"], cfg["dim"], cfg["mlp"], cfg["heads"]
    n, hd = batch * t, c // heads

    def r(*shape: int) -> Any:
        return rng.standard_normal(shape, dtype=np.float32)

    def linear(d_in: int, d_out: int) -> list[tuple[Any, Any]]:
        x, w, dy = r(n, d_in), r(d_in, d_out), r(n, d_out)
        return [(x, w), (dy, w.T), (x.T, dy)]  # forward, dx, dW

    def heads_view() -> Any:  # (B, H, T, hd) as split_heads makes it: a strided view of (B, T, C)
        return r(batch, t, c).reshape(batch, t, heads, hd).transpose(0, 2, 1, 3)

    def attention() -> list[tuple[Any, Any]]:
        q, k, v, dout, a, ds = heads_view(), heads_view(), heads_view(), heads_view(), r(batch, heads, t, t), r(batch, heads, t, t)
        return [(q, k.swapaxes(-1, -2)), (a, v), (a.swapaxes(-1, -2), dout), (dout, v.swapaxes(-1, -2)), (ds, k), (ds.swapaxes(-1, -2), q)]

    block = [*linear(c, c), *linear(c, c), *linear(c, c), *linear(c, c), *attention(), *linear(c, hidden), *linear(hidden, c)]
    return block * cfg["layers"] + linear(c, vocab)


def run(pairs: list[tuple[Any, Any]]) -> None:
    for a, b in pairs:
        a @ b


def fastest(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def floor_seconds(cfg: dict[str, Any], vocab: int, shards: int, repeats: int) -> float:
    """Seconds of one step's products (fastest of ``repeats``), in ``shards`` threads as the trainer cuts them."""
    if shards == 1:
        pairs = products(cfg, cfg["batch"], vocab)
        return fastest(lambda: run(pairs), repeats)
    rows = [cfg["batch"] * (s + 1) // shards - cfg["batch"] * s // shards for s in range(shards)]
    parts = [products(cfg, n, vocab) for n in rows]
    with ThreadPoolExecutor(shards) as pool, blas_threads(1):
        return fastest(lambda: list(pool.map(run, parts)), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="abc")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    for name in args.configs:
        cfg = CONFIGS[name]
        seconds = floor_seconds(cfg, VOCAB, args.shards, args.repeats)
        print(f"({name}) {cfg['label']:<22} matrix products of one step, {args.shards} shard(s): {seconds * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
