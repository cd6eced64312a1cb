"""``bevialm export``: a checkpoint's weights under nanoGPT's names and layouts, as safetensors
(written with NumPy alone) or a PyTorch state dict, with a JSON sidecar holding the config and
the tokenizer.

The mapping (``docs/export.md`` has the table): nanoGPT's ``nn.Linear`` keeps its weight as
``(out, in)`` and computes ``x W^T + b``, where BeviaLLM keeps ``W`` as ``(in, out)`` and computes
``x W + b``, so every linear weight is transposed. nanoGPT fuses the query, key and value
projections into one ``c_attn`` of ``3 * dim`` outputs, q first, then k, then v; each of them
splits its ``dim`` features into heads in the same order as BeviaLLM
(:func:`bevialm.layers.attention.split_heads`), so the fused weight is the three stacked.

Where BeviaLLM's model is not nanoGPT's, the sidecar says so and a loader must follow it:

- ``lm_head`` has a bias (``lm_head.bias``), and its weight is not tied to ``transformer.wte``;
- the MLP's hidden size is ``mlp_hidden`` (nanoGPT: ``4 * n_embd``);
- the activation is ``"gelu_tanh"`` (GPT-2's tanh form; nanoGPT's ``nn.GELU()`` is the exact erf
  form) or ``"relu"``.

nanoGPT's ``LayerNorm`` fixes epsilon at 1e-5: a model with another ``ln_eps`` cannot be
expressed, and is refused in one line.

safetensors: an 8-byte little-endian header length, the header (JSON: each tensor's dtype,
shape and byte range, and ``__metadata__`` of strings), padded with spaces to 8 bytes, then
the tensors' little-endian bytes back to back.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable, Mapping
from typing import IO, Any

import numpy as np

from bevialm import generate, tokenizer
from bevialm.model import ModelConfig, block_prefix
from bevialm.types import Array

FORMATS = ("safetensors", "torch")
NANOGPT_LN_EPS = 1e-5
ACTIVATION_NAMES = {"gelu": "gelu_tanh", "relu": "relu"}
_DTYPE_CODES = {"float16": "F16", "float32": "F32", "float64": "F64"}
MAX_HEADER = 100_000_000  # the safetensors library's own limit on a header


class ExportError(ValueError):
    """A checkpoint that cannot be exported, or an output that cannot be written: one line."""


def check_expressible(cfg: ModelConfig) -> None:
    """Refuse, in one line, a model nanoGPT's layout cannot express."""
    if cfg.ln_eps != NANOGPT_LN_EPS:
        raise ExportError(
            f"this model's layer norms use epsilon {cfg.ln_eps:g}; nanoGPT's LayerNorm fixes it at "
            f"{NANOGPT_LN_EPS:g}, so its layout cannot express the model"
        )


def nanogpt_state(params: Mapping[str, Array], cfg: ModelConfig) -> dict[str, Array]:
    """``params`` under nanoGPT's names, linear weights as ``(out, in)``, q|k|v fused into ``c_attn``."""

    def t(name: str) -> Array:
        return np.ascontiguousarray(params[name].T)

    state = {"transformer.wte.weight": params["tok_emb.W"], "transformer.wpe.weight": params["pos_emb.W"]}
    for i in range(cfg.n_layers):
        b, n = block_prefix(i), f"transformer.h.{i}."
        state[n + "ln_1.weight"] = params[b + "ln1.gamma"]
        state[n + "ln_1.bias"] = params[b + "ln1.beta"]
        qkv = [params[f"{b}attn.{p}.W"] for p in "qkv"]
        state[n + "attn.c_attn.weight"] = np.ascontiguousarray(np.concatenate(qkv, axis=1).T)
        state[n + "attn.c_attn.bias"] = np.concatenate([params[f"{b}attn.{p}.b"] for p in "qkv"])
        state[n + "attn.c_proj.weight"] = t(b + "attn.proj.W")
        state[n + "attn.c_proj.bias"] = params[b + "attn.proj.b"]
        state[n + "ln_2.weight"] = params[b + "ln2.gamma"]
        state[n + "ln_2.bias"] = params[b + "ln2.beta"]
        state[n + "mlp.c_fc.weight"] = t(b + "mlp.fc1.W")
        state[n + "mlp.c_fc.bias"] = params[b + "mlp.fc1.b"]
        state[n + "mlp.c_proj.weight"] = t(b + "mlp.fc2.W")
        state[n + "mlp.c_proj.bias"] = params[b + "mlp.fc2.b"]
    state["transformer.ln_f.weight"] = params["ln_f.gamma"]
    state["transformer.ln_f.bias"] = params["ln_f.beta"]
    state["lm_head.weight"] = t("lm_head.W")
    state["lm_head.bias"] = params["lm_head.b"]
    return state


def sidecar(cfg: ModelConfig, tok: tokenizer.Tokenizer, source: str, step: int, dtype: str) -> dict[str, Any]:
    """The JSON beside the weights: nanoGPT's config names, what differs from nanoGPT, the tokenizer."""
    return {
        "format": "nanogpt",
        "config": {
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_embd": cfg.dim,
            "block_size": cfg.ctx,
            "vocab_size": cfg.vocab_size,
            "bias": True,
            "dropout": cfg.dropout,
            "mlp_hidden": cfg.mlp_hidden,
            "activation": ACTIVATION_NAMES[cfg.activation],
            "ln_eps": cfg.ln_eps,
            "lm_head_bias": True,
            "tied_embeddings": False,
        },
        "dtype": dtype,
        "tokenizer": tok.to_json(),
        "source": {"checkpoint": source, "step": step},
    }


def _write_safetensors(f: IO[bytes], tensors: Mapping[str, Array], metadata: Mapping[str, str]) -> None:
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, array in tensors.items():
        code = _DTYPE_CODES.get(str(array.dtype))
        if code is None:
            raise ExportError(f"tensor '{name}' has dtype {array.dtype}; safetensors export takes float16/32/64")
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the byte buffer starts 8-byte aligned
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for array in tensors.values():
        f.write(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())


def read_safetensors(path: str) -> tuple[dict[str, Array], dict[str, str]]:
    """The tensors and metadata of a safetensors file (what :func:`write` wrote; a check in the tests)."""
    codes = {v: k for k, v in _DTYPE_CODES.items()}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER:
            raise ExportError(f"'{path}': a safetensors header of {n:,} bytes is not plausible")
        header = json.loads(f.read(n))
        data = f.read()
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = np.dtype(codes[info["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"])
    return tensors, metadata


def _write_torch(f: IO[bytes], tensors: Mapping[str, Array], metadata: Mapping[str, str]) -> None:
    import torch  # checked by require_torch before anything is written

    del metadata  # the sidecar holds it
    torch.save({name: torch.from_numpy(np.array(array)) for name, array in tensors.items()}, f)


def require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ExportError("--format torch needs PyTorch (pip install torch); --format safetensors needs only NumPy") from None


def _atomic(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in its folder: a failure leaves any old file whole."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # an ordinary file's mode, not mkstemp's private 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def sidecar_path(to: str) -> str:
    """``model.safetensors`` -> ``model.json``."""
    return os.path.splitext(to)[0] + ".json"


def export(checkpoint: str, to: str, fmt: str = "safetensors") -> tuple[str, dict[str, Any]]:
    """Write ``checkpoint``'s model to ``to`` in ``fmt`` and its sidecar; return the sidecar's path and content."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    side = sidecar_path(to)
    if os.path.abspath(side) == os.path.abspath(to):
        raise ExportError(f"--to '{to}' would be overwritten by its own JSON sidecar: name it model.safetensors or model.pt")
    if os.path.isdir(to):
        raise ExportError(f"--to '{to}' is a folder; name the file to write")
    if fmt == "torch":
        require_torch()
    loaded = generate.load_model(checkpoint)
    check_expressible(loaded.cfg)
    tensors = nanogpt_state(loaded.params, loaded.cfg)
    dtype = str(next(iter(tensors.values())).dtype)
    meta = sidecar(loaded.cfg, loaded.tokenizer, checkpoint, loaded.step, dtype)
    writer = _write_safetensors if fmt == "safetensors" else _write_torch
    strings = {"format": "nanogpt", "config": json.dumps(meta["config"])}
    def write_sidecar(f: IO[bytes]) -> None:
        f.write((json.dumps(meta, indent=2) + "\n").encode("utf-8"))

    try:
        _atomic(to, lambda f: writer(f, tensors, strings))
        _atomic(side, write_sidecar)
    except OSError as e:
        raise ExportError(f"cannot write '{e.filename or to}': {e.strerror or e}") from None
    return side, meta
