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
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import IO, Any

import numpy as np

from bevialm import checkpoint, distributed, generate, losses, memory, model, optim, parallel, runs, runtime
from bevialm import tokenizer as tokenizers
from bevialm.data import DataError, get_batch, load_text, split
from bevialm.layers.mlp import ACTIVATIONS
from bevialm.types import Array, IntArray
from bevialm.validate import require_positive

LAYER = "train"

LAST, BEST, METRICS = "last.npz", "best.npz", "metrics.jsonl"
INIT_STREAM, TRAIN_STREAM, EVAL_STREAM = 0, 1, 2
DTYPES = ("float32", "float64")

_MODEL_FLAGS = {"n_layers": "layers", "n_heads": "heads", "vocab_size": "vocabulary size"}


class TrainError(ValueError):
    """A run that cannot start (bad data, run folder or checkpoint) or cannot write its
    checkpoints or metrics (a full disk): one line. (Too little memory is a
    :class:`bevialm.memory.MemoryLimitError`.)"""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; nothing was saved after it."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run is given; the fields are the command line's flags (``docs/training.md``).

    ``out`` None means a new numbered folder in ``runs/`` (:mod:`bevialm.runs`), or with
    ``resume`` the newest run there. ``min_lr`` None means ``lr / 10``. The interval fields (``log_every``,
    ``eval_every``, ``sample_every``) accept 0: never (evaluation and a sample
    still happen at the end). ``top_k`` 0 and ``top_p`` 1 switch those filters off.
    """

    data: str
    seed: int = 42
    ctx: int = 128
    dim: int = 128
    layers: int = 2
    heads: int = 1
    mlp_hidden: int = 512
    activation: str = "relu"
    dropout: float = 0.0
    dtype: str = "float32"
    batch: int = 16
    shards: int = parallel.DEFAULT_SHARDS
    accum: int = 1
    steps: int = 5000
    lr: float = 3e-4
    warmup: int = 100
    min_lr: float | None = None
    wd: float = 0.1
    beta2: float = 0.95
    grad_clip: float = 1.0
    log_every: int = 200
    eval_every: int = 500
    eval_iters: int = 50
    sample_every: int = 1000
    sample_len: int = 400
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    out: str | None = None
    resume: bool = False
    overwrite: bool = False
    val_fraction: float = 0.1
    tokenizer: str = "char"
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        require_positive(
            LAYER,
            ctx=self.ctx,
            dim=self.dim,
            layers=self.layers,
            heads=self.heads,
            mlp_hidden=self.mlp_hidden,
            batch=self.batch,
            shards=self.shards,
            accum=self.accum,
            steps=self.steps,
            eval_iters=self.eval_iters,
        )
        for key in ("warmup", "log_every", "eval_every", "sample_every", "sample_len", "top_k"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{LAYER}: {key} must be an integer >= 0, got {value!r}")
        if self.dim % self.heads:
            raise ValueError(f"{LAYER}: heads ({self.heads}) must divide dim ({self.dim})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"{LAYER}: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{LAYER}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"{LAYER}: lr must be a positive number, got {self.lr!r}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"{LAYER}: min_lr ({self.min_lr}) must lie between 0 and lr ({self.lr})")
        for key, low, high in (("dropout", 0, 1), ("beta2", 0, 1), ("val_fraction", 0, 1)):
            value = getattr(self, key)
            if not low <= value < high:
                raise ValueError(f"{LAYER}: {key} must lie in [{low}, {high}), got {value!r}")
        for key in ("wd", "grad_clip", "temperature"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{LAYER}: {key} must be a finite number >= 0, got {value!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{LAYER}: top_p must lie in (0, 1], got {self.top_p!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"{LAYER}: seed must be an integer >= 0, got {self.seed!r}")
        if self.out is not None and (not isinstance(self.out, str) or not self.out):
            raise ValueError(f"{LAYER}: out must be a folder name or None (a new folder in runs/), got {self.out!r}")
        if self.tokenizer not in tokenizers.KINDS:
            raise ValueError(f"{LAYER}: tokenizer must be one of {tokenizers.KINDS}, got {self.tokenizer!r}")
        if self.vocab_size is not None:
            if self.tokenizer != "bpe":
                raise ValueError(
                    f"{LAYER}: vocab_size applies to --tokenizer bpe; a char vocabulary is the text's characters"
                )
            try:
                tokenizers.check_bpe_vocab_size(self.vocab_size)
            except DataError as e:
                raise ValueError(f"{LAYER}: {e}") from None
        if self.resume and self.overwrite:
            raise ValueError(
                f"{LAYER}: --resume continues the run in --out and --overwrite deletes it: pass only one of them"
            )

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @property
    def floor_lr(self) -> float:
        """The learning rate the cosine decays to (``min_lr``, or ``lr / 10``)."""
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def sampling(self) -> generate.SamplingConfig:
        return generate.SamplingConfig.from_flags(self.temperature, self.top_k, self.top_p)

    def model_config(self, vocab_size: int) -> model.ModelConfig:
        return model.ModelConfig(
            vocab_size=vocab_size,
            ctx=self.ctx,
            dim=self.dim,
            n_layers=self.layers,
            n_heads=self.heads,
            mlp_hidden=self.mlp_hidden,
            activation=self.activation,  # type: ignore[arg-type]  # checked in __post_init__
            dropout=self.dropout,
        )


@dataclass(frozen=True)
class TrainResult:
    """How a finished run ended: its step, the last and the best evaluation."""

    step: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    best_step: int | None
    elapsed: float
    out: str
    val_bpc: float | None = None
    best_val_bpc: float | None = None


@dataclass(frozen=True)
class _Snapshot:
    """Everything the rest of the run depends on, after ``step`` completed steps.

    ``loss_sum``/``loss_count`` are the running sum of the training losses since the
    last log line (whose mean the next line prints); ``rng_state`` is the training
    generator's state at this step boundary; ``best_val``/``best_step`` the lowest
    validation loss so far and its step (what ``best.npz`` holds).
    """

    step: int
    params: dict[str, Array]
    opt: optim.AdamWState
    rng_state: Mapping[str, Any]
    loss_sum: float = 0.0
    loss_count: int = 0
    grad_norm: float = math.nan
    best_val: float | None = None
    best_step: int | None = None


# The flags whose change makes a resumed run differ from one that never stopped (the model's
# own flags are checked against the checkpoint and refused when they differ).
_TRAJECTORY_FLAGS = ("seed", "batch", "shards", "accum", "steps", "lr", "warmup", "min_lr", "wd", "beta2", "grad_clip", "val_fraction")


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


def _finite(params: Mapping[str, Array]) -> bool:
    return all(bool(np.isfinite(p).all()) for p in params.values())


def _first_missing(path: str) -> str | None:
    """The topmost folder of ``path`` that does not exist yet (what ``os.makedirs`` would create), or None."""
    missing = None
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing = path
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _remove_created(out: str, top: str) -> None:
    """Undo a failed start: the run's own files in ``out``, then the folders up to ``top`` that it created."""
    for name in (LAST, BEST, METRICS):
        with contextlib.suppress(OSError):
            os.remove(os.path.join(out, name))
    runs.remove_stale_temp_files(out)
    path, top = os.path.abspath(out), os.path.abspath(top)
    while True:
        try:
            os.rmdir(path)  # only ever an empty folder
        except OSError:
            return
        if path == top:
            return
        path = os.path.dirname(path)


def _clock(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class _Run:
    """One training run, in three parts: :meth:`prepare` (everything that can refuse the run,
    then its start), :meth:`run` (the loop) and the saving (:meth:`_save`, :meth:`_stop`)."""

    def __init__(self, cfg: TrainConfig, stdout: IO[str], group: distributed.Group | None = None) -> None:
        self.cfg = cfg
        self.group = group  # under mpiexec: this rank's place; rank 0 alone prints and writes
        self.writer = group is None or group.writer
        self.stdout = stdout
        self.given_out = cfg.out  # None: a new numbered folder (or, with --resume, the newest run)
        self.out = cfg.out or ""  # the run folder, once prepare() has chosen it
        self.tokenizer: tokenizers.Tokenizer
        self.tokenizer_seconds = 0.0
        self.text_chars = 0
        self.val_chars = 0  # characters of the validation text, for bits per character
        self.train_data: IntArray
        self.val_data: IntArray
        self.mcfg: model.ModelConfig
        self.snap: _Snapshot
        self.committed: _Snapshot  # what a Ctrl-C saves: the last step whose bookkeeping is done
        self.rng: np.random.Generator
        self.changed_flags: list[str] = []
        self.last_eval: tuple[float, float] | None = None
        self.saved_step: int | None = None  # step of the last.npz on disk (the last good one)
        self.elapsed_before = 0.0
        self.resumed_from: int | None = None
        self.stale_removed = 0
        self.adamw = optim.AdamWConfig(lr=cfg.lr, beta2=cfg.beta2, weight_decay=cfg.wd)
        self.metrics: IO[str] | None = None
        self.start_time = time.perf_counter()

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def say(self, line: str) -> None:
        if self.writer:
            print(line, file=self.stdout, flush=True)

    # --- prepare: refuse what cannot run, before anything is allocated or written ---------------
    #
    # Data, model size and memory are checked first; then the run folder is chosen (and, for a
    # new one, created); then the state is built or restored; the run has *started* once its
    # first checkpoint is on disk. Only then does --overwrite drop the old run's files, and a
    # start that fails before that point removes the folder it created: a failed start never
    # costs an old run, and never leaves anything that refuses the same command next time.

    def prepare(self) -> None:
        if self.group is not None:  # before anything: every rank must run the same flags on the same data
            self.group.require_same_run(distributed.fingerprint(self.cfg, self.cfg.data))
            self.cfg = dataclasses.replace(self.cfg, shards=max(self.cfg.shards, self.group.size))
        self._load_data()
        self.mcfg = self.cfg.model_config(self.tokenizer.vocab_size)
        self._check_memory()
        if self.group is None:
            self._start_run()
            return
        # Rank 0 chooses the folder and builds or restores the state; the others take it from there.
        out, self.snap = self.group.share_from_writer(self._start_and_share)
        self.committed, self.out = self.snap, out
        self.cfg = dataclasses.replace(self.cfg, out=out)
        self.rng = checkpoint.restore_rng(self.snap.rng_state)

    def _start_and_share(self) -> tuple[str, _Snapshot]:
        self._start_run()
        return self.out, self.snap

    def _start_run(self) -> None:
        created = self._claim_folder()
        try:
            self.stale_removed = runs.remove_stale_temp_files(self.out)
            if self.cfg.resume:
                self._restore()
            else:
                self._fresh()
            self._start()
        except BaseException:
            if self.metrics is not None:
                self.metrics.close()
            if created is not None:
                _remove_created(self.out, created)
            raise

    def _load_data(self) -> None:
        cfg = self.cfg
        text = load_text(cfg.data)
        start = time.perf_counter()
        self.tokenizer = tokenizers.build(text, cfg.tokenizer, cfg.vocab_size)
        self.tokenizer_seconds = time.perf_counter() - start
        ids = self.tokenizer.encode(text, what=f"data file '{cfg.data}'")
        self.text_chars = len(text)
        self.train_data, self.val_data = split(ids, cfg.val_fraction)
        self.val_chars = self.tokenizer.count_chars(self.val_data)
        need = cfg.ctx + 1
        unit = "characters" if cfg.tokenizer == "char" else "tokens"
        for part, data in (("training part", self.train_data), ("validation part", self.val_data)):
            if len(data) < need:
                raise TrainError(
                    f"data file '{cfg.data}' is too short for --ctx {cfg.ctx}: its {part} has {len(data)} "
                    f"{unit} of {len(ids)}, at least ctx + 1 = {need} are needed "
                    f"(the last {cfg.val_fraction:.0%} is validation); use a longer text or a smaller --ctx"
                )

    def _check_memory(self) -> None:
        cfg, m = self.cfg, self.mcfg
        need, breakdown = memory.training_bytes(
            vocab=m.vocab_size,
            ctx=m.ctx,
            dim=m.dim,
            layers=m.n_layers,
            heads=m.n_heads,
            hidden=m.mlp_hidden,
            batch=cfg.batch,
            itemsize=np.dtype(cfg.dtype).itemsize,
            data_tokens=len(self.train_data) + len(self.val_data),
            sample_len=cfg.sample_len,
        )
        memory.require(
            need,
            "this run",
            breakdown,
            "use a smaller --batch, --ctx, --dim, --layers, --mlp_hidden or --sample_len",
        )

    def _claim_folder(self) -> str | None:
        """Choose the run folder (``self.out``) and check it can hold this run; return the
        topmost folder this created (removed again if the start fails), or None."""
        cfg = self.cfg
        if cfg.out is None and cfg.resume:
            last = runs.newest_with((LAST,))
            if last is None:
                raise TrainError(f"--resume: no run in '{runs.RUNS}' has a {LAST} to resume from; pass its --out")
            self.out = os.path.dirname(last)
        elif cfg.out is None:
            try:
                self.out = runs.new_run_folder()
            except OSError as e:
                raise TrainError(f"cannot create a run folder in '{runs.RUNS}': {e.strerror or e}") from None
            self.cfg = dataclasses.replace(cfg, out=self.out)
            return self.out
        out = self.out
        if os.path.exists(out) and not os.path.isdir(out):
            raise TrainError(f"run folder '{out}' exists and is not a folder")
        created = _first_missing(out)
        try:
            os.makedirs(out, exist_ok=True)
            with tempfile.TemporaryFile(dir=out):
                pass
        except OSError as e:
            if created is not None:
                _remove_created(out, created)
            raise TrainError(f"run folder '{out}' cannot be written: {e.strerror or e}") from None
        self.cfg = dataclasses.replace(cfg, out=out)
        existing = [n for n in (LAST, BEST, METRICS) if os.path.exists(self.path(n))]
        problem = None
        if cfg.resume and LAST not in existing:
            problem = f"--resume: there is no checkpoint '{self.path(LAST)}' to resume from"
        elif existing and not (cfg.resume or cfg.overwrite):
            problem = (
                f"run folder '{out}' already holds a run ({', '.join(existing)}): pass --resume to continue it, "
                "--overwrite to start afresh, or another --out (or none: a new folder in runs/)"
            )
        if problem:
            if created is not None:
                _remove_created(out, created)
            raise TrainError(problem)
        return created

    def _fresh(self) -> None:
        cfg = self.cfg
        params = model.init_params(self.mcfg, np.random.default_rng([cfg.seed, INIT_STREAM]), np.dtype(cfg.dtype))
        self.rng = np.random.default_rng([cfg.seed, TRAIN_STREAM])
        self.snap = self.committed = _Snapshot(0, params, optim.init_state(params), self.rng.bit_generator.state)

    def _restore(self) -> None:
        cfg, path = self.cfg, self.path(LAST)
        ckpt = checkpoint.load_checkpoint(path)
        expected = asdict(self.mcfg)
        got = ckpt.model_config
        if got != expected:
            diffs = [
                f"{_MODEL_FLAGS.get(k, k)} {got.get(k)!r} in the checkpoint, {v!r} now"
                for k, v in expected.items()
                if got.get(k) != v
            ] or ["its model config has other fields"]
            raise TrainError(f"--resume: '{path}' was trained with another model: {'; '.join(diffs)}; pass the run's flags")
        if ckpt.tokenizer != self.tokenizer:
            raise TrainError(
                f"--resume: the tokenizer made from '{cfg.data}' ({tokenizers.describe(self.tokenizer)}) differs from "
                f"the one '{path}' was trained with ({tokenizers.describe(ckpt.tokenizer)}): the data or "
                "--tokenizer/--vocab_size changed"
            )
        checkpoint.validate_against(ckpt, model.param_shapes(self.mcfg))
        checkpoint.require_finite(ckpt, path)
        dtypes = {str(p.dtype) for p in ckpt.params.values()}
        if dtypes != {cfg.dtype}:
            raise TrainError(
                f"--resume: '{path}' holds {'/'.join(sorted(dtypes))} parameters, --dtype is {cfg.dtype}; "
                "pass the run's --dtype"
            )
        if ckpt.opt_state is None or ckpt.rng_state is None:
            raise TrainError(f"--resume: '{path}' has no optimizer or RNG state to resume from")
        self.rng = checkpoint.restore_rng(ckpt.rng_state)
        extra = ckpt.extra
        grad_norm = extra.get("grad_norm")
        self.snap = self.committed = _Snapshot(
            ckpt.step,
            ckpt.params,
            ckpt.opt_state,
            self.rng.bit_generator.state,
            float(extra.get("loss_sum", 0.0)),
            int(extra.get("loss_count", 0)),
            math.nan if grad_norm is None else float(grad_norm),
            ckpt.best_val_loss,
            extra.get("best_step"),
        )
        before = ckpt.train_config
        now = asdict(cfg)
        self.changed_flags = [f"{k} {before[k]} -> {now[k]}" for k in _TRAJECTORY_FLAGS if k in before and before[k] != now[k]]
        self.elapsed_before = float(extra.get("elapsed", 0.0))
        self.saved_step = self.resumed_from = ckpt.step

    def _start(self) -> None:
        """The run starts: a new run writes its step-0 ``last.npz`` (proving the folder takes a
        checkpoint), and only then replaces an old run's other files; a resumed run keeps the
        metrics of the steps up to its checkpoint."""
        if self.cfg.resume:
            self.metrics = self._reopen_metrics(self.snap.step)
            return
        self._save(LAST, self.snap, with_optimizer=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path(BEST))  # --overwrite: the old run's best is not this run's
        self.metrics = self._open_metrics("w")

    def _open_metrics(self, mode: str) -> IO[str]:
        try:
            return open(self.path(METRICS), mode, encoding="utf-8")
        except OSError as e:
            raise TrainError(f"cannot write '{self.path(METRICS)}': {e.strerror or e}") from None

    def _reopen_metrics(self, step: int) -> IO[str]:
        """Keep the metrics of steps up to the checkpoint's (later ones were lost with the run)."""
        kept: list[str] = []
        with contextlib.suppress(FileNotFoundError), open(self.path(METRICS), encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        metrics = self._open_metrics("w")
        metrics.writelines(kept)
        metrics.flush()
        return metrics

    # --- the loop -----------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start_time

    def lr_at(self, step: int) -> float:
        """The learning rate of update ``step`` (0-based)."""
        return optim.lr_at(step, self.cfg.lr, self.cfg.warmup, self.cfg.steps, self.cfg.floor_lr)

    def header(self) -> None:
        cfg, m = self.cfg, self.mcfg
        n_train, n_val = len(self.train_data), len(self.val_data)
        if cfg.tokenizer == "char":
            self.say(
                f"data: '{cfg.data}', {n_train + n_val:,} characters, vocabulary {self.tokenizer.vocab_size}; "
                f"{n_train:,} train / {n_val:,} val"
            )
        else:
            self.say(
                f"data: '{cfg.data}', {self.text_chars:,} characters; tokenizer {tokenizers.describe(self.tokenizer)}, "
                f"trained in {self.tokenizer_seconds:.1f} s: {n_train + n_val:,} tokens "
                f"({self.text_chars / (n_train + n_val):.2f} characters per token); {n_train:,} train / {n_val:,} val"
            )
            asked = cfg.vocab_size or tokenizers.DEFAULT_BPE_VOCAB
            if self.tokenizer.vocab_size < asked:
                self.say(
                    f"note: the text allows only {self.tokenizer.vocab_size - tokenizers.N_BYTES:,} merges "
                    f"(every chunk of it is then one token): vocabulary {self.tokenizer.vocab_size:,}, "
                    f"not --vocab_size {asked:,}"
                )
        self.say(
            f"model: {m.n_layers} layer(s) x {m.n_heads} head(s), dim {m.dim}, ctx {m.ctx}, mlp {m.mlp_hidden} "
            f"({m.activation}), dropout {m.dropout:g}: {model.count_params(m):,} parameters, {cfg.dtype}"
        )
        self.say(
            f"optimiser: AdamW lr {cfg.lr:g}, warmup {cfg.warmup}, cosine to {cfg.floor_lr:g} at step {cfg.steps}, "
            f"beta2 {cfg.beta2:g}, wd {cfg.wd:g}, clip {cfg.grad_clip:g}; batch {cfg.batch} x {cfg.ctx} tokens"
            + (f" x {cfg.accum} micro-batches = {cfg.batch * cfg.ctx * cfg.accum:,} tokens per step" if cfg.accum > 1 else "")
        )
        if self.group is not None:
            self.say(distributed.describe(self.group, cfg.batch, cfg.ctx, cfg.shards, m))
        notes = [f"resuming from step {self.resumed_from} of {LAST}"] if self.resumed_from is not None else []
        if self.stale_removed:
            notes.append(f"removed {self.stale_removed} temporary file(s) left by an interrupted checkpoint write")
        self.say(f"run folder: {self.out}" + (f" ({'; '.join(notes)})" if notes else ""))
        if self.changed_flags:
            self.say(
                f"note: --resume with flags that differ from the checkpoint's run ({', '.join(self.changed_flags)}): "
                "from here on the run follows the new values"
            )

    def run(self) -> TrainResult:
        try:
            self.header()
            if self.snap.step >= self.cfg.steps:
                self.say(f"nothing to do: the run is at step {self.snap.step}, --steps is {self.cfg.steps}")
            else:
                try:
                    # A diverging run overflows before its loss is seen to be NaN; the check below
                    # says so in one line, so NumPy's floating-point warnings would only be noise.
                    with np.errstate(all="ignore"):
                        self._loop()
                except KeyboardInterrupt as e:
                    raise self._stop(e) from None
                self._summary()
        finally:
            if self.metrics is not None:
                self.metrics.close()
        last, best = self.last_eval, self.snap.best_val
        return TrainResult(
            self.snap.step,
            None if last is None else last[0],
            None if last is None else last[1],
            best,
            self.snap.best_step,
            self.elapsed(),
            self.out,
            None if last is None else self.bits_per_char(last[1]),
            None if best is None else self.bits_per_char(best),
        )

    def _loop(self) -> None:
        cfg = self.cfg
        rng, mcfg, adamw, train_data = self.rng, self.mcfg, self.adamw, self.train_data
        dropout_rng = rng if mcfg.dropout > 0 else None
        clip = cfg.grad_clip if cfg.grad_clip > 0 else None
        gradients = parallel.step_loss_and_grads if self.group is None else self.group.step_loss_and_grads
        session_start, session_first = time.perf_counter(), self.snap.step
        interval_time, interval_steps = 0.0, 0
        for s in range(self.snap.step, cfg.steps):
            t0 = time.perf_counter()
            snap = self.snap
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
                raise TrainingDiverged(self._diverged(s + 1, f"loss {loss}, gradient norm {norm}"))
            lr = self.lr_at(s)
            params, opt = optim.flat_step(snap.params, grads, snap.opt, adamw, lr)
            done = s + 1
            log_due = cfg.log_every > 0 and (done % cfg.log_every == 0 or done == cfg.steps)
            loss_sum, loss_count = snap.loss_sum + loss, snap.loss_count + 1
            # One assignment publishes the step; a Ctrl-C saves self.committed, which only
            # moves on below, once the step's log, evaluation, checkpoints and sample are done.
            self.snap = _Snapshot(
                done,
                params,
                opt,
                rng.bit_generator.state,
                0.0 if log_due else loss_sum,
                0 if log_due else loss_count,
                norm,
                snap.best_val,
                snap.best_step,
            )
            interval_time += time.perf_counter() - t0
            interval_steps += 1
            if log_due:
                per_step = interval_time / interval_steps
                wall_per_step = (time.perf_counter() - session_start) / (done - session_first)
                self._log(done, loss_sum / loss_count, lr, norm, per_step, wall_per_step * (cfg.steps - done))
                interval_time, interval_steps = 0.0, 0
            if done == cfg.steps or (cfg.eval_every > 0 and done % cfg.eval_every == 0):
                self._evaluate_and_save(done, lr)
            if cfg.sample_len > 0 and (done == cfg.steps or (cfg.sample_every > 0 and done % cfg.sample_every == 0)):
                self._print_sample(done)
            self.committed = self.snap

    def _log(self, step: int, loss: float, lr: float, norm: float, per_step: float, eta: float) -> None:
        cfg = self.cfg
        tokens = cfg.batch * cfg.accum * cfg.ctx  # per optimizer step
        tokens_per_s = tokens / per_step if per_step > 0 else math.inf
        per_update = f"{tokens:,} tok/step | " if cfg.accum > 1 else ""
        self.say(
            f"step {step:>{len(str(cfg.steps))}}/{cfg.steps} | loss {loss:.4f} | lr {lr:.2e} | norm {norm:.2f} | "
            f"{per_update}{per_step * 1e3:.1f} ms/step | {tokens_per_s:,.0f} tok/s | ETA {_clock(eta)}"
        )
        self._record(
            kind="train",
            step=step,
            loss=loss,
            lr=lr,
            grad_norm=norm,
            ms_per_step=per_step * 1e3,
            tokens_per_s=tokens_per_s,
        )

    def _record(self, **fields: Any) -> None:
        if not self.writer:
            return
        assert self.metrics is not None
        fields["time"] = round(self.elapsed(), 3)
        try:
            self.metrics.write(json.dumps(fields) + "\n")
            self.metrics.flush()
        except OSError as e:
            raise TrainError(f"cannot write '{self.path(METRICS)}': {e.strerror or e}; {self._kept()}") from None

    def bits_per_char(self, val_loss: float) -> float:
        """``val_loss`` (mean nats per token) as bits per character of the validation text:
        the total nats (mean times its tokens) over its characters, over ln 2."""
        return val_loss * len(self.val_data) / self.val_chars / math.log(2)

    def _evaluate_and_save(self, step: int, lr: float) -> None:
        cfg, snap = self.cfg, self.snap
        seeds = [cfg.seed, EVAL_STREAM, step]
        args = (snap.params, self.mcfg)
        train_loss = evaluate(*args, self.train_data, cfg.batch, cfg.eval_iters, np.random.default_rng([*seeds, 0]))
        val_loss = evaluate(*args, self.val_data, cfg.batch, cfg.eval_iters, np.random.default_rng([*seeds, 1]))
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise TrainingDiverged(self._diverged(step, f"evaluation loss train {train_loss}, val {val_loss}"))
        self.last_eval = (train_loss, val_loss)
        val_bpc = self.bits_per_char(val_loss)
        self._record(kind="eval", step=step, train_loss=train_loss, val_loss=val_loss, val_bpc=val_bpc, lr=lr)
        improved = snap.best_val is None or val_loss < snap.best_val
        if improved:
            snap = self.snap = dataclasses.replace(snap, best_val=val_loss, best_step=step)
            self._save(BEST, snap, with_optimizer=False)
        self._save(LAST, snap, with_optimizer=True)
        note = f"new best, saved {BEST} and {LAST}" if improved else f"best {snap.best_val:.4f} at step {snap.best_step}, saved {LAST}"
        self.say(
            f"step {step:>{len(str(cfg.steps))}}/{cfg.steps} | eval: train {train_loss:.4f} | val {val_loss:.4f} "
            f"({val_bpc:.4f} bits/char) | {note}"
        )

    def _print_sample(self, step: int) -> None:
        prompt = generate.default_prompt(self.tokenizer)
        text = generate.sample_text(
            self.snap.params,
            self.mcfg,
            self.tokenizer,
            prompt,
            self.cfg.sample_len,
            rng=generate.sampling_rng(self.cfg.seed, step),
            sampling=self.cfg.sampling,
        )[0]
        self.say(f"----- sample at step {step} -----\n{text[len(prompt):]}\n-----")

    def _summary(self) -> None:
        snap = self.snap
        best = (
            "none"
            if snap.best_val is None
            else f"{snap.best_val:.4f} ({self.bits_per_char(snap.best_val):.4f} bits/char) at step {snap.best_step}"
        )
        self.say(
            f"done: step {self.snap.step}/{self.cfg.steps} in {_clock(self.elapsed())}; best val loss {best}; "
            f"checkpoints in {self.out}"
        )
        command = runtime.command()
        self.say(f"sample from it: {command} sample --checkpoint {self.path(BEST)} --prompt \"...\"")
        self.say(f"draw its loss curves: {command} plot {self.out}")

    # --- save ---------------------------------------------------------------------------------

    def _save(self, name: str, snap: _Snapshot, *, with_optimizer: bool) -> str:
        if not self.writer:
            return self.path(name)
        header = checkpoint.make_header(
            model_config=asdict(self.mcfg),
            tokenizer=self.tokenizer,
            step=snap.step,
            train_config=asdict(self.cfg),
            rng=checkpoint.restore_rng(snap.rng_state),
            best_val_loss=snap.best_val,
            extra={
                "loss_sum": snap.loss_sum,
                "loss_count": snap.loss_count,
                "grad_norm": snap.grad_norm if math.isfinite(snap.grad_norm) else None,
                "best_step": snap.best_step,
                "elapsed": self.elapsed(),
            },
        )
        path = self.path(name)
        try:
            checkpoint.save_checkpoint(path, params=snap.params, header=header, opt_state=snap.opt if with_optimizer else None)
        except OSError as e:  # a full disk, a folder removed under the run: the old file is intact
            raise TrainError(f"cannot write checkpoint '{path}': {e.strerror or e}; {self._kept()}") from None
        if name == LAST:
            self.saved_step = snap.step
        return path

    def _stop(self, signal: KeyboardInterrupt) -> runtime.Stopped:
        """Save the last committed step on Ctrl-C or SIGTERM; the exception carries the one line to print."""
        terminated = isinstance(signal, runtime.Terminated)
        what = f"{'terminated (SIGTERM)' if terminated else 'interrupted'} at step {self.committed.step}/{self.cfg.steps}"
        snap = self.committed
        if not _finite(snap.params):  # pragma: no cover - an update overflowed just before Ctrl-C
            return runtime.Stopped(f"{what}: parameters are not finite, nothing saved; {self._kept()}", terminated=terminated)
        path = self._save(LAST, snap, with_optimizer=True)
        flags = ([] if self.cfg.resume else ["--resume"]) + ([] if self.given_out else [f"--out {self.out}"])
        how = f" and {' '.join(flags)}" if flags else ""
        if self.cfg.overwrite:
            how += " in place of --overwrite"
        return runtime.Stopped(f"{what}: saved {path}; continue with the same command{how}", terminated=terminated)

    def _kept(self) -> str:
        if self.saved_step is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint is '{self.path(LAST)}' (step {self.saved_step})"

    def _diverged(self, step: int, what: str) -> str:
        return (
            f"training diverged at step {step}/{self.cfg.steps} ({what}); stopped without saving, {self._kept()}; "
            "try a lower --lr or a --grad_clip"
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
    run = _Run(cfg, sys.stdout if stdout is None else stdout, group)
    run.prepare()  # under mpiexec a refused start is refused on every rank (distributed.Group)
    if group is None:
        return run.run()
    # Past the start, every rank stops together on a signal or a diverged loss; any other error
    # is this rank's alone (rank 0's disk is full) and must not leave the others waiting.
    with distributed.abort_alone(group, (KeyboardInterrupt, TrainingDiverged)):
        return run.run()
