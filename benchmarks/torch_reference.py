"""The same model in PyTorch eager, for the benchmark race only (torch is an optional extra).

Architecture as bevialm.model: token + position embeddings, pre-norm blocks with
separate q/k/v/proj linears and causal attention, a ReLU/GELU MLP, final layer norm,
a linear head; AdamW with the same hyperparameters and decay rule. Attention uses
PyTorch's fused ``scaled_dot_product_attention`` (what a PyTorch notebook would use).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.act = nn.GELU(approximate="tanh") if activation == "gelu" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        h = self.ln1(x)
        q, k, v = (lin(h).view(b, t, self.heads, c // self.heads).transpose(1, 2) for lin in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, c))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TorchLM(nn.Module):
    def __init__(self, vocab: int, ctx: int, dim: int, layers: int, heads: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(ctx, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, activation) for _ in range(layers))
        self.ln_f, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def make_step(cfg: dict[str, Any], lr: float, wd: float, beta2: float, clip: float) -> tuple[Any, Any]:
    """A model and a ``step(x, y) -> loss`` closure: forward, backward, clip, AdamW."""
    model = TorchLM(cfg["vocab"], cfg["ctx"], cfg["dim"], cfg["layers"], cfg["heads"], cfg["mlp"], cfg["activation"])
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith(("tok", "pos"))]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and not n.startswith(("tok", "pos")))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, beta2), eps=1e-8,
    )

    def step(x: Any, y: Any) -> float:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        logits = model(xt)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), yt.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return loss.item()

    return model, step
