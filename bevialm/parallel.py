"""Data parallelism inside one training step: the batch is cut into shards whose losses and
gradients are computed at the same time on threads, then combined into the whole batch's.

**Why threads.** Between its matrix products a step is element-wise NumPy work (layer norms,
activations, softmax, residual additions), and one ufunc call runs on one core. NumPy releases
Python's global lock inside ufuncs and BLAS calls, and the model is pure functions of their
arguments, so two shards of the batch can run the whole forward and backward pass side by side,
each on its own core, with nothing shared but the read-only parameters.

**The combination is exact.** The loss is the mean over the batch's ``B * T`` next-token
predictions. A shard of ``b_s`` rows returns the mean over its own ``b_s * T``; so, with every
row the same length ``T``::

    loss = sum_s (b_s / B) loss_s            grads = sum_s (b_s / B) grads_s

which is the whole batch's loss and gradient up to rounding (``tests/test_parallel.py``
checks it in float64, with shards of unequal size). Plain averaging would be wrong whenever
the shards differ in size.

**Determinism.** The rows are cut into ``shards`` contiguous runs, in order, whose sizes
differ by at most one, and the shards' results are summed in that order. The result depends
on the ``shards`` setting (through rounding: float addition is not associative), never on the
machine's core count or on which thread finishes first, so a resumed run repeats the
uninterrupted one to the bit.

**Small batches are not split**: below :data:`MIN_SHARD_TOKENS` tokens per shard the
Python work of a second pass costs more than the second core saves (:func:`shard_count`).

**Dropout.** With dropout on, the step runs as one shard: the model draws each layer's
mask for the whole batch from the one training generator, in batch order, and a shard
cannot draw only its own rows of it. So the masks (and the training trajectory) are exactly
those of an unsharded run, whatever ``shards`` says; only the speed-up is lost.

**BLAS threads.** While shards run, OpenBLAS is limited to one thread
(:func:`bevialm.runtime.blas_threads`), so each shard's products run on the shard's own
thread: two shards each asking for two BLAS threads would put four busy threads on two cores.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

from bevialm import model
from bevialm.runtime import blas_threads
from bevialm.types import Grads, IntArray, Params

LAYER = "parallel"

DEFAULT_SHARDS = 2
"""The trainer's default: two shards (a fixed number, not the machine's core count, so a
run's numbers do not depend on where it runs)."""

MIN_SHARD_TOKENS = 384
"""The fewest tokens (rows times context) a shard may have; smaller batches use fewer shards."""


def shard_count(batch: int, ctx: int, shards: int) -> int:
    """How many shards a ``(batch, ctx)`` batch is cut into when ``shards`` are asked for:
    at most one per row and at least :data:`MIN_SHARD_TOKENS` tokens each, never fewer than one."""
    return max(1, min(shards, batch, batch * ctx // MIN_SHARD_TOKENS))


def shard_rows(batch: int, shards: int) -> list[slice]:
    """``shards`` contiguous row ranges covering ``range(batch)`` in order, sizes differing by at most one."""
    if not 1 <= shards <= batch:
        raise ValueError(f"{LAYER}: need 1 <= shards <= batch, got {shards} shards of a batch of {batch}")
    bounds = [batch * s // shards for s in range(shards + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False)]


@lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    """One pool per size for the whole process: threads are started once, not every step."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bevialm-shard")


def _shard_loss_and_grads(
    errors: Any, params: Params, idx: IntArray, targets: IntArray, cfg: model.ModelConfig
) -> tuple[float, Grads]:
    """One shard on a worker thread, under the caller's floating-point error settings: NumPy
    keeps them per thread, so a caller's ``np.errstate`` would not otherwise reach the shards."""
    with np.errstate(**errors):
        return model.loss_and_grads(params, idx, targets, cfg)


def loss_and_grads(
    params: Params,
    idx: IntArray,
    targets: IntArray,
    cfg: model.ModelConfig,
    *,
    shards: int = DEFAULT_SHARDS,
    rng: np.random.Generator | None = None,
) -> tuple[float, Grads]:
    """:func:`bevialm.model.loss_and_grads` of the whole batch, computed in shards on threads.

    ``shards`` is the most to use (:func:`shard_count` may use fewer); with ``rng`` (dropout)
    the batch is one shard, see the module docstring.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"{LAYER}: shards must be a positive integer, got {shards!r}")
    batch, ctx = idx.shape[0], idx.shape[-1]
    n = 1 if rng is not None and cfg.dropout > 0 else shard_count(batch, ctx, shards)
    if n == 1:
        return model.loss_and_grads(params, idx, targets, cfg, rng=rng)
    rows = shard_rows(batch, n)
    with blas_threads(1):
        errors = np.geterr()
        futures: list[Future[tuple[float, Grads]]] = [
            _pool(n - 1).submit(_shard_loss_and_grads, errors, params, idx[r], targets[r], cfg) for r in rows[1:]
        ]
        results = [model.loss_and_grads(params, idx[rows[0]], targets[rows[0]], cfg)]  # this thread: shard 0
        results += [f.result() for f in futures]
    weights = [(r.stop - r.start) / batch for r in rows]
    loss = sum(w * shard_loss for w, (shard_loss, _) in zip(weights, results, strict=True))
    grads = {k: g * weights[0] for k, g in results[0][1].items()}  # float32 stays float32 (NEP 50)
    for w, (_, shard_grads) in zip(weights[1:], results[1:], strict=True):
        for k, total in grads.items():
            total += shard_grads[k] * w
    return float(loss), grads
