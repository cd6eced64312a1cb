"""Training on several processes (``mpiexec -n N bevialm train ...``), bit-identical to one process.

Outside ``mpiexec`` nothing here imports ``mpi4py`` (the optional extra ``bevialm[mpi]``):
:func:`join` reads the variables every MPI launcher sets and returns None for one process.

**The same step, split.** Every rank holds the whole text and draws the whole batch from the
same training stream (stream 1, ``bevialm.train``), so batches, dropout masks and initial
parameters come from the global streams, never from the rank. The batch is cut into ``P``
shards exactly as :mod:`bevialm.parallel` cuts it in one process, ``P = max(--shards, N)``;
rank ``r`` computes shards ``r*P//N .. (r+1)*P//N - 1`` (in worker processes when it has several), each
summed over the ``--accum`` micro-batches with its token weight. The ranks then exchange those
per-shard sums (``Allgatherv``: every rank receives every shard's) and each adds them in shard
order, the very additions :func:`bevialm.parallel.combine` makes in one process. So ``N`` ranks
give, to the bit, what one process gives with ``--shards P``; an ``Allreduce`` would not promise
that from three ranks on (its order of additions is the library's choice).

**One writer.** Every rank runs the whole program (evaluations and samples included, on
identical parameters, so a diverged run stops on every rank at once), but only rank 0 prints
and writes files; the others' output goes to /dev/null. At the start every rank hashes its flags
and its data file and rank 0 refuses a mismatch in one line; rank 0 then chooses the run folder,
builds or restores the state and sends it to the others.

**Stopping.** SIGINT and SIGTERM (``mpiexec`` passes them to every rank) only raise a flag;
the flags travel with the step's exchange, and when any is up every rank stops after the same
step, and rank 0 saves. An error on one rank alone (a full disk on rank 0) prints its line and
aborts every rank (``MPI_Abort``), as mpi4py's ``python -m mpi4py`` runner does for an uncaught
exception, so no rank waits forever for another. A rank killed outright (``kill -9``) is seen by
``mpiexec``, which stops the others at once; checkpoints are written to a temporary file and
renamed, so none is ever torn.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import IO, Any

import numpy as np

from bevialm import model, parallel
from bevialm.runtime import Terminated, find_openblas
from bevialm.types import Grads, IntArray, Params

LAYER = "distributed"

INSTALL = "pip install 'bevialm[mpi]'"

# Launchers' variables: MPICH/Hydra and Intel MPI (PMI_*), Open MPI, PMIx, MVAPICH.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


class PeerFailed(ValueError):
    """Another rank (rank 0) could not start the run and said why; this rank has nothing to add."""


def _launched(names: tuple[str, ...]) -> int | None:
    for name in names:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def launched_size() -> int:
    """How many processes the MPI launcher started (1 outside one)."""
    return _launched(_SIZE_VARS) or 1


@dataclass
class Group:
    """This process's place among the ranks, and the exchanges the trainer needs."""

    comm: Any  # mpi4py.MPI.Comm (typed Any: mpi4py is optional)
    rank: int
    size: int
    stderr: IO[str]  # the real stderr, for the one line of an error on this rank alone
    stop: list[bool] = field(default_factory=lambda: [False])  # this rank was signalled
    stop_signal: int = signal.SIGTERM
    layout: _Layout | None = None

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def require_same_run(self, fingerprint: dict[str, Any]) -> None:
        """Refuse, on every rank, a run whose ranks were given other flags or data than rank 0."""
        mine = json.dumps(fingerprint, sort_keys=True, default=str)
        digest = hashlib.sha256(mine.encode()).hexdigest()
        digests = self.comm.allgather(digest)
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if not odd:
            return
        first = self.comm.bcast(fingerprint if self.rank == odd[0] else None, root=odd[0])
        theirs = self.comm.bcast(fingerprint, root=0)
        diffs = [f"{k} {first.get(k)!r} on rank {odd[0]}, {v!r} on rank 0" for k, v in theirs.items() if first.get(k) != v]
        raise ValueError(
            f"rank{'s' if len(odd) > 1 else ''} {', '.join(map(str, odd))} started with other flags or data than "
            f"rank 0 ({'; '.join(diffs)}): every rank must run the same command on the same data"
        )

    def share_from_writer(self, build: Callable[[], Any]) -> Any:
        """Rank 0 runs ``build()`` and every rank gets its result; if it fails, rank 0 raises its
        error and the others :class:`PeerFailed`."""
        if self.writer:
            try:
                result = build()
            except BaseException:
                self.comm.bcast((False, None), root=0)
                raise
            self.comm.bcast((True, result), root=0)
            return result
        ok, result = self.comm.bcast(None, root=0)
        if not ok:
            raise PeerFailed("rank 0 could not start the run")
        return result

    def step_loss_and_grads(
        self,
        params: Params,
        draw: Callable[[], tuple[IntArray, IntArray]],
        cfg: model.ModelConfig,
        *,
        batch: int,
        accum: int,
        shards: int,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, Grads]:
        """:func:`bevialm.parallel.step_loss_and_grads` over the ranks: this rank's shards, then
        the exchange; raises ``KeyboardInterrupt``/``Terminated`` on every rank when any was signalled."""
        n = parallel.step_shards(batch, cfg.ctx, shards, dropout=rng is not None and cfg.dropout > 0)
        if n == 1:  # one shard: every rank computes it (the same bits), only the stop flags travel
            loss, grads = parallel.step_loss_and_grads(params, draw, cfg, batch=batch, accum=accum, shards=1, rng=rng)
            self._agree_to_go_on(self.comm.allgather(self._signal()))
            return loss, grads
        if self.layout is None:
            self.layout = _Layout.of(params)
        sums = parallel.accumulate(params, draw, cfg, accum=accum, shards=n, owned=self.owned(n), rng=rng)
        return self._exchange(sums, n)

    def _exchange(self, sums: parallel.ShardSums, shards: int) -> tuple[float, Grads]:
        """Every shard's sums to every rank (each rank's block in rank order, so the rows are in
        shard order), then :func:`bevialm.parallel.combine`'s additions over the rows."""
        told = self.comm.allgather((self._signal(), [sums.losses[s] for s in sums.owned]))
        self._agree_to_go_on([flag for flag, _ in told])
        losses = [loss for _, part in told for loss in part]
        layout = self.layout
        assert layout is not None
        width = layout.width
        send = np.empty((len(sums.owned), width), dtype=layout.dtype)
        for row, s in enumerate(sums.owned):
            shard = sums.grads[s]
            assert shard is not None
            for k, (lo, hi) in layout.spans.items():
                send[row, lo:hi] = shard[k].reshape(-1)
        received = np.empty((shards, width), dtype=layout.dtype)
        counts = [len(self._owned_by(r, shards)) * width for r in range(self.size)]
        self.comm.Allgatherv(send, (received, counts))
        total = received[0]
        for row in received[1:]:
            total += row
        grads = {k: total[lo:hi].reshape(layout.shapes[k]) for k, (lo, hi) in layout.spans.items()}
        return float(sum(losses)), grads

    def owned(self, shards: int) -> range:
        """The shards this rank computes: a contiguous block, in rank order (none when shards < size)."""
        return self._owned_by(self.rank, shards)

    def _owned_by(self, rank: int, shards: int) -> range:
        return range(shards * rank // self.size, shards * (rank + 1) // self.size)

    def _signal(self) -> int:
        return 1 if self.stop[0] else 0

    def _agree_to_go_on(self, flags: list[int]) -> None:
        if any(flags):
            raise Terminated() if self.stop_signal == signal.SIGTERM else KeyboardInterrupt()


@dataclass(frozen=True)
class _Layout:
    """Where each parameter's gradient lies in the flat rows the ranks exchange."""

    spans: dict[str, tuple[int, int]]
    shapes: dict[str, tuple[int, ...]]
    width: int
    dtype: np.dtype[Any]

    @classmethod
    def of(cls, params: Params) -> _Layout:
        spans, at = {}, 0
        for k, p in params.items():
            spans[k] = (at, at + p.size)
            at += p.size
        dtype = next(iter(params.values())).dtype
        return cls(spans, {k: p.shape for k, p in params.items()}, at, dtype)



def describe(group: Group, batch: int, ctx: int, shards: int, cfg: model.ModelConfig) -> str:
    """The header line of a run over ranks: who computes what, and what each step sends."""
    n = parallel.step_shards(batch, ctx, shards, dropout=cfg.dropout > 0)
    hosts = group.comm.allgather(f"{os.uname().nodename}:{os.getpid()}")
    where = ", ".join(f"rank {r} {h}" for r, h in enumerate(hosts))
    if n == 1:
        why = "dropout draws the whole batch's masks" if cfg.dropout > 0 else f"a batch of {batch * ctx} tokens"
        return f"mpi: {group.size} ranks ({where}); {why} makes one shard: every rank computes it (no speed-up)"
    idle = sum(1 for r in range(group.size) if not group._owned_by(r, n))
    per_rank = (n - len(group._owned_by(group.size - 1, n))) * model.count_params(cfg)
    note = f"; {idle} rank(s) have no shard (a larger --batch uses them)" if idle else ""
    return (
        f"mpi: {group.size} ranks ({where}); batch cut into {n} shards, rank r computes shards "
        f"r*{n}//{group.size} to (r+1)*{n}//{group.size} - 1, summed in shard order; "
        f"each step every rank receives about {per_rank:,} gradient values{note}"
    )


def join() -> Group | None:
    """This process's :class:`Group` under an MPI launcher with two or more processes, else None.

    Under a launcher without mpi4py: a ``ValueError`` naming the install command (printed by
    rank 0 alone). Ranks other than 0 are quietened (their stdout and stderr go to /dev/null),
    and each rank's OpenBLAS gets its share of the machine's cores.
    """
    size = launched_size()
    if size < 2:
        return None
    rank = _launched(_RANK_VARS) or 0
    try:
        from mpi4py import MPI
    except ImportError:
        if rank:
            _quieten()
        raise ValueError(
            f"this run was started by an MPI launcher ({size} processes) but mpi4py is not installed: {INSTALL}"
        ) from None
    comm = MPI.COMM_WORLD
    group = Group(comm, comm.Get_rank(), comm.Get_size(), sys.stderr)
    local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    blas = find_openblas()
    if blas is not None:  # two ranks each asking two BLAS threads for two cores would spin
        blas.set(max(1, (os.cpu_count() or 1) // local))
    if group.rank:
        _quieten()
    return group


def _quieten() -> None:
    devnull = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the process's lifetime
    sys.stdout = sys.stderr = devnull


def fingerprint(config: Any, data_path: str) -> dict[str, Any]:
    """What every rank must share: the flags and the data file's SHA-256 (or why it cannot be read)."""
    fields = asdict(config)
    try:
        digest = hashlib.sha256()
        with open(data_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        fields["data sha256"] = digest.hexdigest()
    except OSError as e:
        fields["data sha256"] = f"unreadable: {e.strerror or e}"
    return fields


@contextlib.contextmanager
def stop_signals(group: Group) -> Iterator[None]:
    """SIGINT and SIGTERM raise this rank's stop flag; :meth:`Group.step_loss_and_grads` stops every rank."""

    def flag(signum: int, frame: FrameType | None) -> None:
        if not group.stop[0]:
            group.stop[0] = True
            group.stop_signal = signum

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(s, flag)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def abort_alone(group: Group, agreed: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Let ``agreed`` exceptions (every rank raises them together) through; any other means this
    rank fails alone: print its one line and abort every rank, so none waits forever."""
    try:
        yield
    except agreed:
        raise
    except BaseException as e:
        line = " ".join(str(e).split()) or type(e).__name__
        print(f"error: rank {group.rank}: {line}; stopping every rank", file=group.stderr, flush=True)
        group.comm.Abort(1)
        raise  # pragma: no cover - Abort does not return
