"""What the runs view shows: each run's summary, its metrics from a byte offset, its samples.

The page polls: :func:`read_metrics` returns the complete lines written since the byte
``offset`` the page already has (a line still being written waits for the next poll), so
a long run costs each poll only what is new. A file shorter than the offset was rewritten
(``--resume`` keeps only the lines up to its checkpoint): the answer starts again from 0
and says ``reset``. A line that is not a good record (:func:`bevialm.metrics.parse_record`, the
rule ``bevialm plot`` reads by too) is skipped and reported, never guessed at; numbers
that JSON cannot carry (NaN, infinity) become ``null``.

Samples: the trainer prints its samples but does not store them, so the board draws,
from each new ``last.npz``, the sample the trainer prints at that step: the same prompt,
the same random stream (``sampling_rng(seed, step)``) and sampling settings, from the
same parameters; its first :data:`SAMPLE_LEN` tokens at most (each token is drawn after
the ones before it, so a shorter sample is the start of the longer one). It keeps the
latest few per run while it serves.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import OrderedDict
from typing import Any

from bevialm import checkpoint, generate, metrics
from bevialm import tokenizer as tokenizers
from bevialm.board import paths
from bevialm.data import DataError

MAX_READ = 4 << 20  # bytes of metrics per poll; the page asks again for the rest
SAMPLES_KEPT = 20
SAMPLE_LEN = 200  # tokens at most: the start of a longer sample (generation is token by token, the same)
_FIELDS = ("step", "loss", "lr", "train_loss", "val_loss", "val_bpc", "ms_per_step", "tokens_per_s", "time")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _for_page(record: dict[str, Any]) -> dict[str, Any]:
    """A good record (:func:`bevialm.metrics.parse_record`) with only the fields the page draws,
    as numbers JSON can carry (non-finite ones ``None``)."""
    return {"kind": record["kind"]} | {key: _number(record[key]) for key in _FIELDS if key in record}


def _another_kind(text: str) -> bool:
    """Whether ``text`` is a JSON object with a ``kind`` of its own: a record for someone else, not a problem."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False
    return isinstance(raw, dict) and isinstance(raw.get("kind"), str)


def read_metrics(path: str, offset: int) -> dict[str, Any]:
    """The records of ``path`` after byte ``offset``: ``records``, the new ``offset``,
    ``reset`` (the file was rewritten: read from 0), ``more`` (call again) and ``problems``."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return {"records": [], "offset": 0, "reset": offset > 0, "more": False, "problems": [], "missing": True}
    reset = offset > size or offset < 0
    start = 0 if reset else offset
    with open(path, "rb") as f:
        f.seek(start)
        chunk = f.read(MAX_READ)
    end = chunk.rfind(b"\n") + 1  # only whole lines: the last may still be being written
    records, problems = [], []
    position = start
    for line in chunk[:end].splitlines(keepends=True):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text = ""  # not a record, and reported as one
        record = metrics.parse_record(text)
        if record is not None:
            records.append(_for_page(record))
        elif line.strip() and not _another_kind(text):
            problems.append(f"{os.path.basename(path)}: the line at byte {position} is not a metrics record (skipped)")
        position += len(line)
    if end == 0 and len(chunk) == MAX_READ:
        problems.append(f"{os.path.basename(path)}: a line at byte {start} is longer than {MAX_READ} bytes (not read)")
        end = len(chunk)
    more = start + end < size and len(chunk) == MAX_READ
    return {"records": records, "offset": start + end, "reset": reset, "more": more, "problems": problems[:20]}


class HeaderCache:
    """Checkpoints loaded once per version of their file (path, size, modification time)."""

    def __init__(self, size: int = 16) -> None:
        self._items: OrderedDict[tuple[str, int, int], checkpoint.Checkpoint] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, path: str) -> checkpoint.Checkpoint:
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        ckpt = checkpoint.load_checkpoint(path)
        with self._lock:
            self._items[key] = ckpt
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return ckpt


def _from_checkpoint(ckpt: checkpoint.Checkpoint) -> dict[str, Any]:
    tok = ckpt.tokenizer
    train = ckpt.train_config
    best = ckpt.best_val_loss
    return {
        "tokenizer": tokenizers.describe(tok),
        "tokenizer_kind": "bpe" if isinstance(tok, tokenizers.BPETokenizer) else "char",
        "model": ckpt.model_config,
        "config": {k: train.get(k) for k in ("data", "steps", "batch", "ctx", "lr", "warmup", "seed", "dropout") if k in train},
        "tokens_per_step": int(train.get("batch", 0)) * int(train.get("ctx", 0)),
        "checkpoint_step": ckpt.step,
        "best_val_loss": best,
        "best_step": ckpt.extra.get("best_step"),
    }


def summary(root: str, name: str, cache: HeaderCache) -> dict[str, Any]:
    """What the runs table shows of run ``name``; ``error`` says what could not be read."""
    folder = paths.run_folder(root, name)
    info: dict[str, Any] = {"name": name, "checkpoints": paths.checkpoints(root, folder), "errors": []}
    metrics = os.path.join(folder, paths.METRICS)
    info["updated"] = os.path.getmtime(metrics) if os.path.isfile(metrics) else None
    for ckpt_name in ("last.npz", "best.npz"):
        if ckpt_name in info["checkpoints"]:
            try:
                info.update(_from_checkpoint(cache.get(paths.run_file(root, name, ckpt_name))))
                break
            except (ValueError, OSError, KeyError, TypeError) as e:
                info["errors"].append(f"{ckpt_name}: {_one_line(e)}")
    return info


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


class Samples:
    """The samples of each run's ``last.npz`` versions seen so far, newest last."""

    def __init__(self, cache: HeaderCache) -> None:
        self._cache = cache
        self._seen: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def of(self, root: str, name: str) -> list[dict[str, Any]]:
        path = paths.run_file(root, name, "last.npz")
        ckpt = self._cache.get(path)
        with self._lock:
            kept = self._seen.setdefault(path, [])
            if kept and kept[-1]["step"] == ckpt.step:
                return list(kept)
        sample = _sample(ckpt, path)
        with self._lock:
            if not kept or kept[-1]["step"] != ckpt.step:
                kept.append(sample)
                del kept[:-SAMPLES_KEPT]
            return list(kept)


def _sample(ckpt: checkpoint.Checkpoint, path: str) -> dict[str, Any]:
    """The sample training prints at the checkpoint's step (see the module docstring)."""
    train = ckpt.train_config
    try:
        loaded = generate.load_model(path)
        sampling = generate.SamplingConfig.from_flags(
            float(train.get("temperature", 1.0)), int(train.get("top_k", 0)), float(train.get("top_p", 1.0))
        )
        length = min(int(train.get("sample_len", 400)) or SAMPLE_LEN, SAMPLE_LEN)
        prompt = generate.default_prompt(loaded.tokenizer)
        text = generate.sample_text(
            loaded.params,
            loaded.cfg,
            loaded.tokenizer,
            prompt,
            length,
            rng=generate.sampling_rng(int(train.get("seed", 42)), ckpt.step),
            sampling=sampling,
        )[0]
    except (ValueError, DataError, TypeError) as e:
        return {"step": ckpt.step, "error": _one_line(e)}
    return {"step": ckpt.step, "text": text[len(prompt) :]}
