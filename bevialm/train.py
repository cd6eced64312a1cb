"""The trainer (playbook 9.1): data, model, loss and AdamW composed into a loop that logs,
evaluates, samples, checkpoints, survives Ctrl-C and resumes exactly.

One step::

    x, y  = get_batch(train split, batch, ctx, train_rng)
    loss, grads = loss_and_grads(params, x, y, rng=train_rng if dropout else None)  # in shards
    (with --accum K: K batches, each shard's gradient summed with its token weight; under
    mpiexec the shards are shared by the ranks: bevialm.parallel, bevialm.distributed)
    grads, norm = clip_by_global_norm(grads, grad_clip)      # stop here on a NaN/inf loss or norm
    params, opt = adamw step(params, grads, opt, lr_at(step))

**Random streams.** Everything random is drawn from generators seeded from
``--seed`` and a stream number, so the streams never interfere:

- stream 0, ``default_rng([seed, 0])``: the initial parameters;
- stream 1, ``default_rng([seed, 1])``: the training batches and the dropout
  masks, in that order each step. Its state is saved in every checkpoint;
- stream 2, ``default_rng([seed, 2, step, split])``: the batches of the
  evaluation at ``step`` (``split`` 0 for train, 1 for val);
- stream 3, ``default_rng([seed, 3, step])``: the sample printed at ``step``.

So evaluating or sampling more or less often never changes the training
trajectory, and a run resumed from a checkpoint (parameters, AdamW moments and
step count, training-RNG state, best validation loss, the log line's running
sum) computes the very same losses, to the bit, as one that never stopped.

**State.** Everything the future of the run depends on (best validation loss
included) is one immutable snapshot, replaced by single assignments. A Ctrl-C
saves the last *committed* snapshot: the step whose log line, evaluation,
checkpoints and sample are all done. An interrupt during that work saves the
step before it, so the resumed run redoes the step and its evaluation instead
of skipping them.

**Tokens.** ``--tokenizer char`` (the default) makes one token per character of the
text; ``--tokenizer bpe --vocab_size N`` trains a byte-level BPE on the text first
(:mod:`bevialm.tokenizer`). The tokenizer is saved in every checkpoint. Evaluations
report the validation loss per token and in bits per character, which compares
runs with different tokenizers.

**Files** in the run folder ``out`` (a new ``runs/run-NNN`` when it is None,
:mod:`bevialm.runs`): ``last.npz`` (with the optimizer state, for ``--resume``),
written when the run starts and at every evaluation, ``best.npz`` (lowest
validation loss, parameters only), and ``metrics.jsonl``, one JSON object per
log line (``"kind": "train"``) and per evaluation (``"kind": "eval"``).
``docs/training.md`` describes them.

**Parts.** :func:`prepare` refuses what cannot run and starts the run
(:mod:`bevialm.train_data` reads the text, :mod:`bevialm.runs` claims and locks the
folder, :mod:`bevialm.train_state` builds or restores the :class:`~bevialm.train_state.Snapshot`);
:func:`loop` trains; :func:`save` writes a checkpoint; :mod:`bevialm.train_report` prints.

**Starting and stopping.** Everything that can refuse a run (data, sizes, memory,
the run folder, a checkpoint to resume) is checked before anything is written; a
run has started once its step-0 ``last.npz`` is on disk, and only then does
``--overwrite`` remove the old run's other files. Ctrl-C (and SIGTERM, which the
command line turns into the same) saves ``last.npz`` and raises
:class:`bevialm.runtime.Stopped`, whose message is the one line to print.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import IO, Any

import numpy as np

from bevialm import (
    checkpoint,
    config_file,
    distributed,
    generate,
    losses,
    memory,
    model,
    optim,
    parallel,
    runs,
    runtime,
    train_state,
)
from bevialm.data import get_batch
from bevialm.runs import BEST, LAST, METRICS, TrainError
from bevialm.train_config import DTYPES, TrainConfig, TrainResult
from bevialm.train_data import RunData, load_data
from bevialm.train_report import Reporter, StartNotes
from bevialm.train_state import Snapshot
from bevialm.types import Array, IntArray

__all__ = ["BEST", "DTYPES", "LAST", "METRICS", "TrainConfig", "TrainError", "TrainResult", "TrainingDiverged", "train"]

EVAL_STREAM = 2  # the random streams of the docstring (0 and 1: bevialm.train_state)
_NOT_FLAGS = ("val_fraction",)  # TrainConfig fields no flag sets (a config file cannot hold them)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; nothing was saved after it."""


def evaluate(
    params: Mapping[str, Array], cfg: model.ModelConfig, data: IntArray, batch: int, iters: int, rng: np.random.Generator
) -> float:
    """Mean cross-entropy over ``iters`` random batches of ``data``, in evaluation mode (no dropout)."""
    total = 0.0
    for _ in range(iters):
        x, y = get_batch(data, batch, cfg.ctx, rng)
        logits, _ = model.forward(params, x, cfg)
        loss, _ = losses.cross_entropy(logits, y)
        total += float(loss)
    return total / iters


@dataclass
class _Run:
    """A run's state between :func:`prepare` and its end: what it was given, where it writes,
    its snapshot (``committed``: what a Ctrl-C saves, the last step whose bookkeeping is done)."""

    cfg: TrainConfig
    mcfg: model.ModelConfig
    data: RunData
    report: Reporter
    group: distributed.Group | None  # under mpiexec: this rank's place; rank 0 alone prints and writes
    given_out: str | None  # None: a new numbered folder (or, with --resume, the newest run)
    out: str = ""
    snap: Snapshot = field(init=False)
    committed: Snapshot = field(init=False)
    notes: StartNotes = StartNotes()
    metrics: runs.MetricsFile | None = None
    lock: runs.RunLock = field(default_factory=lambda: runs.RunLock("", -1, None))  # held until the run ends
    saved_step: int | None = None  # step of the last.npz on disk (the last good one)
    last_eval: tuple[float, float] | None = None
    elapsed_before: float = 0.0
    start_time: float = field(default_factory=time.perf_counter)

    @property
    def writer(self) -> bool:
        return self.report.writer

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start_time

    def kept(self) -> str:
        if self.saved_step is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint is '{self.path(LAST)}' (step {self.saved_step})"

    def diverged(self, step: int, what: str) -> TrainingDiverged:
        return TrainingDiverged(
            f"training diverged at step {step}/{self.cfg.steps} ({what}); stopped without saving, {self.kept()}; "
            "try a lower --lr or a --grad_clip"
        )


# --- prepare: refuse what cannot run, before anything is allocated or written -------------------
#
# Data, model size and memory are checked first; then the run folder is chosen (and, for a
# new one, created); then the state is built or restored; the run has *started* once its
# first checkpoint is on disk. Only then does --overwrite drop the old run's files, and a
# start that fails before that point removes the folder it created: a failed start never
# costs an old run, and never leaves anything that refuses the same command next time.


def prepare(cfg: TrainConfig, stdout: IO[str], group: distributed.Group | None = None) -> _Run:
    """Check everything that can refuse the run, then start it (its step-0 or resumed state)."""
    if group is not None:  # before anything: every rank must run the same flags on the same data
        group.require_same_run(distributed.fingerprint(cfg, cfg.data))
        cfg = dataclasses.replace(cfg, shards=max(cfg.shards, group.size))
    cfg, data = load_data(cfg)
    mcfg = cfg.model_config(data.tokenizer.vocab_size)
    _check_memory(cfg, mcfg, data, group)
    run = _Run(cfg, mcfg, data, Reporter(stdout, group is None or group.writer), group, given_out=cfg.out)
    if group is None:
        _start(run)
        return run
    # Rank 0 chooses the folder and builds or restores the state; the others take it from there.
    run.out, run.snap = group.share_from_writer(lambda: _start(run))
    run.committed = run.snap
    run.cfg = dataclasses.replace(run.cfg, out=run.out)
    return run


def _check_memory(cfg: TrainConfig, m: model.ModelConfig, data: RunData, group: distributed.Group | None) -> None:
    itemsize, tokens = np.dtype(cfg.dtype).itemsize, len(data.train) + len(data.val)
    shards = parallel.step_shards(cfg.batch, m.ctx, cfg.shards, dropout=m.dropout > 0)
    workers = max(0, len(range(shards) if group is None else group.owned(shards)) - 1)  # this process's own
    need, breakdown = memory.training_bytes(
        m, batch=cfg.batch, itemsize=itemsize, data_tokens=tokens, sample_len=cfg.sample_len, workers=workers
    )
    memory.require(need, "this run", breakdown, "use a smaller --batch, --ctx, --dim, --layers, --mlp_hidden or --sample_len")


def _start(run: _Run) -> tuple[str, Snapshot]:
    """Claim and lock the run folder, build or restore the state, and start: a new run writes its
    step-0 ``last.npz`` (proving the folder takes a checkpoint), and only then replaces an old
    run's other files; a resumed run keeps the metrics of the steps up to its checkpoint."""
    claim = runs.claim_folder(run.cfg.out, resume=run.cfg.resume, overwrite=run.cfg.overwrite)
    run.out, run.cfg = claim.out, dataclasses.replace(run.cfg, out=claim.out)
    run.metrics = runs.MetricsFile(run.out)
    try:
        run.lock = runs.lock_run_folder(run.out)  # one process per run folder, until the run ends
        stale = runs.remove_stale_temp_files(run.out)
        if run.cfg.resume:
            ckpt = checkpoint.load_checkpoint(run.path(LAST))
            restored = train_state.restore(ckpt, run.path(LAST), run.cfg, run.mcfg, run.data)
            run.snap = run.committed = restored.snap
            run.elapsed_before, run.saved_step = restored.elapsed, ckpt.step
            run.notes = StartNotes(ckpt.step, stale, tuple(restored.changed_flags))
            run.metrics.resume(ckpt.step)
        else:
            run.snap = run.committed = train_state.fresh(run.cfg, run.mcfg, run.data)
            run.notes = StartNotes(None, stale)
            save(run, LAST, run.snap, with_optimizer=True)
            with contextlib.suppress(FileNotFoundError):
                os.remove(run.path(BEST))  # --overwrite: the old run's best is not this run's
            run.metrics.start()
        _write_config(run)  # once started: a failed --overwrite start keeps the old run's config
    except BaseException:
        run.metrics.close()
        run.lock.release()
        if claim.created is not None:
            runs.remove_created(run.out, claim.created)
        raise
    return run.out, run.snap


def _write_config(run: _Run) -> None:
    """``config.toml``: the effective config (every flag's value), for ``--config`` to repeat the run."""
    flags = {k: v for k, v in asdict(run.cfg).items() if k not in _NOT_FLAGS}
    path = run.path(config_file.CONFIG_NAME)
    try:
        config_file.write(run.out, flags, f"The effective config of {run.out}; repeat the run with --config {path}")
    except OSError as e:
        raise TrainError(f"cannot write '{path}': {e.strerror or e}") from None


# --- the loop -------------------------------------------------------------------------------------


def loop(run: _Run) -> None:
    """Train from ``run.snap`` to ``--steps``: log, evaluate and checkpoint, sample."""
    cfg, mcfg, train_data = run.cfg, run.mcfg, run.data.train
    rng = checkpoint.restore_rng(run.snap.rng_state)
    dropout_rng = rng if mcfg.dropout > 0 else None
    clip = cfg.grad_clip if cfg.grad_clip > 0 else None
    adamw = optim.AdamWConfig(lr=cfg.lr, beta2=cfg.beta2, weight_decay=cfg.wd)
    gradients = parallel.step_loss_and_grads if run.group is None else run.group.step_loss_and_grads
    session_start, session_first = time.perf_counter(), run.snap.step
    interval_time, interval_steps = 0.0, 0
    for s in range(run.snap.step, cfg.steps):
        t0 = time.perf_counter()
        snap = run.snap
        loss, grads = gradients(
            snap.params,
            lambda: get_batch(train_data, cfg.batch, cfg.ctx, rng),
            mcfg,
            batch=cfg.batch,
            accum=cfg.accum,
            shards=cfg.shards,
            rng=dropout_rng,
        )
        grads, norm = optim.clip_by_global_norm(grads, clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise run.diverged(s + 1, f"loss {loss}, gradient norm {norm}")
        lr = optim.lr_at(s, cfg.lr, cfg.warmup, cfg.steps, cfg.floor_lr)
        params, opt = optim.flat_step(snap.params, grads, snap.opt, adamw, lr)
        done = s + 1
        log_due = cfg.log_every > 0 and (done % cfg.log_every == 0 or done == cfg.steps)
        loss_sum, loss_count = snap.loss_sum + loss, snap.loss_count + 1
        # One assignment publishes the step; a Ctrl-C saves run.committed, which only
        # moves on below, once the step's log, evaluation, checkpoints and sample are done.
        run.snap = dataclasses.replace(
            snap,
            step=done,
            params=params,
            opt=opt,
            rng_state=rng.bit_generator.state,
            loss_sum=0.0 if log_due else loss_sum,
            loss_count=0 if log_due else loss_count,
            grad_norm=norm,
        )
        interval_time += time.perf_counter() - t0
        interval_steps += 1
        if log_due:
            per_step = interval_time / interval_steps
            eta = (time.perf_counter() - session_start) / (done - session_first) * (cfg.steps - done)
            _log(run, done, loss_sum / loss_count, lr, norm, per_step, eta)
            interval_time, interval_steps = 0.0, 0
        if done == cfg.steps or (cfg.eval_every > 0 and done % cfg.eval_every == 0):
            _evaluate_and_save(run, done, lr)
        if cfg.sample_len > 0 and (done == cfg.steps or (cfg.sample_every > 0 and done % cfg.sample_every == 0)):
            _print_sample(run, done)
        run.committed = run.snap


def _log(run: _Run, step: int, loss: float, lr: float, norm: float, per_step: float, eta: float) -> None:
    tokens_per_s = run.report.step(run.cfg, step, loss, lr, norm, per_step, eta)
    record = {"loss": loss, "lr": lr, "grad_norm": norm, "ms_per_step": per_step * 1e3, "tokens_per_s": tokens_per_s}
    _record(run, kind="train", step=step, **record)


def _record(run: _Run, **fields: Any) -> None:
    if not run.writer:
        return
    assert run.metrics is not None
    fields["time"] = round(run.elapsed(), 3)
    try:
        run.metrics.write(fields)
    except OSError as e:
        raise TrainError(f"cannot write '{run.path(METRICS)}': {e.strerror or e}; {run.kept()}") from None


def _evaluate_and_save(run: _Run, step: int, lr: float) -> None:
    cfg, snap, data = run.cfg, run.snap, run.data
    seeds = [cfg.seed, EVAL_STREAM, step]
    train_loss = evaluate(snap.params, run.mcfg, data.train, cfg.batch, cfg.eval_iters, np.random.default_rng([*seeds, 0]))
    val_loss = evaluate(snap.params, run.mcfg, data.val, cfg.batch, cfg.eval_iters, np.random.default_rng([*seeds, 1]))
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        raise run.diverged(step, f"evaluation loss train {train_loss}, val {val_loss}")
    run.last_eval = (train_loss, val_loss)
    val_bpc = data.bits_per_char(val_loss)
    _record(run, kind="eval", step=step, train_loss=train_loss, val_loss=val_loss, val_bpc=val_bpc, lr=lr)
    improved = snap.best_val is None or val_loss < snap.best_val
    if improved:
        snap = run.snap = dataclasses.replace(snap, best_val=val_loss, best_step=step)
        save(run, BEST, snap, with_optimizer=False)
    save(run, LAST, snap, with_optimizer=True)
    run.report.evaluation(cfg, snap, run.last_eval, val_bpc, improved)


def _print_sample(run: _Run, step: int) -> None:
    tokenizer = run.data.tokenizer
    prompt = generate.default_prompt(tokenizer)
    text = generate.sample_text(
        run.snap.params,
        run.mcfg,
        tokenizer,
        prompt,
        run.cfg.sample_len,
        rng=generate.sampling_rng(run.cfg.seed, step),
        sampling=run.cfg.sampling,
        allowed=run.data.seen,
    )[0]
    run.report.sample(step, text[len(prompt) :])


# --- save -----------------------------------------------------------------------------------------


def save(run: _Run, name: str, snap: Snapshot, *, with_optimizer: bool) -> str:
    """Write ``snap`` as the run folder's ``name`` (rank 0 only); :class:`TrainError` if the disk refuses."""
    path = run.path(name)
    if not run.writer:
        return path
    try:
        train_state.save(
            path, snap, cfg=run.cfg, mcfg=run.mcfg, data=run.data, elapsed=run.elapsed(), with_optimizer=with_optimizer
        )
    except OSError as e:  # a full disk, a folder removed under the run: the old file is intact
        raise TrainError(f"cannot write checkpoint '{path}': {e.strerror or e}; {run.kept()}") from None
    if name == LAST:
        run.saved_step = snap.step
    return path


def _finite(params: Mapping[str, Array]) -> bool:
    return all(bool(np.isfinite(p).all()) for p in params.values())


def _stop(run: _Run, signal: KeyboardInterrupt) -> runtime.Stopped:
    """Save the last committed step on Ctrl-C or SIGTERM; the exception carries the one line to print."""
    terminated = isinstance(signal, runtime.Terminated)
    snap = run.committed
    what = f"{'terminated (SIGTERM)' if terminated else 'interrupted'} at step {snap.step}/{run.cfg.steps}"
    if not _finite(snap.params):  # pragma: no cover - an update overflowed just before Ctrl-C
        return runtime.Stopped(f"{what}: parameters are not finite, nothing saved; {run.kept()}", terminated=terminated)
    path = save(run, LAST, snap, with_optimizer=True)
    flags = ([] if run.cfg.resume else ["--resume"]) + ([] if run.given_out else [f"--out {run.out}"])
    make = os.environ.get("BEVIALM_MAKE")  # `make train` runs main.py with its own flags and ARGS
    if make:
        given = [a for a in os.environ.get("BEVIALM_MAKE_ARGS", "").split() if a != "--overwrite"]
        args = " ".join(given + flags)
        return runtime.Stopped(f'{what}: saved {path}; continue with: {make} ARGS="{args}"', terminated=terminated)
    how = f" and {' '.join(flags)}" if flags else ""
    if run.cfg.overwrite:
        how += " in place of --overwrite"
    return runtime.Stopped(f"{what}: saved {path}; continue with the same command{how}", terminated=terminated)


def _finish(run: _Run) -> TrainResult:
    """Print what the run will do, train, print how it ended; the lock and the metrics file close at the end."""
    cfg, report = run.cfg, run.report
    try:
        report.header(cfg, run.mcfg, run.data, run.group)
        report.start(cfg, run.out, run.data, run.notes)
        if run.snap.step >= cfg.steps:
            report.say(f"nothing to do: the run is at step {run.snap.step}, --steps is {cfg.steps}")
        else:
            try:
                # A diverging run overflows before its loss is seen to be NaN; the check in the loop
                # says so in one line, so NumPy's floating-point warnings would only be noise.
                with np.errstate(all="ignore"):
                    loop(run)
            except KeyboardInterrupt as e:
                raise _stop(run, e) from None
            report.summary(cfg, run.snap, run.data, run.elapsed(), run.out)
    finally:
        if run.metrics is not None:
            run.metrics.close()
        run.lock.release()
    last, best = run.last_eval, run.snap.best_val
    return TrainResult(
        step=run.snap.step,
        train_loss=None if last is None else last[0],
        val_loss=None if last is None else last[1],
        best_val_loss=best,
        best_step=run.snap.best_step,
        elapsed=run.elapsed(),
        out=run.out,
        val_bpc=None if last is None else run.data.bits_per_char(last[1]),
        best_val_bpc=None if best is None else run.data.bits_per_char(best),
    )


def train(cfg: TrainConfig, *, stdout: IO[str] | None = None, group: distributed.Group | None = None) -> TrainResult:
    """Run (or, with ``cfg.resume``, continue) training as ``cfg`` says, printing to ``stdout``.

    Raises :class:`TrainError` (or :class:`bevialm.data.DataError`,
    :class:`bevialm.checkpoint.CheckpointError`) when the run cannot start or write its files,
    :class:`bevialm.memory.MemoryLimitError` when it would not fit in memory,
    :class:`TrainingDiverged` on a NaN or infinite loss (``last.npz`` keeps the last good
    state), and :class:`bevialm.runtime.Stopped` (a ``KeyboardInterrupt``) after saving
    ``last.npz`` on Ctrl-C (or SIGTERM, under :func:`bevialm.runtime.stop_signals_raise`).
    """
    run = prepare(cfg, sys.stdout if stdout is None else stdout, group)
    if group is None:  # under mpiexec a refused start was refused on every rank (distributed.Group)
        return _finish(run)
    # Past the start, every rank stops together on a signal or a diverged loss; any other error
    # is this rank's alone (rank 0's disk is full) and must not leave the others waiting.
    with distributed.abort_alone(group, (KeyboardInterrupt, TrainingDiverged)):
        return _finish(run)
