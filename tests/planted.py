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


BIAS_GRADIENT_AVERAGED = """
_reference_backward = backward

def backward(params, cache, dy):
    dx, grads = _reference_backward(params, cache, dy)
    rows = dy.size // dy.shape[-1]
    return dx, {**grads, "b": grads["b"] / rows}  # the mean over rows, not the sum
"""

WEIGHT_GRADIENT_TRANSPOSED = """
_reference_backward = backward

def backward(params, cache, dy):
    dx, grads = _reference_backward(params, cache, dy)
    return dx, {**grads, "W": grads["W"].T}  # dy^T x instead of x^T dy
"""

MASK_FORGOTTEN_IN_ATTEND_BACKWARD = """
_reference_attend_backward = attend_backward

def attend_backward(cache, dout):
    scores = cache.q @ cache.k.swapaxes(-1, -2) / math.sqrt(cache.q.shape[-1])
    unmasked = softmax.SoftmaxCache(softmax.softmax(scores))  # the weights recomputed without the mask
    return _reference_attend_backward(CoreCache(cache.q, cache.k, cache.v, unmasked), dout)
"""

EMBEDDING_ROWS_OVERWRITTEN = """
def backward(params, cache, dy):
    W = params["W"]
    dW = np.zeros_like(W)
    dW[cache.idx.reshape(-1)] = dy.reshape(-1, W.shape[1])  # a repeated index keeps only its last row
    return None, {"W": dW}
"""

LAYERNORM_MEAN_TERM_MISSING = """
_reference_backward = backward

def backward(params, cache, dy):
    dx, grads = _reference_backward(params, cache, dy)
    g = dy * params["gamma"]
    return dx + cache.rstd * g.mean(axis=-1, keepdims=True), grads  # the - mean(g) term undone
"""

SOFTMAX_BACKWARD_WITHOUT_ROW_SUM = """
def backward(params, cache, dy):
    return cache.y * dy, {}  # diag(y) dy: the - y y^T dy part is missing
"""


def returning(function: str, first: str, second: str) -> str:
    """``function`` (``forward`` or ``backward``) returning ``(first, second)``, two expressions of
    the reference's results: ``y, cache`` for a forward, ``dx, grads`` for a backward."""
    names = "y, cache" if function == "forward" else "dx, grads"
    args = "params, x, cfg, **kwargs" if function == "forward" else "params, cache, dy"
    return f"""
_reference_{function} = {function}

def {function}({args}):
    {names} = _reference_{function}({args})
    return {first}, {second}
"""


LAYERNORM_EPS_REPLACED_BY_ONE = """
from dataclasses import replace as _replace

_reference_forward = forward

def forward(params, x, cfg):
    return _reference_forward(params, x, _replace(cfg, eps=1.0))  # 1 added to the variance, not eps
"""

COTANGENT_DOUBLED_IN_PLACE = """
_reference_backward = backward

def backward(params, cache, dy):
    dy *= 2.0  # modifies the caller's array
    dx, grads = _reference_backward(params, cache, dy)
    return dx / 2.0, grads
"""

INIT_WITHOUT_BETA_IN_FLOAT64 = """
def init(cfg, rng, dtype=np.float32):
    return {"gamma": np.ones(cfg.dim)}  # no beta, and float64 whatever the dtype
"""
