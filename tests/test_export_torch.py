"""The export round trip: weights exported by ``bevialm export`` load into a PyTorch GPT written
as nanoGPT's is (module names, fused q|k|v attention, ``nn.Linear``), and its logits match
BeviaLLM's (<= 1e-5 in float32, <= 1e-10 in float64).

The model below follows nanoGPT's structure, set to what the sidecar says BeviaLLM's model is:
``lm_head`` with a bias and not tied to ``wte``, an MLP of ``mlp_hidden`` units, GELU in its tanh
form or ReLU, layer-norm epsilon 1e-5. torch is in the bench extra (``make bench`` installs it);
without it these tests are skipped with a printed reason.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bevialm import export, model
from bevialm.model import ModelConfig
from tests.test_export import write_checkpoint

try:
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812
except ImportError:  # pragma: no cover - without the bench extra
    print("test_export_torch: skipped, PyTorch is not installed (pip install -e '.[bench]')")
    pytest.skip("PyTorch is not installed (pip install -e '.[bench]')", allow_module_level=True)

TOLERANCE: dict[Any, float] = {np.float32: 1e-5, np.float64: 1e-10}  # the bounds on |logits difference|


class LayerNorm(nn.Module):
    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim))

    def forward(self, x: Any) -> Any:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    bias: Any  # the causal mask, a buffer (nanoGPT's name for it)

    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.c_attn = nn.Linear(c["n_embd"], 3 * c["n_embd"])
        self.c_proj = nn.Linear(c["n_embd"], c["n_embd"])
        self.n_head, self.n_embd = c["n_head"], c["n_embd"]
        size = c["block_size"]
        self.register_buffer("bias", torch.tril(torch.ones(size, size)).view(1, 1, size, size))

    def forward(self, x: Any) -> Any:
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        k = k.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        v = v.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class MLP(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.c_fc = nn.Linear(c["n_embd"], c["mlp_hidden"])
        self.act = nn.GELU(approximate="tanh") if c["activation"] == "gelu_tanh" else nn.ReLU()
        self.c_proj = nn.Linear(c["mlp_hidden"], c["n_embd"])

    def forward(self, x: Any) -> Any:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.ln_1, self.attn = LayerNorm(c["n_embd"]), CausalSelfAttention(c)
        self.ln_2, self.mlp = LayerNorm(c["n_embd"]), MLP(c)

    def forward(self, x: Any) -> Any:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(c["vocab_size"], c["n_embd"]),
                "wpe": nn.Embedding(c["block_size"], c["n_embd"]),
                "h": nn.ModuleList([Block(c) for _ in range(c["n_layer"])]),
                "ln_f": LayerNorm(c["n_embd"]),
            }
        )
        self.lm_head = nn.Linear(c["n_embd"], c["vocab_size"], bias=c["lm_head_bias"])  # untied

    def forward(self, idx: Any) -> Any:
        parts: Any = self.transformer
        x = parts.wte(idx) + parts.wpe(torch.arange(idx.size(1)))
        for block in parts.h:
            x = block(x)
        return self.lm_head(parts.ln_f(x))


def _torch_logits(weights: dict[str, Any], side: Path, idx: np.ndarray, dtype: Any) -> np.ndarray:
    config = json.loads(side.read_text())["config"]
    gpt = GPT(config).to(dtype)
    missing, unexpected = gpt.load_state_dict(weights, strict=False)
    assert [m for m in missing if not m.endswith("attn.bias")] == [] and unexpected == []  # only the mask buffer
    gpt.eval()
    with torch.no_grad():
        out: np.ndarray = gpt(torch.from_numpy(idx)).numpy()
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_logits_match_a_nanogpt_style_pytorch_model(tmp_path: Path, dtype: type, activation: str) -> None:
    from safetensors.torch import load_file

    cfg = ModelConfig(vocab_size=11, ctx=8, dim=12, n_layers=2, n_heads=3, mlp_hidden=20, activation=activation)  # type: ignore[arg-type]
    params = write_checkpoint(tmp_path / "c.npz", cfg, dtype)
    export.export(str(tmp_path / "c.npz"), str(tmp_path / "m.safetensors"))
    idx = np.random.default_rng(3).integers(0, cfg.vocab_size, size=(4, cfg.ctx))
    ours, _ = model.forward(params, idx, cfg)
    theirs = _torch_logits(load_file(str(tmp_path / "m.safetensors")), tmp_path / "m.json", idx, getattr(torch, np.dtype(dtype).name))
    assert theirs.dtype == dtype
    assert np.abs(theirs - ours).max() <= TOLERANCE[dtype]


def test_format_torch_loads_with_torch_load(tmp_path: Path) -> None:
    cfg = ModelConfig(vocab_size=11, ctx=8, dim=12, n_layers=1, n_heads=2, mlp_hidden=16, activation="gelu")
    params = write_checkpoint(tmp_path / "c.npz", cfg, np.float64)
    done = subprocess.run([sys.executable, "-m", "bevialm", "export", "--checkpoint", "c.npz", "--to", "m.pt",
                           "--format", "torch"], cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    weights = torch.load(tmp_path / "m.pt", weights_only=True)
    idx = np.arange(cfg.ctx)[None, :] % cfg.vocab_size
    ours, _ = model.forward(params, idx, cfg)
    assert np.abs(_torch_logits(weights, tmp_path / "m.json", idx, torch.float64) - ours).max() <= 1e-10
