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


# --- beyond the pairs: the model and the optimizer ------------------------------------------

POS_EMB_GRADIENT_AVERAGED = """
_reference_backward = backward

def backward(params, cache, dlogits):
    grads = _reference_backward(params, cache, dlogits)
    batch = dlogits.shape[0]
    return {**grads, "pos_emb.W": grads["pos_emb.W"] / batch}  # the mean over the batch, not the sum
"""

POSITIONS_FOR_THE_WHOLE_CONTEXT = """
_reference_forward = forward

def forward(params, idx, cfg, *, rng=None):
    if idx.shape[1] != cfg.ctx:
        raise ValueError("positions = np.arange(cfg.ctx) only fits sequences of length ctx")
    return _reference_forward(params, idx, cfg, rng=rng)
"""

ADAMW_WITHOUT_BIAS_CORRECTION = """
def step(params, grads, state, cfg, lr=None):
    lr = cfg.lr if lr is None else lr
    new_params, m, v = {}, {}, {}
    for k, theta in params.items():
        g = grads[k]
        m[k] = cfg.beta1 * state.m[k] + (1 - cfg.beta1) * g
        v[k] = cfg.beta2 * state.v[k] + (1 - cfg.beta2) * g * g
        wd = cfg.weight_decay if cfg.decays(k) else 0.0
        new_params[k] = theta - lr * m[k] / (np.sqrt(v[k]) + cfg.eps) - lr * wd * theta  # m, v not corrected
    return new_params, AdamWState(state.t + 1, m, v)
"""

ADAMW_WITH_L2_INSTEAD_OF_DECOUPLED_DECAY = """
from dataclasses import replace as _replace

_reference_step = step

def step(params, grads, state, cfg, lr=None):
    coupled = {k: g + cfg.weight_decay * params[k] if cfg.decays(k) else g for k, g in grads.items()}
    return _reference_step(params, coupled, state, _replace(cfg, weight_decay=0.0), lr)  # L2 in the gradient
"""

ADAMW_DECAYING_EVERY_PARAMETER = """
from dataclasses import replace as _replace

_reference_step = step

def step(params, grads, state, cfg, lr=None):
    return _reference_step(params, grads, state, _replace(cfg, decay_all=True), lr)  # biases, gains, embeddings too
"""

DECAY_RULE_WITHOUT_THE_EMBEDDING_EXEMPTION = """
def decays(name):
    return name.split(".")[-1] == "W"  # tok_emb.W and pos_emb.W decay too
"""

SCHEDULE_WARMUP_OFF_BY_ONE = """
_reference_lr_at = lr_at

def lr_at(step, base_lr, warmup, total, min_lr):
    if step < warmup:
        return base_lr * step / warmup  # the first update gets lr 0, the last warmup step less than base_lr
    return _reference_lr_at(step, base_lr, warmup, total, min_lr)
"""

SCHEDULE_COSINE_OFF_BY_ONE = """
_reference_lr_at = lr_at

def lr_at(step, base_lr, warmup, total, min_lr):
    if warmup <= step < total:
        progress = (step - warmup + 1) / (total - warmup)  # one step ahead: base_lr is never used
        return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    return _reference_lr_at(step, base_lr, warmup, total, min_lr)
"""

PER_TENSOR_CLIPPING = """
def clip_by_global_norm(grads, max_norm):
    norm = global_norm(grads)
    if max_norm is None or max_norm <= 0:
        return dict(grads), norm
    clipped = {}
    for k, g in grads.items():
        own = float(np.sqrt(np.vdot(g, g)))
        clipped[k] = g * (max_norm / own) if own > max_norm else g  # each tensor clipped on its own norm
    return clipped, norm
"""

GLOBAL_NORM_AS_A_SUM_OF_NORMS = """
def global_norm(grads):
    return float(sum(np.sqrt(np.vdot(g, g)) for g in grads.values()))  # not the root of the summed squares
"""

SPLIT_HEADS_IN_THE_WRONG_ORDER = """
def split_heads(x, n_heads):
    b, t, c = x.shape
    return x.reshape(b, t, c // n_heads, n_heads).transpose(0, 3, 1, 2)  # head_dim before heads
"""

MERGE_HEADS_WITHOUT_THE_TRANSPOSE = """
def merge_heads(x):
    b, h, t, hd = x.shape
    return x.reshape(b, t, h * hd)  # heads and time mixed up
"""

VALUE_PROJECTION_GRADIENT_DOUBLED = """
_reference_backward = backward

def backward(params, cache, dy):
    dx, grads = _reference_backward(params, cache, dy)
    return dx, {**grads, "v.W": 2 * grads["v.W"], "v.b": 2 * grads["v.b"]}
"""

GARBAGE_FROM_THE_OPTIMIZER = """
def step(params, grads, state, cfg, lr=None):
    return [params], state.t  # neither the params dict nor a state

def decays(name):
    return "yes"

def lr_at(step, base_lr, warmup, total, min_lr):
    return "fast"

def global_norm(grads):
    return None

def clip_by_global_norm(grads, max_norm):
    return 1.0
"""

GARBAGE_FROM_THE_MODEL = """
_reference_forward = forward

def forward(params, idx, cfg, *, rng=None):
    logits, cache = _reference_forward(params, idx, cfg, rng=rng)
    return logits.tolist(), cache

def backward(params, cache, dlogits):
    return [1, 2, 3]
"""

TWO_GRADIENTS_WRONG_BY_DIFFERENT_AMOUNTS = """
_reference_backward = backward

def backward(params, cache, dy):
    dx, grads = _reference_backward(params, cache, dy)
    return dx * 1.001, {**grads, "W": grads["W"] * 3.0}  # dx barely wrong, dW badly
"""

DW_TRANSPOSED = """
_reference_backward = backward

def backward(params, cache, dy):
    dx, grads = _reference_backward(params, cache, dy)
    return dx, {"W": grads["W"].T, "b": grads["b"]}  # dW transposed: right only when W is square
"""

DB_FROM_A_MEAN = """
_reference_backward = backward

def backward(params, cache, dy):
    dx, grads = _reference_backward(params, cache, dy)
    dy2d = dy.reshape(-1, params["W"].shape[1])
    return dx, {"W": grads["W"], "b": dy2d.mean(axis=0)}  # a mean over the rows, not a sum
"""

DW_TRANSPOSED_AND_DB_FROM_A_MEAN = """
_reference_backward = backward

def backward(params, cache, dy):
    dx, grads = _reference_backward(params, cache, dy)
    dy2d = dy.reshape(-1, params["W"].shape[1])
    return dx, {"W": grads["W"].T, "b": dy2d.mean(axis=0)}  # two mistakes in one pair
"""

# --- the BPE merge step (bevialm/bpe.py) ---

BPE_TIE_TO_THE_LARGEST_PAIR = """
def train(text, vocab_size):
    ids = list(_bytes_of(text))
    merges = []
    while len(merges) < vocab_size - N_BYTES:
        stats = get_stats(ids)
        if not stats:
            break
        pair = max(stats, key=lambda p: (stats[p], p))  # ties go to the largest pair
        ids = merge(ids, pair, N_BYTES + len(merges))
        merges.append(pair)
    return merges
"""

BPE_OVERLAPPING_MERGE = """
def merge(ids, pair, idx):
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(idx)  # 'aaa' -> idx idx: the middle a is used twice
        elif not (i > 0 and (ids[i - 1], ids[i]) == pair):
            out.append(ids[i])
    return out
"""

BPE_STATS_WITHOUT_OVERLAPS = """
def get_stats(ids):
    counts = {}
    i = 0
    while i + 1 < len(ids):
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
        i += 2 if ids[i] == ids[i + 1] else 1  # 'aaa' counted once
    return counts
"""

BPE_ENCODE_MERGES_IN_REVERSE = """
def encode(text, merges):
    ids = list(_bytes_of(text))
    for rank in reversed(range(len(merges))):  # the last merge learned first
        ids = merge(ids, tuple(merges[rank]), N_BYTES + rank)
    return ids
"""

BPE_DECODE_STRICT = """
def decode(ids, merges):
    vocab = {i: bytes([i]) for i in range(N_BYTES)}
    for i, (a, b) in enumerate(merges):
        vocab[N_BYTES + i] = vocab[a] + vocab[b]
    return b"".join(vocab[i] for i in ids).decode("utf-8")  # no errors="replace"
"""


PLANTED_IN: dict[str, str] = {
    "NAIVE_SOFTMAX": "layers/softmax.py",
    "NAIVE_CROSS_ENTROPY": "losses.py",
    "EPS_OUTSIDE_THE_SQUARE_ROOT": "layers/layernorm.py",
    "SQUEEZED_BATCH": "layers/linear.py",
    "MASK_HIDES_THE_DIAGONAL": "layers/attention.py",
    "BIAS_GRADIENT_AVERAGED": "layers/linear.py",
    "WEIGHT_GRADIENT_TRANSPOSED": "layers/linear.py",
    "MASK_FORGOTTEN_IN_ATTEND_BACKWARD": "layers/attention.py",
    "EMBEDDING_ROWS_OVERWRITTEN": "layers/embedding.py",
    "LAYERNORM_MEAN_TERM_MISSING": "layers/layernorm.py",
    "SOFTMAX_BACKWARD_WITHOUT_ROW_SUM": "layers/softmax.py",
    "LAYERNORM_EPS_REPLACED_BY_ONE": "layers/layernorm.py",
    "COTANGENT_DOUBLED_IN_PLACE": "layers/gelu.py",
    "INIT_WITHOUT_BETA_IN_FLOAT64": "layers/layernorm.py",
    "POS_EMB_GRADIENT_AVERAGED": "model.py",
    "POSITIONS_FOR_THE_WHOLE_CONTEXT": "model.py",
    "ADAMW_WITHOUT_BIAS_CORRECTION": "optim.py",
    "ADAMW_WITH_L2_INSTEAD_OF_DECOUPLED_DECAY": "optim.py",
    "ADAMW_DECAYING_EVERY_PARAMETER": "optim.py",
    "DECAY_RULE_WITHOUT_THE_EMBEDDING_EXEMPTION": "optim.py",
    "SCHEDULE_WARMUP_OFF_BY_ONE": "optim.py",
    "SCHEDULE_COSINE_OFF_BY_ONE": "optim.py",
    "PER_TENSOR_CLIPPING": "optim.py",
    "GLOBAL_NORM_AS_A_SUM_OF_NORMS": "optim.py",
    "SPLIT_HEADS_IN_THE_WRONG_ORDER": "layers/attention.py",
    "MERGE_HEADS_WITHOUT_THE_TRANSPOSE": "layers/attention.py",
    "VALUE_PROJECTION_GRADIENT_DOUBLED": "layers/attention.py",
    "GARBAGE_FROM_THE_OPTIMIZER": "optim.py",
    "GARBAGE_FROM_THE_MODEL": "model.py",
    "TWO_GRADIENTS_WRONG_BY_DIFFERENT_AMOUNTS": "layers/linear.py",
    "DW_TRANSPOSED": "layers/linear.py",
    "DB_FROM_A_MEAN": "layers/linear.py",
    "DW_TRANSPOSED_AND_DB_FROM_A_MEAN": "layers/linear.py",
    "BPE_TIE_TO_THE_LARGEST_PAIR": "bpe.py",
    "BPE_OVERLAPPING_MERGE": "bpe.py",
    "BPE_STATS_WITHOUT_OVERLAPS": "bpe.py",
    "BPE_ENCODE_MERGES_IN_REVERSE": "bpe.py",
    "BPE_DECODE_STRICT": "bpe.py",
}
"""The file of the package each planted mistake above goes into (every one of them: the student
kit's tests plant each and compare the kit's verdicts with the grader's)."""
