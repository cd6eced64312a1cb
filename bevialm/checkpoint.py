"""Checkpoints: one portable ``.npz`` file, no pickle, written atomically.

The file is a NumPy ``.npz`` (a zip of ``.npy`` arrays, readable from any
language with a zip and ``.npy`` reader) holding

- ``param/<name>``: every parameter under its hierarchical name (``param/block0.attn.q.W``);
- ``adam_m/<name>``, ``adam_v/<name>``: AdamW's moments, when an optimizer state is saved;
- ``header``: a UTF-8 JSON object stored as a 1-D ``uint8`` array.

The header carries the format name and version, a manifest of the arrays
(name, shape, dtype), the optimizer's step count, and the trainer's fields made
by :func:`make_header`: the model config, the tokenizer (its JSON form), the step, the training
config, the RNG state (``Generator.bit_generator.state``), the best validation
loss and an ``extra`` object. Arrays keep their dtype, so a round trip is bit-exact.

:func:`save_checkpoint` writes a temporary file in the target directory,
flushes and fsyncs it, then renames it over ``path`` (``os.replace`` is atomic):
``path`` always holds either the old checkpoint or the complete new one.
:func:`load_checkpoint` never unpickles and checks everything: every member's
``.npy`` header against the JSON header's manifest *before* any array data is
decompressed (a small archive declaring a huge array is refused having read
almost nothing), the total against the memory there is, then the data with
its CRCs; any problem is one line in a :class:`CheckpointError`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from bevialm import __version__, memory
from bevialm import checkpoint_archive as archive
from bevialm import tokenizer as tokenizers
from bevialm.checkpoint_archive import CheckpointError as CheckpointError
from bevialm.data import DataError, read_bytes
from bevialm.optim import AdamWState
from bevialm.types import Array, Params

FORMAT = "bevialm-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 1 stored a character vocabulary as ``"vocab"``: a list of characters; version 2
stores any tokenizer as ``"tokenizer"``. Both load."""

PARAM = "param/"
ADAM_M = "adam_m/"
ADAM_V = "adam_v/"
HEADER = "header"

TRAINER_KEYS = ("model_config", "tokenizer", "step", "train_config", "rng_state", "best_val_loss", "extra")
"""The header fields the trainer supplies, all made by :func:`make_header`."""

WRITER_KEYS = ("format", "version", "bevialm_version", "params", "optimizer")
"""The header fields :func:`save_checkpoint` adds itself."""

_ZIP_MAGIC = b"PK\x03\x04"
_MAX_HEADER_BYTES = 64 << 20  # the JSON header: a vocabulary and a config, never near this


SEEN_TOKENS = "seen_tokens"
"""The ``extra`` field naming the tokens of the run's data file: a bit per token, hex
(:func:`pack_seen`). Checkpoints written before it have none; they still load."""


def pack_seen(seen: Array) -> str:
    """The token mask ``seen`` as :data:`SEEN_TOKENS` stores it: its bits, 8 to a byte, in hex."""
    return np.packbits(seen).tobytes().hex()


def unpack_seen(field: object, vocab_size: int) -> Array:
    """The mask :func:`pack_seen` wrote for ``vocab_size`` tokens; ValueError for anything else."""
    if not isinstance(field, str) or len(field) != 2 * -(-vocab_size // 8):
        raise ValueError(f"'{SEEN_TOKENS}' must be {2 * -(-vocab_size // 8)} hex digits for {vocab_size} tokens")
    try:
        raw = bytes.fromhex(field)
    except ValueError:
        raise ValueError(f"'{SEEN_TOKENS}' must be hex digits") from None
    mask: Array = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:vocab_size].astype(bool)
    if not mask.any():
        raise ValueError(f"'{SEEN_TOKENS}' names no token")
    return mask


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: parameters, the full header and the optimizer state (or None).

    The properties read the trainer's header fields, which loading has validated.
    """

    params: dict[str, Array]
    header: dict[str, Any]
    opt_state: AdamWState | None

    @property
    def step(self) -> int:
        """Number of completed training steps."""
        return int(self.header["step"])

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        """The tokenizer the model was trained with (loading has checked it)."""
        return tokenizers.from_json(self.header["tokenizer"])

    @property
    def model_config(self) -> dict[str, Any]:
        return dict(self.header["model_config"])

    @property
    def train_config(self) -> dict[str, Any]:
        return dict(self.header["train_config"])

    @property
    def rng_state(self) -> dict[str, Any] | None:
        state = self.header["rng_state"]
        return None if state is None else dict(state)

    @property
    def best_val_loss(self) -> float | None:
        loss = self.header["best_val_loss"]
        return None if loss is None else float(loss)

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.header["extra"])


def make_header(
    *,
    model_config: Mapping[str, Any],
    tokenizer: tokenizers.Tokenizer,
    step: int,
    train_config: Mapping[str, Any] | None = None,
    rng: np.random.Generator | None = None,
    best_val_loss: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The trainer's header fields, for :func:`save_checkpoint`.

    ``model_config`` and ``train_config`` are JSON-able dicts (``dataclasses.asdict``
    of the configs); ``rng``'s state is recorded so :func:`restore_rng` resumes
    its stream exactly; ``best_val_loss`` is None until a validation loss exists.
    """
    return {
        "model_config": dict(model_config),
        "tokenizer": tokenizer.to_json(),
        "step": int(step),
        "train_config": dict(train_config or {}),
        "rng_state": None if rng is None else rng.bit_generator.state,
        "best_val_loss": None if best_val_loss is None else float(best_val_loss),
        "extra": dict(extra or {}),
    }


def _header_problem(header: Mapping[str, Any]) -> str | None:
    """What is wrong with the trainer's fields of ``header``, or None."""
    for key in TRAINER_KEYS:
        if key not in header:
            return f"header has no '{key}' field"
    for key in ("model_config", "train_config", "extra"):
        if not isinstance(header[key], dict):
            return f"header field '{key}' must be an object, got {type(header[key]).__name__}"
    try:
        tokenizers.from_json(header["tokenizer"])
    except DataError as e:
        return f"header field 'tokenizer' is invalid ({e})"
    step = header["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"header field 'step' must be an integer >= 0, got {step!r}"
    if header["rng_state"] is not None and not isinstance(header["rng_state"], dict):
        return "header field 'rng_state' must be an object or null"
    loss = header["best_val_loss"]
    if loss is not None and (
        isinstance(loss, bool) or not isinstance(loss, int | float) or not math.isfinite(loss)
    ):
        return f"header field 'best_val_loss' must be a finite number or null, got {loss!r}"
    return None


def _manifest(params: Params) -> dict[str, dict[str, Any]]:
    return {k: {"shape": list(p.shape), "dtype": p.dtype.str} for k, p in params.items()}


def _arrays_to_save(
    params: Params, header: Mapping[str, Any], opt_state: AdamWState | None
) -> dict[str, Array]:
    if not params:
        raise ValueError("save_checkpoint: no parameters to save")
    for k, p in params.items():
        if not k or not isinstance(p, np.ndarray) or p.dtype.hasobject:
            raise ValueError(f"save_checkpoint: parameter {k!r} must be a non-empty name for a numeric array")
    reserved = sorted(set(header) & set(WRITER_KEYS))
    if reserved:
        raise ValueError(f"save_checkpoint: header fields {reserved} are written by save_checkpoint itself")
    problem = _header_problem(header)
    if problem:
        raise ValueError(f"save_checkpoint: {problem} (build it with make_header)")
    full = dict(header)
    full.update(format=FORMAT, version=VERSION, bevialm_version=__version__, params=_manifest(params))
    full["optimizer"] = None if opt_state is None else {"name": "adamw", "t": opt_state.t}
    try:
        text = json.dumps(full, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"save_checkpoint: header is not plain JSON ({e})") from None
    arrays: dict[str, Array] = {HEADER: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}
    arrays.update({PARAM + k: p for k, p in params.items()})
    if opt_state is not None:
        for which, moments in (("m", opt_state.m), ("v", opt_state.v)):
            if moments.keys() != params.keys():
                raise ValueError(f"save_checkpoint: optimizer moments {which} are not keyed like the params")
            for k, p in params.items():
                if moments[k].shape != p.shape or moments[k].dtype != p.dtype:
                    raise ValueError(
                        f"save_checkpoint: optimizer moment {which} of '{k}' differs from the parameter"
                    )
        arrays.update({ADAM_M + k: a for k, a in opt_state.m.items()})
        arrays.update({ADAM_V + k: a for k, a in opt_state.v.items()})
    return arrays


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _write_archive(f: IO[bytes], arrays: Mapping[str, Array]) -> None:
    """The ``.npz`` layout ``np.savez`` writes (uncompressed ``<name>.npy`` members), with
    ``allow_pickle=False`` passed where every NumPy version takes it: ``np.savez`` itself
    stores a keyword it does not know (NumPy < 2.1) as one more array."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, a in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(a), allow_pickle=False)


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    params: Params,
    header: Mapping[str, Any],
    opt_state: AdamWState | None = None,
) -> None:
    """Write ``params``, ``header`` (from :func:`make_header`) and ``opt_state`` to ``path`` atomically.

    ``path`` is used exactly as given (no ``.npz`` is appended). A failure at any
    point, Ctrl-C included, leaves the previous file at ``path`` untouched and
    removes the temporary file.
    """
    target = os.fspath(path)
    arrays = _arrays_to_save(params, header, opt_state)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_archive(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _check_header_member(name: str, members: Mapping[str, zipfile.ZipInfo], layouts: Mapping[str, archive.Layout]) -> None:
    if HEADER not in members:
        raise CheckpointError(f"checkpoint '{name}' has no header (not a BeviaLLM checkpoint)")
    layout = layouts[HEADER]
    if layout.dtype != np.uint8 or len(layout.shape) != 1:
        raise CheckpointError(
            f"checkpoint '{name}': header must be a 1-D uint8 array, got {layout.dtype}{layout.shape}"
        )
    if layout.nbytes > _MAX_HEADER_BYTES:
        raise CheckpointError(
            f"checkpoint '{name}': header is {layout.nbytes:,} bytes, more than the {_MAX_HEADER_BYTES:,} allowed"
        )


def _parse_header(name: str, raw: Array) -> dict[str, Any]:
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint '{name}': header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"checkpoint '{name}': header must be a JSON object, got {type(header).__name__}"
        )
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint '{name}' has format {header.get('format')!r}, expected {FORMAT!r}")
    if header.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint '{name}' has format version {header.get('version')!r}; "
            f"this BeviaLLM reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    if header["version"] == 1 and "vocab" in header:  # a character vocabulary, before tokenizers
        header["tokenizer"] = {"type": "char", "chars": header.pop("vocab")}
    problem = _header_problem(header)
    if problem:
        raise CheckpointError(f"checkpoint '{name}': {problem}")
    return header


def _check_against_header(name: str, header: Mapping[str, Any], layouts: Mapping[str, archive.Layout]) -> None:
    """Every array is one the header lists, with the shape and dtype it lists; every listed one is there.

    Runs on the ``.npy`` headers alone, before any array's data is decompressed: an archive
    whose members declare more than its header (a zip bomb) is refused here.
    """
    manifest = header.get("params")
    if not isinstance(manifest, dict) or not manifest:
        raise CheckpointError(f"checkpoint '{name}': header lists no parameters")
    optimizer = header.get("optimizer")
    if optimizer is not None:
        t = optimizer.get("t") if isinstance(optimizer, dict) else None
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise CheckpointError(f"checkpoint '{name}': header field 'optimizer' must hold a step count t >= 0")
    for key, layout in layouts.items():
        if key == HEADER:
            continue
        prefix = next((p for p in (PARAM, ADAM_M, ADAM_V) if key.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(f"checkpoint '{name}' holds an unexpected array '{key}'")
        k, label = key[len(prefix) :], prefix.rstrip("/")
        if prefix == PARAM and k not in manifest:
            raise CheckpointError(f"checkpoint '{name}' holds parameter '{k}' not listed in its header")
        if prefix != PARAM and optimizer is None:
            raise CheckpointError(f"checkpoint '{name}' holds {label} arrays but its header has no optimizer")
        if prefix != PARAM and k not in manifest:
            raise CheckpointError(f"checkpoint '{name}' has an {label} moment for unknown parameter '{k}'")
        spec = manifest[k]
        if isinstance(spec, dict) and spec.get("shape") == list(layout.shape) and spec.get("dtype") == layout.dtype.str:
            continue
        if prefix == PARAM or not isinstance(spec, dict):
            raise CheckpointError(f"checkpoint '{name}': parameter '{k}' is {layout.describe()}, its header says {spec}")
        want = f"{np.dtype(spec.get('dtype'))}{tuple(spec.get('shape') or ())}" if _is_dtype(spec.get("dtype")) else str(spec)
        raise CheckpointError(
            f"checkpoint '{name}': {label} moment of '{k}' is {layout.dtype}{layout.shape}, the parameter is {want}"
        )
    for k in manifest:
        if PARAM + k not in layouts:
            raise CheckpointError(f"checkpoint '{name}' is missing parameter '{k}' listed in its header")
        for prefix in (ADAM_M, ADAM_V) if optimizer is not None else ():
            if prefix + k not in layouts:
                raise CheckpointError(f"checkpoint '{name}' has no {prefix.rstrip('/')} moment for parameter '{k}'")


def _is_dtype(text: Any) -> bool:
    try:
        np.dtype(text)
    except (TypeError, ValueError):
        return False
    return isinstance(text, str)


def _read_checkpoint(name: str) -> tuple[dict[str, Any], dict[str, Array]]:
    """The header and every array: declared sizes checked against the header first, then
    checked against the memory there is, then read (eagerly, so that every CRC is checked now)."""
    magic = read_bytes(name, "checkpoint", CheckpointError, len(_ZIP_MAGIC))
    if not magic:
        raise CheckpointError(f"checkpoint '{name}' is empty")
    if magic != _ZIP_MAGIC:
        raise CheckpointError(f"checkpoint '{name}' is not a BeviaLLM checkpoint (not an .npz/zip file)")
    try:
        with zipfile.ZipFile(name) as zf:
            members = archive.members(name, zf)
            layouts = {key: archive.layout(name, zf, key, info) for key, info in members.items()}
            _check_header_member(name, members, layouts)
            header = _parse_header(name, archive.read_data(zf, members[HEADER], layouts[HEADER]))
            _check_against_header(name, header, layouts)
            total = sum(layout.nbytes for layout in layouts.values())
            memory.require(
                total,
                f"loading checkpoint '{name}'",
                f"{len(layouts)} arrays",
                "free some memory or use a machine with more",
            )
            return header, {key: archive.read_data(zf, info, layouts[key]) for key, info in members.items() if key != HEADER}
    except (CheckpointError, memory.MemoryLimitError):
        raise
    except Exception as e:  # zipfile, zlib, npy-format and I/O errors all mean "damaged"
        detail = " ".join(str(e).split()) or type(e).__name__
        raise CheckpointError(f"checkpoint '{name}' is corrupt or truncated ({detail})") from None


def _split_arrays(header: Mapping[str, Any], arrays: Mapping[str, Array]) -> tuple[dict[str, Array], AdamWState | None]:
    """Parameters and the optimizer state (both already checked against the header)."""
    groups: dict[str, dict[str, Array]] = {PARAM: {}, ADAM_M: {}, ADAM_V: {}}
    for key, a in arrays.items():
        prefix = next(p for p in groups if key.startswith(p))
        groups[prefix][key[len(prefix) :]] = a
    params = {k: groups[PARAM][k] for k in header["params"]}
    optimizer = header.get("optimizer")
    if optimizer is None:
        return params, None
    return params, AdamWState(t=optimizer["t"], m=groups[ADAM_M], v=groups[ADAM_V])


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and validate the checkpoint at ``path`` (never unpickling anything).

    Raises :class:`CheckpointError` with one line for a missing file, one that is
    not a regular file, not a zip, corrupt or truncated, a missing or invalid
    header, an unknown format or version, and arrays that do not match the
    header's manifest (checked on their ``.npy`` headers, before their data is
    decompressed); :class:`bevialm.memory.MemoryLimitError` when the arrays it
    declares would not fit in memory.
    """
    name = os.fspath(path)
    header, arrays = _read_checkpoint(name)
    params, opt_state = _split_arrays(header, arrays)
    return Checkpoint(params=params, header=header, opt_state=opt_state)


def restore_rng(state: Mapping[str, Any]) -> np.random.Generator:
    """A PCG64 ``Generator`` in exactly the recorded ``bit_generator.state``: it continues the stream."""
    if not isinstance(state, Mapping) or state.get("bit_generator") != "PCG64":
        kind = state.get("bit_generator") if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(f"RNG state must be a PCG64 bit_generator.state, got {kind!r}")
    bits = np.random.PCG64()
    recorded: Any = dict(state)  # JSON gave plain dicts; PCG64 checks the layout itself
    try:
        bits.state = recorded
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"RNG state is invalid ({e})") from None
    return np.random.Generator(bits)


def require_finite(ckpt: Checkpoint, name: str) -> None:
    """Raise a one-line :class:`CheckpointError` when a parameter holds NaN or infinity
    (a run that diverged): such a model samples blank text and cannot train on."""
    for k, p in ckpt.params.items():
        if p.dtype.kind == "f" and not np.isfinite(p).all():
            raise CheckpointError(
                f"checkpoint '{name}': parameter '{k}' holds NaN or infinite values (the run diverged); "
                "use an earlier checkpoint"
            )


def validate_against(ckpt: Checkpoint, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise a one-line :class:`CheckpointError` naming the first parameter whose name or
    shape differs from ``expected`` (the model's ``{name: shape}``), in ``expected``'s
    order, then any parameter the model does not have."""
    for k, shape in expected.items():
        if k not in ckpt.params:
            raise CheckpointError(
                f"checkpoint has no parameter '{k}' (the model expects shape {tuple(shape)})"
            )
        got = ckpt.params[k].shape
        if got != tuple(shape):
            raise CheckpointError(
                f"parameter '{k}' has shape {got} in the checkpoint, the model expects {tuple(shape)}"
            )
    for k in sorted(ckpt.params):
        if k not in expected:
            raise CheckpointError(f"checkpoint has parameter '{k}', which the model does not")


def describe(ckpt: Checkpoint) -> str:
    """A short human summary: step, size, tokenizer, optimizer, best validation loss, model config."""
    n = sum(int(p.size) for p in ckpt.params.values())
    dtypes = "/".join(sorted({str(p.dtype) for p in ckpt.params.values()}))
    opt = "no optimizer state" if ckpt.opt_state is None else f"AdamW t={ckpt.opt_state.t}"
    best = "none yet" if ckpt.best_val_loss is None else f"{ckpt.best_val_loss:.4f}"
    config = ", ".join(f"{k}={v}" for k, v in ckpt.model_config.items())
    return (
        f"BeviaLLM checkpoint v{ckpt.header['version']}: step {ckpt.step}, {n:,} parameters in "
        f"{len(ckpt.params)} {dtypes} arrays, tokenizer: {tokenizers.describe(ckpt.tokenizer)}, {opt}, "
        f"best val loss {best}\nmodel: {config or '(no config)'}"
    )
