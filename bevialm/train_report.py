"""The trainer's console lines: what a run is about to do, each log and evaluation line, each
sample, and how it ended. Under mpiexec only rank 0 prints (``writer``)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import IO

from bevialm import distributed, model, runtime
from bevialm import tokenizer as tokenizers
from bevialm.runs import BEST, LAST
from bevialm.train_config import TrainConfig
from bevialm.train_data import RunData
from bevialm.train_state import Snapshot


def clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


@dataclass(frozen=True)
class StartNotes:
    """What the run folder's start found: the step a ``--resume`` continues from, temporary files
    removed, and the trajectory flags that differ from the checkpoint's run."""

    resumed_from: int | None = None
    stale_removed: int = 0
    changed_flags: tuple[str, ...] = ()


@dataclass
class Reporter:
    stdout: IO[str]
    writer: bool = True

    def say(self, line: str) -> None:
        if self.writer:
            print(line, file=self.stdout, flush=True)

    def header(self, cfg: TrainConfig, mcfg: model.ModelConfig, data: RunData, group: distributed.Group | None) -> None:
        """The data, the model and the optimiser, as the run will use them."""
        self._data(cfg, data)
        m = mcfg
        self.say(
            f"model: {m.n_layers} layer(s) x {m.n_heads} head(s), dim {m.dim}, ctx {m.ctx}, mlp {m.mlp_hidden} "
            f"({m.activation}), dropout {m.dropout:g}: {model.count_params(m):,} parameters, {cfg.dtype}"
        )
        self.say(
            f"optimiser: AdamW lr {cfg.lr:g}, warmup {cfg.warmup}, cosine to {cfg.floor_lr:g} at step {cfg.steps}, "
            f"beta2 {cfg.beta2:g}, wd {cfg.wd:g}, clip {cfg.grad_clip:g}; batch {cfg.batch} x {cfg.ctx} tokens"
            + (f" x {cfg.accum} micro-batches = {cfg.batch * cfg.ctx * cfg.accum:,} tokens per step" if cfg.accum > 1 else "")
        )
        if group is not None:
            self.say(distributed.describe(group, cfg.batch, cfg.ctx, cfg.shards, m))

    def _data(self, cfg: TrainConfig, data: RunData) -> None:
        n_train, n_val = len(data.train), len(data.val)
        vocab = data.tokenizer.vocab_size
        if cfg.tokenizer == "char":
            self.say(f"data: '{cfg.data}', {n_train + n_val:,} characters, vocabulary {vocab}; {n_train:,} train / {n_val:,} val")
            return
        self.say(
            f"data: '{cfg.data}', {data.text_chars:,} characters; tokenizer {tokenizers.describe(data.tokenizer)}, "
            + (f"from '{cfg.init_from}'" if cfg.init_from else f"trained in {data.tokenizer_seconds:.1f} s")
            + f": {n_train + n_val:,} tokens "
            f"({data.text_chars / (n_train + n_val):.2f} characters per token); {n_train:,} train / {n_val:,} val"
        )
        asked = cfg.vocab_size or tokenizers.DEFAULT_BPE_VOCAB
        if vocab < asked and cfg.init_from is None:
            self.say(
                f"note: the text allows only {vocab - tokenizers.N_BYTES:,} merges "
                f"(every chunk of it is then one token): vocabulary {vocab:,}, not --vocab_size {asked:,}"
            )

    def start(self, cfg: TrainConfig, out: str, data: RunData, notes: StartNotes) -> None:
        """The run folder, and what the start changed or found there."""
        found = [f"resuming from step {notes.resumed_from} of {LAST}"] if notes.resumed_from is not None else []
        if notes.stale_removed:
            found.append(f"removed {notes.stale_removed} temporary file(s) left by an interrupted checkpoint write")
        self.say(f"run folder: {out}" + (f" ({'; '.join(found)})" if found else ""))
        if data.init_note is not None:
            self.say(data.init_note)
        if cfg.init_from is not None and notes.resumed_from is None:
            assert data.init is not None
            self.say(f"fine-tuning: weights from '{cfg.init_from}' (its step {data.init.step}), fresh optimizer, step 0")
        if notes.changed_flags:
            self.say(
                f"note: --resume with flags that differ from the checkpoint's run ({', '.join(notes.changed_flags)}): "
                "from here on the run follows the new values"
            )

    def step(self, cfg: TrainConfig, step: int, loss: float, lr: float, norm: float, per_step: float, eta: float) -> float:
        """The log line of ``step``; returns the tokens per second it prints."""
        tokens = cfg.batch * cfg.accum * cfg.ctx  # per optimizer step
        tokens_per_s = tokens / per_step if per_step > 0 else math.inf
        per_update = f"{tokens:,} tok/step | " if cfg.accum > 1 else ""
        self.say(
            f"step {step:>{len(str(cfg.steps))}}/{cfg.steps} | loss {loss:.4f} | lr {lr:.2e} | norm {norm:.2f} | "
            f"{per_update}{per_step * 1e3:.1f} ms/step | {tokens_per_s:,.0f} tok/s | ETA {clock(eta)}"
        )
        return tokens_per_s

    def evaluation(self, cfg: TrainConfig, snap: Snapshot, losses: tuple[float, float], val_bpc: float, improved: bool) -> None:
        note = (
            f"new best, saved {BEST} and {LAST}"
            if improved
            else f"best {snap.best_val:.4f} at step {snap.best_step}, saved {LAST}"
        )
        self.say(
            f"step {snap.step:>{len(str(cfg.steps))}}/{cfg.steps} | eval: train {losses[0]:.4f} | val {losses[1]:.4f} "
            f"({val_bpc:.4f} bits/char) | {note}"
        )

    def sample(self, step: int, text: str) -> None:
        self.say(f"----- sample at step {step} -----\n{text}\n-----")

    def summary(self, cfg: TrainConfig, snap: Snapshot, data: RunData, elapsed: float, out: str) -> None:
        best = (
            "none"
            if snap.best_val is None
            else f"{snap.best_val:.4f} ({data.bits_per_char(snap.best_val):.4f} bits/char) at step {snap.best_step}"
        )
        self.say(f"done: step {snap.step}/{cfg.steps} in {clock(elapsed)}; best val loss {best}; checkpoints in {out}")
        command = runtime.command()
        self.say(f'sample from it: {command} sample --checkpoint {os.path.join(out, BEST)} --prompt "..."')
        self.say(f"draw its loss curves: {command} plot {out}")
