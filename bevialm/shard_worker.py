"""A training step's extra shards, each computed in a worker process (:mod:`bevialm.parallel`).

**Why processes, not threads.** Two shards on two threads of one process share Python's global
lock. NumPy releases it inside each call, but a shard makes about a thousand calls a step, and
whenever both threads come out of NumPy at once one of them sleeps until the other enters its
next call: a futex wait and a wake-up, about 150 a step. On our 2-core VM (Intel Xeon, AVX-512)
that cost 3-4 ms of a 31 ms half-batch step in bench config (b) and 7 ms of 24 in (c), while
two *processes* running the same half-batches side by side lost nothing (docs/benchmarks.md).

**What crosses.** The worker and its parent share one memory-mapped file, cut in two: the
parameters (the parent copies them in before each shard: a few flat copies) and the worker's
gradient sums, laid out by a :class:`bevialm.flat_params.Layout`. Only small messages go
through the pipes: the batch's token indices, the shard's weight, the config, the loss back.
The worker runs the very functions the parent would (``model.loss_and_grads``, then
``ShardSums``' arithmetic), so the bits are the same as in one process (``tests/test_shard_worker.py``).

**Lifetime.** Workers start on first use (about 0.3 s: Python and NumPy) and serve every later
step of the process; each ignores Ctrl-C and SIGTERM (the parent decides what an interrupt
means), runs with one BLAS thread, and exits when its parent closes the pipe or dies. A worker
interrupted with work in flight is discarded, never reused, so a late answer cannot be taken for
a new one. Warnings raised in a worker's shard are re-issued in the parent, where its filters
apply and each place warns once, as if the parent had computed the shard.
"""

from __future__ import annotations

import atexit
import contextlib
import mmap
import os
import pickle
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from bevialm.flat_params import FlatTensors, Layout
from bevialm.types import Array, IntArray

LAYER = "parallel"

Message = tuple[Any, ...]


def transport_layout(params: Mapping[str, Array]) -> Layout:
    """The layout the parameters and a shard's gradients cross in: the parameters' own when they
    are :class:`FlatTensors` (so the sums add buffer by buffer), else one buffer in dict order."""
    if isinstance(params, FlatTensors):
        return params.layout
    return Layout.of(params, lambda _: "all", chunk=sys.maxsize)


def _nbytes(layout: Layout) -> int:
    return sum(layout.sizes.values()) * layout.dtype.itemsize


def _parts(buf: mmap.mmap, layout: Layout, offset: int) -> dict[str, Array]:
    """``layout``'s buffers as views of ``buf`` from byte ``offset``, one after another."""
    parts = {}
    for g, n in layout.sizes.items():
        parts[g] = np.frombuffer(buf, dtype=layout.dtype, count=n, offset=offset)
        offset += n * layout.dtype.itemsize
    return parts


class SharedFile:
    """An unnamed file both processes map (memfd on Linux, an unlinked temporary file elsewhere),
    grown on demand; :meth:`tensors` gives a layout's views at the parameters' or the gradients' half."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.map: mmap.mmap | None = None

    @classmethod
    def create(cls) -> SharedFile:
        if hasattr(os, "memfd_create"):
            return cls(os.memfd_create("bevialm-shard", 0))
        with tempfile.TemporaryFile() as f:  # pragma: no cover - not Linux
            return cls(os.dup(f.fileno()))

    def fit(self, nbytes: int, *, grow: bool) -> None:
        """Map at least ``nbytes`` (the parent grows the file; the worker only maps what it was told)."""
        if self.map is not None and self.size >= nbytes:
            return
        if grow:
            os.ftruncate(self.fd, nbytes)
        self.size = nbytes
        self.map = mmap.mmap(self.fd, nbytes)  # older maps stay valid while views of them live

    def tensors(self, layout: Layout, half: int) -> FlatTensors:
        """``layout``'s tensors in half ``half`` (0: parameters, 1: gradient sums)."""
        assert self.map is not None
        return FlatTensors(layout, _parts(self.map, layout, half * _nbytes(layout)))


def _python_path() -> str:
    """``PYTHONPATH`` for a worker: this ``bevialm``'s folder first, so the worker runs the very
    code this process runs (a source checkout beside an installed release, say), unless it is one
    of this interpreter's own package folders, which the worker finds anyway (put first, they
    could shadow the standard library)."""
    root = str(Path(__file__).resolve().parent.parent)
    site_dirs = {str(Path(p).resolve()) for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])}
    return os.pathsep.join(filter(None, [None if root in site_dirs else root, os.environ.get("PYTHONPATH")]))


def _module_of(filename: str) -> tuple[str, dict[Any, Any] | None]:
    """The module whose code is ``filename`` and its warnings registry: a warning the worker
    relays is then shown once per place, as this process's own would be (not once more)."""
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == filename:
            registry: dict[Any, Any] = module.__dict__.setdefault("__warningregistry__", {})
            return name, registry
    return Path(filename).stem, None


class Worker:
    """One worker process and its shared file: :meth:`submit` a shard, then :meth:`result`."""

    def __init__(self) -> None:
        self.shared = SharedFile.create()
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": _python_path()}
        fds = (to_child_r, from_child_w, self.shared.fd)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bevialm.shard_worker", *map(str, fds)], pass_fds=fds, env=env, stdin=subprocess.DEVNULL
            )
        except BaseException:  # e.g. no process left to start: nothing of ours stays open
            for fd in (*fds, self._w, self._r):
                os.close(fd)
            raise
        os.close(to_child_r)
        os.close(from_child_w)
        self.to_child: IO[bytes] = os.fdopen(self._w, "wb")
        self.from_child: IO[bytes] = os.fdopen(self._r, "rb")
        self.layout: Layout | None = None
        self.busy = False

    def submit(
        self, params: Mapping[str, Array], idx: IntArray, targets: IntArray, cfg: Any, weight: float, first: bool, errors: Any
    ) -> None:
        """Start one shard: ``weight`` times its gradient into the worker's sums (``first``: replacing them)."""
        layout = transport_layout(params)
        self.shared.fit(2 * _nbytes(layout), grow=True)
        shared = self.shared.tensors(layout, 0)
        if isinstance(params, FlatTensors):
            for g, part in shared.parts.items():
                np.copyto(part, params.parts[g])
        else:
            for k, t in shared.items():
                np.copyto(t, params[k])
        new_layout = None if layout == self.layout else layout
        self._send(("shard", new_layout, cfg, idx, targets, weight, first, errors))
        self.layout, self.busy = layout, True

    def result(self) -> tuple[float, FlatTensors]:
        """The shard's loss and the worker's gradient sums (views of the shared file, valid until
        the next :meth:`submit`); the shard's exception, raised here, if it failed."""
        try:
            reply = pickle.load(self.from_child)
        except EOFError:
            code = self.process.wait()
            raise ChildProcessError(f"{LAYER}: a shard's worker process ended unexpectedly (exit code {code}); try --shards 1") from None
        self.busy = False
        for message, category, filename, lineno in reply[2]:  # as if this process had computed the shard
            module, registry = _module_of(filename)
            warnings.warn_explicit(message, category, filename, lineno, module=module, registry=registry)
        if reply[0] == "error":
            raise reply[1]
        assert self.layout is not None
        return float(reply[1]), self.shared.tensors(self.layout, 1)

    def _send(self, message: Message) -> None:
        try:
            pickle.dump(message, self.to_child, protocol=pickle.HIGHEST_PROTOCOL)
            self.to_child.flush()
        except BrokenPipeError:
            code = self.process.wait()
            raise ChildProcessError(f"{LAYER}: a shard's worker process has ended (exit code {code}); try --shards 1") from None

    def close(self) -> None:
        """End the worker: close its pipe (it exits on its own), and kill it if it is still busy."""
        if self.busy and self.process.poll() is None:
            self.process.kill()
        for f in (self.to_child, self.from_child):
            try:
                f.close()
            except OSError:  # pragma: no cover - a pipe already broken
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a worker stuck in a computation
            self.process.kill()
            self.process.wait()
        os.close(self.shared.fd)


_workers: list[Worker] = []

in_use = threading.Lock()
"""Held while a step's shards use the workers: two threads of one program that both train in
shards take turns, rather than send two shards to one worker."""


def _forget_workers() -> None:
    """In a child made by ``fork``: the workers (and their pipes) are the parent's, not ours."""
    global in_use
    _workers.clear()
    in_use = threading.Lock()


os.register_at_fork(after_in_child=_forget_workers)


def workers(n: int) -> list[Worker]:
    """``n`` workers, started on first use and kept for the process's later steps (one that
    died since is replaced). Call it holding :data:`in_use`."""
    for w in [w for w in _workers if w.process.poll() is not None]:
        warnings.warn(
            f"{LAYER}: a shard's worker process (pid {w.process.pid}) had ended (exit code {w.process.returncode}) "
            "between steps; a new one takes its place",
            RuntimeWarning,
            stacklevel=2,
        )
        discard(w)
    while len(_workers) < n:
        _workers.append(Worker())
    return _workers[:n]


def discard(worker: Worker) -> None:
    """Stop using ``worker`` (it was interrupted with work in flight)."""
    if worker in _workers:
        _workers.remove(worker)
    worker.close()


@atexit.register
def _close_all() -> None:
    while _workers:
        _workers.pop().close()


# --- the worker's side -----------------------------------------------------------------------


def serve(reader: IO[bytes], writer: IO[bytes], shared: SharedFile) -> None:
    """Answer shard requests until the parent closes the pipe: one ``("ok", loss, warnings)`` or
    ``("error", exception, warnings)`` per request, the gradient sums left in the shared file."""
    layout: Layout | None = None
    while True:
        try:
            _, new_layout, cfg, idx, targets, weight, first, errors = pickle.load(reader)
        except EOFError:
            return
        layout = new_layout or layout
        assert layout is not None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # the parent's filters decide, when it re-issues them
            reply = _shard(shared, layout, cfg, idx, targets, weight, first, errors)
        try:
            pickle.dump((*reply, [_warning(w) for w in caught]), writer, protocol=pickle.HIGHEST_PROTOCOL)
            writer.flush()
        except BrokenPipeError:  # the parent is gone: nobody to answer
            return


def _shard(
    shared: SharedFile, layout: Layout, cfg: Any, idx: IntArray, targets: IntArray, weight: float, first: bool, errors: Any
) -> Message:
    """One shard: its gradient, times ``weight``, into the shared sums; ``("ok", loss)`` or ``("error", exception)``."""
    from bevialm import model

    try:
        shared.fit(2 * _nbytes(layout), grow=False)
        with np.errstate(**errors):
            loss, grads = model.loss_and_grads(shared.tensors(layout, 0), idx, targets, cfg)
            _add(shared.tensors(layout, 1), grads, weight, first)
    except Exception as error:  # noqa: BLE001 - every failure goes back to the parent, as raised
        return ("error", _picklable(error))
    return ("ok", loss)


def _warning(w: warnings.WarningMessage) -> tuple[str, type[Warning], str, int]:
    category = w.category if isinstance(w.category, type) and issubclass(w.category, Warning) else UserWarning
    return str(w.message), category, w.filename, w.lineno


def _add(sums: FlatTensors, grads: Mapping[str, Array], weight: float, first: bool) -> None:
    """``sums = weight * grads`` (``first``) or ``sums += grads * weight``: ShardSums.add's bits."""
    for k, t in sums.items():
        if first:
            np.multiply(grads[k], weight, out=t)
        else:
            t += grads[k] * weight


def _picklable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - an exception that cannot cross: send its text
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def main(argv: list[str]) -> None:  # pragma: no cover - runs in the worker process (tests drive serve())
    from bevialm.runtime import tune_malloc

    for stop in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, `timeout`, `kill`, Slurm's whole job:
        signal.signal(stop, signal.SIG_IGN)  # the trainer saves and stops; the worker ends with it
    tune_malloc()
    read_fd, write_fd, shared_fd = map(int, argv)
    with contextlib.suppress(BrokenPipeError), os.fdopen(read_fd, "rb") as reader, os.fdopen(write_fd, "wb") as writer:
        serve(reader, writer, SharedFile(shared_fd))  # (closing an answer nobody reads: no traceback)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
