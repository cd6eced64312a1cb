"""Data parallelism inside one training step: the batch is cut into shards whose losses and
gradients are computed at the same time, one in this process and the others in worker
processes (:mod:`bevialm.shard_worker`), then combined into the whole batch's.

**Why it is exact to split.** The model is pure functions of its arguments, so two shards of the
batch can run the whole forward and backward pass side by side, each on its own core, with
nothing shared but the read-only parameters. (Processes, not threads: two threads of one
process spend 10-30% of a step waiting for each other on Python's global lock;
:mod:`bevialm.shard_worker` gives the measurement.)

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
machine's core count or on which process finishes first, so a resumed run repeats the
uninterrupted one to the bit.

**Accumulation and ranks.** :func:`accumulate` sums each shard over a step's ``--accum``
micro-batches, each weighted by its share of the step's tokens, ``b_s / (accum * batch)``, and
:func:`combine` then adds the shards' sums in shard order. A process may compute only some of
the shards (``owned``): under ``mpiexec`` each rank computes its block and
:mod:`bevialm.distributed` gathers the others' sums before the same :func:`combine`, so the bits
depend on the shard count alone, never on how many processes or ranks shared the work. With one
micro-batch and every shard in this process these are exactly the additions of the formula above.

**Small batches are not split**: below :data:`MIN_SHARD_TOKENS` tokens per shard the
Python work of a second pass costs more than the second core saves (:func:`shard_count`).

**Dropout.** With dropout on, the step runs as one shard: the model draws each layer's
mask for the whole batch from the one training generator, in batch order, and a shard
cannot draw only its own rows of it. So the masks (and the training trajectory) are exactly
those of an unsharded run, whatever ``shards`` says; only the speed-up is lost.

**BLAS threads.** While shards run, every process computes on one OpenBLAS thread
(:func:`bevialm.runtime.blas_threads` here, ``OPENBLAS_NUM_THREADS=1`` in the workers): two
shards each asking for two BLAS threads would put four busy threads on two cores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from bevialm import model, shard_worker
from bevialm.flat_params import FlatTensors, Layout
from bevialm.runtime import blas_threads
from bevialm.types import Grads, IntArray, Params

LAYER = "parallel"

DEFAULT_SHARDS = 2
"""The trainer's default: two shards (a fixed number, not the machine's core count, so a
run's numbers do not depend on where it runs)."""

MIN_SHARD_TOKENS = 256
"""The fewest tokens (rows times context) a shard may have; smaller batches use fewer shards.
Measured with worker processes (docs/benchmarks.md): the quick start's 8 x 64 batch is 22%
faster as two shards of 256 tokens; two of 128 tokens of that model were slower than one shard."""


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


class ShardSums:
    """Each shard's token-weighted sums over a step's micro-batches (``--accum``), before the
    shards are combined: ``losses[s]`` and ``grads[s]`` for the shards this process owns
    (``owned``), None for the others (another MPI rank's, :mod:`bevialm.distributed`).

    With a ``layout`` (the parameters', :mod:`bevialm.flat_params`) each shard's gradient sums
    live in that layout's buffers, so :func:`combine` and the optimizer run over whole buffers."""

    def __init__(self, shards: int, owned: range, layout: Layout | None = None) -> None:
        self.owned = owned
        self.layout = layout
        self.losses: list[float | None] = [None] * shards
        self.grads: list[Grads | None] = [None] * shards

    def add(self, s: int, weight: float, loss: float, grads: Grads) -> None:
        """Add ``weight`` times one micro-batch's shard ``s``, computed in this process."""
        total = self.grads[s]
        if total is None:
            self.losses[s] = weight * loss
            self.grads[s] = self._first(weight, grads)
            return
        self.losses[s] = (self.losses[s] or 0.0) + weight * loss
        for k, t in total.items():
            t += grads[k] * weight

    def add_remote(self, s: int, weight: float, loss: float, grads: Grads) -> None:
        """Shard ``s`` computed by a worker process, which keeps its own gradient sums (``grads``,
        views of the memory it shares with this process): only the loss is added here."""
        self.losses[s] = weight * loss if self.grads[s] is None else (self.losses[s] or 0.0) + weight * loss
        self.grads[s] = grads

    def _first(self, weight: float, grads: Grads) -> Grads:
        """``weight`` times a shard's first gradients, in the layout's buffers when there is one."""
        layout = self.layout
        if layout is None or layout.names != tuple(grads):
            return {k: g * weight for k, g in grads.items()}  # float32 stays float32 (NEP 50)
        total = FlatTensors(layout, {g: np.empty(n, layout.dtype) for g, n in layout.sizes.items()})
        for k, t in total.items():
            np.multiply(grads[k], weight, out=t)  # the bits of grads[k] * weight
        return total


def combine(losses: Sequence[float], grads: Sequence[Grads]) -> tuple[float, Grads]:
    """The step's loss and gradient: the shards' sums added in shard order (fixed, so the
    bits depend only on the shard count, never on which process or rank computed what)."""
    loss = sum(losses)
    total = grads[0]  # the sums are this step's own temporaries: add into the first in place
    for shard in grads[1:]:
        if isinstance(total, FlatTensors) and isinstance(shard, FlatTensors) and shard.layout == total.layout:
            for g, t in total.parts.items():  # buffer by buffer: the same additions, fewer calls
                t += shard.parts[g]
            continue
        for k, t in total.items():
            t += shard[k]
    return float(loss), total


def step_shards(batch: int, ctx: int, shards: int, *, dropout: bool) -> int:
    """How many shards a step's micro-batches are cut into: :func:`shard_count`, and one with dropout."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"{LAYER}: shards must be a positive integer, got {shards!r}")
    return 1 if dropout else shard_count(batch, ctx, shards)


def accumulate(
    params: Params,
    draw: Callable[[], tuple[IntArray, IntArray]],
    cfg: model.ModelConfig,
    *,
    accum: int = 1,
    shards: int,
    owned: range | None = None,
    rng: np.random.Generator | None = None,
) -> ShardSums:
    """The ``owned`` shards' sums over ``accum`` micro-batches, each ``draw()``n in turn (its
    dropout masks, with ``rng``, drawn right after it). Shard ``s`` of micro-batch ``k`` weighs
    its tokens' share of the step's, ``b_s / (accum * batch)``; the first owned shard runs in this
    process and the others in worker processes (:mod:`bevialm.shard_worker`), at the same time.
    ``shards`` is :func:`step_shards`'s count for the micro-batch size."""
    layout = params.layout if isinstance(params, FlatTensors) else None
    sums = ShardSums(shards, range(shards) if owned is None else owned, layout)
    mine = list(sums.owned)
    if len(mine) <= 1:
        for _ in range(accum):
            idx, targets = draw()
            rows = shard_rows(idx.shape[0], shards)
            for s in mine:
                loss, grads = model.loss_and_grads(params, idx[rows[s]], targets[rows[s]], cfg, rng=rng)
                sums.add(s, (rows[s].stop - rows[s].start) / (accum * idx.shape[0]), loss, grads)
        return sums
    if rng is not None and cfg.dropout > 0:
        raise ValueError(f"{LAYER}: with dropout a step runs as one shard (see step_shards), got {len(mine)}")
    with shard_worker.in_use:  # the workers to this step alone (see shard_worker.in_use)
        helpers = shard_worker.workers(len(mine) - 1)
        for k in range(accum):
            idx, targets = draw()
            rows = shard_rows(idx.shape[0], shards)
            weights = [(r.stop - r.start) / (accum * idx.shape[0]) for r in rows]
            _run_shards(sums, helpers, mine, weights, params, idx, targets, rows, cfg, first=k == 0)
    return sums


def _run_shards(
    sums: ShardSums,
    helpers: list[shard_worker.Worker],
    mine: list[int],
    weights: list[float],
    params: Params,
    idx: IntArray,
    targets: IntArray,
    rows: list[slice],
    cfg: model.ModelConfig,
    *,
    first: bool,
) -> None:
    """One micro-batch's owned shards: ``mine[1:]`` handed to the workers, ``mine[0]`` computed
    here meanwhile (on one BLAS thread, so the cores are not oversubscribed), then the workers'
    results collected. A worker still busy (or dead) when this is left by an error is discarded."""
    errors = np.geterr()
    try:
        for worker, s in zip(helpers, mine[1:], strict=True):
            worker.submit(params, idx[rows[s]], targets[rows[s]], cfg, weights[s], first, errors)
        with blas_threads(1):
            loss, grads = model.loss_and_grads(params, idx[rows[mine[0]]], targets[rows[mine[0]]], cfg)
        sums.add(mine[0], weights[mine[0]], loss, grads)
        for worker, s in zip(helpers, mine[1:], strict=True):
            sums.add_remote(s, weights[s], *worker.result())
    finally:
        for worker in helpers:
            if worker.busy or worker.process.poll() is not None:
                shard_worker.discard(worker)


def loss_and_grads(
    params: Params,
    idx: IntArray,
    targets: IntArray,
    cfg: model.ModelConfig,
    *,
    shards: int = DEFAULT_SHARDS,
    rng: np.random.Generator | None = None,
) -> tuple[float, Grads]:
    """:func:`bevialm.model.loss_and_grads` of the whole batch, computed in shards at the same time.

    ``shards`` is the most to use (:func:`shard_count` may use fewer); with ``rng`` (dropout)
    the batch is one shard, see the module docstring.
    """
    n = step_shards(idx.shape[0], idx.shape[-1], shards, dropout=rng is not None and cfg.dropout > 0)
    if n == 1:
        return model.loss_and_grads(params, idx, targets, cfg, rng=rng)
    return combine_all(accumulate(params, lambda: (idx, targets), cfg, shards=n, rng=rng))


def combine_all(sums: ShardSums) -> tuple[float, Grads]:
    """:func:`combine` of every shard's sums (all owned by this process: computed here or by its workers)."""
    losses, grads = sums.losses, sums.grads
    return combine([x for x in losses if x is not None], [g for g in grads if g is not None])


def step_loss_and_grads(
    params: Params,
    draw: Callable[[], tuple[IntArray, IntArray]],
    cfg: model.ModelConfig,
    *,
    batch: int,
    accum: int,
    shards: int,
    rng: np.random.Generator | None = None,
) -> tuple[float, Grads]:
    """One optimizer step's loss and gradient in this process: ``accum`` micro-batches of
    ``batch`` rows from ``draw``, each cut into shards (``accum`` 1: :func:`loss_and_grads`)."""
    if accum == 1:
        idx, targets = draw()
        return loss_and_grads(params, idx, targets, cfg, shards=shards, rng=rng)
    n = step_shards(batch, cfg.ctx, shards, dropout=rng is not None and cfg.dropout > 0)
    return combine_all(accumulate(params, draw, cfg, accum=accum, shards=n, rng=rng))
