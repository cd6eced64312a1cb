"""What a training run is given (:class:`TrainConfig`, the command line's flags, checked on
construction) and how it ended (:class:`TrainResult`); ``docs/training.md`` lists the flags."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from bevialm import generate, model, parallel
from bevialm import tokenizer as tokenizers
from bevialm.data import DataError
from bevialm.validate import require_positive

LAYER = "train"
DTYPES = ("float32", "float64")
_MODEL_FLAGS = {"n_layers": "layers", "n_heads": "heads"}  # ModelConfig's field: the flag that sets it


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
    init_from: str | None = None

    def __post_init__(self) -> None:
        self._check_model()
        require_positive(
            LAYER, batch=self.batch, shards=self.shards, accum=self.accum, steps=self.steps, eval_iters=self.eval_iters
        )
        for key in ("warmup", "log_every", "eval_every", "sample_every", "sample_len", "top_k"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{LAYER}: {key} must be an integer >= 0, got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{LAYER}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"{LAYER}: lr must be a positive number, got {self.lr!r}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"{LAYER}: min_lr ({self.min_lr}) must lie between 0 and lr ({self.lr})")
        for key, low, high in (("beta2", 0, 1), ("val_fraction", 0, 1)):
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
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise ValueError(f"{LAYER}: init_from must be a checkpoint path or None, got {self.init_from!r}")
        if self.resume and self.overwrite:
            raise ValueError(
                f"{LAYER}: --resume continues the run in --out and --overwrite deletes it: pass only one of them"
            )

    def _check_model(self) -> None:
        """The model's fields are checked by the model's own config, its messages worded in the flags' names."""
        try:
            self.model_config(vocab_size=1)  # the vocabulary comes from the data, later
        except ValueError as e:
            message = str(e).removeprefix(f"{model.LAYER}: ")
            for field, flag in _MODEL_FLAGS.items():
                message = re.sub(rf"\b{field}\b", flag, message)
            raise ValueError(f"{LAYER}: {message}") from None

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
            activation=self.activation,  # type: ignore[arg-type]  # ModelConfig checks it
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
