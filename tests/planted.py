"""Planting a student's mistake in a filled-in package by *substituting a function*: the
replacement is appended to the module, so it rebinds the name and everything in the package that
looks the name up at call time uses it. Nothing depends on the reference's exact source lines, so
an equivalent rewrite of the reference cannot silently break a planted mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path


def plant(root: Path, file: str, code: str) -> None:
    """Append ``code`` (one or more function definitions, dedented) to ``root/file``."""
    path = root / file
    assert path.is_file(), f"{file} is not in the package"
    with path.open("a", encoding="utf-8") as f:
        f.write("\n\n# --- planted mistake ---\n" + textwrap.dedent(code).strip() + "\n")


NAIVE_SOFTMAX = """
def softmax(x):
    e = np.exp(x)  # no max subtraction: overflows at +1000, 0/0 at -1000
    return e / e.sum(axis=-1, keepdims=True)
"""

NAIVE_CROSS_ENTROPY = """
_stable_cross_entropy = cross_entropy

def cross_entropy(logits, targets):
    _, cache = _stable_cross_entropy(logits, targets)
    z = logits.reshape(-1, logits.shape[-1])
    picked = z[np.arange(z.shape[0]), targets.reshape(-1)]
    loss = np.mean(np.log(np.exp(z).sum(axis=1)) - picked)  # log-sum-exp without the max
    return np.asarray(loss, dtype=logits.dtype), cache
"""

EPS_OUTSIDE_THE_SQUARE_ROOT = """
_reference_forward = forward

def forward(params, x, cfg):
    _, cache = _reference_forward(params, x, cfg)
    xc = x - x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / (np.sqrt((xc * xc).mean(axis=-1, keepdims=True)) + cfg.eps)  # eps added to std
    xhat = xc * rstd
    return xhat * params["gamma"] + params["beta"], LayerNormCache(xhat, rstd)
"""

SQUEEZED_BATCH = """
_reference_forward = forward

def forward(params, x, cfg):
    y, cache = _reference_forward(params, x, cfg)
    return y.squeeze(), cache  # drops every axis of length 1, the batch's too
"""

MASK_HIDES_THE_DIAGONAL = """
def causal_mask(t_q, t_k):
    return np.triu(np.ones((t_q, t_k), dtype=bool), k=t_k - t_q)  # a token may not see itself
"""
