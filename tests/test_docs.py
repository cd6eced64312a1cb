"""The documentation cannot drift from the code.

- Every ```python block in docs/*.md and README.md runs, each page's blocks in order in one
  namespace; an ```output block right after a python block must be exactly what that block
  printed, so every output (and every number in it) a page shows is produced here.
- Each formula a layer's page states is evaluated, as the page writes it, against the layer on a
  small float64 example (the tests after the examples').
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bevialm import losses, model, optim
from bevialm.data import get_batch
from bevialm.gradcheck import away_from_init
from bevialm.layers import attention, block, dropout, embedding, gelu, layernorm, linear, mlp, relu, softmax
from bevialm.types import Array

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def fences(text: str) -> list[tuple[str, str, int, int]]:
    """Every fenced block as (info string, body, start, end)."""
    return [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]


def test_docs_exist() -> None:
    assert len(PAGES) >= 5


def test_fences_are_read_as_written() -> None:
    text = "a\n```python\nprint(1)\n```\n\n```output\n1\n```\n```\nplain\n```\n"
    assert [(info, body) for info, body, _, _ in fences(text)] == [
        ("python", "print(1)\n"), ("output", "1\n"), ("", "plain\n")
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = page.read_text(encoding="utf-8")
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    blocks = fences(text)
    printed: dict[int, str] = {}
    for i, (info, body, _, _) in enumerate(blocks):
        if info == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(body, f"{page.name}[block {i + 1}]", "exec"), namespace)  # noqa: S102
            printed[i] = out.getvalue()
        elif info == "output":
            previous = blocks[i - 1] if i else None
            assert previous is not None and previous[0] == "python" and not text[previous[3] : blocks[i][2]].strip(), (
                f"{page.name}: an output block must follow the python block that prints it"
            )
            assert printed[i - 1] == body, f"{page.name}: the output block after block {i} is not what it prints"


# --- each page's formulas, as the page writes them, against the code (float64) -------------------

RNG_SEED = 0


def close(a: object, b: object) -> bool:
    return bool(np.allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12))


def numeric_jacobian(f: Callable[[Array], Array], x: Array, h: float = 1e-6) -> Array:
    """``J[j, i] = d f_j / d x_i`` of a vector function, by central differences."""
    cols = []
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        cols.append((f(x + e) - f(x - e)) / (2 * h))
    return np.stack(cols, axis=1)


def test_linear_page() -> None:
    rng = np.random.default_rng(RNG_SEED)
    cfg = linear.LinearConfig(3, 2)
    p = away_from_init(linear.init(cfg, rng, np.float64), rng)
    x, dY = rng.standard_normal((4, 5, 3)), rng.standard_normal((4, 5, 2))
    y, cache = linear.forward(p, x, cfg)
    X = x.reshape(-1, 3)
    assert close(y.reshape(-1, 2), X @ p["W"] + p["b"])  # Y = X W + b
    dx, grads = linear.backward(p, cache, dY)
    dY2 = dY.reshape(-1, 2)
    assert close(dx.reshape(-1, 3), dY2 @ p["W"].T) and close(grads["W"], X.T @ dY2) and close(grads["b"], dY2.sum(0))
    assert np.shares_memory(cache.x2d, x)  # "a view, no copy" for contiguous input
    assert not np.shares_memory(linear.forward(p, x.transpose(1, 0, 2), cfg)[1].x2d, x)  # strided: copied


def test_layernorm_page() -> None:
    rng = np.random.default_rng(RNG_SEED)
    cfg = layernorm.LayerNormConfig(dim=6)
    p = away_from_init(layernorm.init(cfg, rng, np.float64), rng)
    gamma, beta, eps, D = p["gamma"], p["beta"], cfg.eps, 6
    x, dy = rng.standard_normal((3, D)) * 2 + 1, rng.standard_normal((3, D))
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    xhat = (x - mu) * rstd
    y, cache = layernorm.forward(p, x, cfg)
    assert close(y, gamma * xhat + beta) and close(cache.xhat, xhat) and close(cache.rstd, rstd)
    dx, grads = layernorm.backward(p, cache, dy)
    g = dy * gamma
    def mean(a: Array) -> Array:
        r: Array = a.mean(-1, keepdims=True)
        return r
    assert close(grads["beta"], dy.sum(0)) and close(grads["gamma"], (dy * xhat).sum(0))
    assert close(dx, rstd * (g - mean(g) - xhat * mean(g * xhat)))
    row, r = x[0], rstd[0, 0]
    def var_of(v: Array) -> Array:
        r: Array = np.array([((v - v.mean()) ** 2).mean()])
        return r
    assert np.allclose(numeric_jacobian(var_of, row)[0], 2 / D * (row - row.mean()), atol=1e-8)  # d var/dx
    J = r * (np.eye(D) - 1 / D - np.outer(xhat[0], xhat[0]) / D)  # J[i, j] = d xhat_j / d x_i (symmetric)
    def xhat_of(v: Array) -> Array:
        r: Array = (v - v.mean()) / np.sqrt(((v - v.mean()) ** 2).mean() + eps)
        return r
    assert np.allclose(numeric_jacobian(xhat_of, row), J, atol=1e-7) and close(dx[0], J @ g[0])
    # forgetting mean(g) gives the gradient with the mean held constant, not an RMS norm's
    m0 = row.mean()
    def held_of(v: Array) -> Array:
        r: Array = gamma * (v - m0) / np.sqrt(((v - m0) ** 2).mean() + eps)
        return r
    held = r * (g[0] - xhat[0] * mean(g * xhat)[0])
    assert np.allclose(numeric_jacobian(held_of, row).T @ dy[0], held, atol=1e-7)
    def rms_of(v: Array) -> Array:
        r: Array = gamma * v / np.sqrt((v * v).mean() + eps)
        return r
    assert not np.allclose(numeric_jacobian(rms_of, row).T @ dy[0], held, atol=1e-3)


def test_activations_and_softmax_pages() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x, dy = rng.standard_normal((3, 5)) * 2, rng.standard_normal((3, 5))
    k, c = np.sqrt(2 / np.pi), 0.044715
    t = np.tanh(k * (x + c * x**3))
    y, cache = gelu.forward({}, x, gelu.GeluConfig())
    assert close(y, 0.5 * x * (1 + t)) and close(cache.t, t)
    assert close(gelu.backward({}, cache, dy)[0], dy * (0.5 * (1 + t) + 0.5 * x * (1 - t**2) * k * (1 + 3 * c * x**2)))
    y, rcache = relu.forward({}, x, relu.ReluConfig())
    assert close(y, np.maximum(x, 0)) and close(relu.backward({}, rcache, dy)[0], dy * (x > 0))
    y, scache = softmax.forward({}, x, softmax.SoftmaxConfig())
    e = np.exp(x - x.max(-1, keepdims=True))
    assert close(y, e / e.sum(-1, keepdims=True))
    jac = np.diag(y[0]) - np.outer(y[0], y[0])  # diag(y) - y yᵀ
    dx = softmax.backward({}, scache, dy)[0]
    assert close(dx, y * (dy - (dy * y).sum(-1, keepdims=True))) and close(dx[0], jac @ dy[0])


def test_cross_entropy_and_embedding_pages() -> None:
    rng = np.random.default_rng(RNG_SEED)
    z, t = rng.standard_normal((2, 3, 5)), rng.integers(0, 5, (2, 3))
    loss, cache = losses.cross_entropy(z, t)
    z2, t2, N = z.reshape(-1, 5), t.reshape(-1), 6
    lse = np.log(np.exp(z2).sum(-1))
    assert close(loss, np.mean(lse - z2[np.arange(N), t2]))  # logsumexp(z) - z[target]
    p = np.exp(z2 - lse[:, None])
    assert close(losses.cross_entropy_backward(cache, 2.0).reshape(-1, 5), 2.0 * (p - np.eye(5)[t2]) / N)
    cfg = embedding.EmbeddingConfig(num=4, dim=3)
    params = embedding.init(cfg, rng, np.float64)
    idx = np.array([[1, 3, 1], [0, 1, 1]])
    y, ecache = embedding.forward(params, idx, cfg)
    assert close(y, params["W"][idx])
    dy = rng.standard_normal((2, 3, 3))
    dW = embedding.backward(params, ecache, dy)[1]["W"]
    assert all(close(dW[r], dy[idx == r].sum(0)) for r in range(4))


def test_attention_page() -> None:
    rng = np.random.default_rng(RNG_SEED)
    cfg = attention.AttentionConfig(dim=6, n_heads=2, ctx=4)
    p = away_from_init(attention.init(cfg, rng, np.float64), rng)
    x, dy = rng.standard_normal((2, 4, 6)), rng.standard_normal((2, 4, 6))
    B, T, C, H, d = 2, 4, 6, 2, 3
    def heads(a: Array) -> Array:  #B, H, T, d)
        r: Array = a.reshape(B, T, H, d).transpose(0, 2, 1, 3)
        return r
    q, k, v = (heads(x @ p[f"{n}.W"] + p[f"{n}.b"]) for n in "qkv")
    S = q @ k.swapaxes(-1, -2) / np.sqrt(d)
    S[..., np.triu(np.ones((T, T), bool), 1)] = -np.inf  # S[i, j] = -inf for j > i
    A = np.exp(S - S.max(-1, keepdims=True))
    A /= A.sum(-1, keepdims=True)
    o = A @ v
    merged = o.transpose(0, 2, 1, 3).reshape(B, T, C)
    y, cache = attention.forward(p, x, cfg)
    assert close(y, merged @ p["proj.W"] + p["proj.b"]) and close(cache.weights, A)
    dx, grads = attention.backward(p, cache, dy)
    g = heads(dy @ p["proj.W"].T)
    dv, dA = A.swapaxes(-1, -2) @ g, g @ v.swapaxes(-1, -2)
    dS = A * (dA - (dA * A).sum(-1, keepdims=True))
    dq, dk = dS @ k / np.sqrt(d), dS.swapaxes(-1, -2) @ q / np.sqrt(d)
    def unheads(a: Array) -> Array:
        r: Array = a.transpose(0, 2, 1, 3).reshape(B * T, C)
        return r
    assert close(grads["v.W"], x.reshape(-1, C).T @ unheads(dv)) and close(grads["q.W"], x.reshape(-1, C).T @ unheads(dq))
    assert close(dx.reshape(-1, C), sum(unheads(dn) @ p[f"{n}.W"].T for n, dn in zip("qkv", (dq, dk, dv), strict=True)))
    assert np.allclose(grads["k.b"], 0, atol=1e-12)
    bk = heads(np.broadcast_to(p["k.b"], (B, T, C)))  # each head's slice of the key bias
    shift = (q * bk).sum(-1, keepdims=True) / np.sqrt(d)  # adds q_i · bk / sqrt(d) to row i
    k_nobias = heads(x @ p["k.W"])
    assert close(q @ k_nobias.swapaxes(-1, -2) / np.sqrt(d) + shift, q @ k.swapaxes(-1, -2) / np.sqrt(d))


def test_block_and_model_pages() -> None:
    rng = np.random.default_rng(RNG_SEED)
    cfg = block.BlockConfig(dim=4, n_heads=2, ctx=3, mlp_hidden=8, activation="gelu")
    p = away_from_init(block.init(cfg, rng, np.float64), rng)
    x, dy = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))

    def sub(name: str) -> dict[str, Array]:
        return {k[len(name) + 1 :]: a for k, a in p.items() if k.startswith(name + ".")}

    def ln1(a: Array) -> Array:
        r: Array = layernorm.forward(sub("ln1"), a, cfg.ln1)[0]
        return r
    def ln2(a: Array) -> Array:
        r: Array = layernorm.forward(sub("ln2"), a, cfg.ln2)[0]
        return r
    h = x + attention.forward(sub("attn"), ln1(x), cfg.attn)[0]
    y, cache = block.forward(p, x, cfg)
    assert close(y, h + mlp.forward(sub("mlp"), ln2(h), cfg.mlp)[0])  # the MLP reads ln2(h), not ln2(x)
    dx, _ = block.backward(p, cache, dy)
    dh = dy + layernorm.backward(sub("ln2"), cache.ln2, mlp.backward(sub("mlp"), cache.mlp, dy)[0])[0]
    da = attention.backward(sub("attn"), cache.attn, dh)[0]
    assert close(dx, dh + layernorm.backward(sub("ln1"), cache.ln1, da)[0])
    # the layer norm's Jacobian for one row: rstd (I - 11ᵀ/D - xhat xhatᵀ/D) diag(gamma), applied to dy
    xhat, rstd, gamma, D = cache.ln1.xhat[0, 0], cache.ln1.rstd[0, 0, 0], p["ln1.gamma"], 4
    jac = rstd * (np.eye(D) - np.ones((D, D)) / D - np.outer(xhat, xhat) / D) @ np.diag(gamma)
    dx_ln, _ = layernorm.backward(sub("ln1"), cache.ln1, dy)
    assert close(dx_ln[0, 0], jac @ dy[0, 0])
    same, _ = dropout.forward({}, x, dropout.DropoutConfig(0.3))
    assert same is x  # the identity returns x itself
    u = np.random.default_rng(5).random(x.shape)
    dropped, _ = dropout.forward({}, x, dropout.DropoutConfig(0.3), rng=np.random.default_rng(5))
    assert close(dropped, x * (u >= 0.3) / 0.7)
    mcfg = model.ModelConfig(vocab_size=5, ctx=3, dim=4, n_layers=1, n_heads=2, mlp_hidden=8)
    mp = model.init_params(mcfg, rng, np.float64)
    idx = np.array([[1, 4, 2]])
    logits, _ = model.forward(mp, idx, mcfg)
    bp = {k[len("block0.") :]: a for k, a in mp.items() if k.startswith("block0.")}
    xs = block.forward(bp, mp["tok_emb.W"][idx] + mp["pos_emb.W"][:3], mcfg.block)[0]
    fin = layernorm.forward({"gamma": mp["ln_f.gamma"], "beta": mp["ln_f.beta"]}, xs, mcfg.ln_f)[0]
    assert close(logits, fin @ mp["lm_head.W"] + mp["lm_head.b"])


def test_optimizer_and_data_pages() -> None:
    rng = np.random.default_rng(RNG_SEED)
    cfg = optim.AdamWConfig(lr=1e-2, weight_decay=0.1)
    theta, g = {"fc.W": rng.standard_normal((3, 2))}, {"fc.W": rng.standard_normal((3, 2))}
    state = optim.init_state(theta)
    new, state = optim.step(theta, g, state, cfg)
    a, b1, b2, eps, lam, t = cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, 1
    m, v = (1 - b1) * g["fc.W"], (1 - b2) * g["fc.W"] ** 2
    mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
    assert close(new["fc.W"], theta["fc.W"] - a * mhat / (np.sqrt(vhat) + eps) - a * lam * theta["fc.W"])
    base, lo, warm, total = 3e-4, 3e-5, 10, 110
    cos = [optim.lr_at(s, base, warm, total, lo) for s in range(warm, total)]
    assert [optim.lr_at(s, base, warm, total, lo) for s in range(warm)] == [base * (s + 1) / warm for s in range(warm)]
    assert sum(r > (base + lo) / 2 for r in cos) == 50  # half the cosine above its midpoint
    assert sum(r >= base - (base - lo) / 4 for r in cos) == 34 and sum(r <= lo + (base - lo) / 4 for r in cos) == 33
    assert optim.lr_at(0, base, 5, 100, base) < base and {optim.lr_at(s, base, 0, 100, base) for s in range(120)} == {base}
    data = np.arange(100) * 7 % 13
    xb, yb = get_batch(data, 4, 6, np.random.default_rng(1))
    starts = np.random.default_rng(1).integers(0, data.size - 6, size=4)
    assert np.array_equal(yb[:, :-1], xb[:, 1:]) and np.array_equal(yb[:, -1], data[starts + 6])


QUICK_START = {"lr": 3e-4, "warmup": 100, "steps": 2000}


def test_training_page_learning_rates() -> None:
    """The metrics example's ``lr`` is the quick start's ``lr_at(step - 1)``: a record at step
    ``s`` is written after update ``s - 1``, the last one taken."""
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.startswith('{"kind": ')]
    assert {r["kind"] for r in records} == {"train", "eval"}
    lr, warmup, steps = QUICK_START["lr"], int(QUICK_START["warmup"]), int(QUICK_START["steps"])
    for r in records:
        expected = optim.lr_at(r["step"] - 1, lr, warmup, steps, lr / 10)
        assert f"{expected:.3g}" == f"{r['lr']:.3g}", (r, expected)


def test_model_page_parameter_count() -> None:
    for cfg in (model.ModelConfig(65), model.ModelConfig(7, ctx=5, dim=6, n_layers=3, n_heads=2, mlp_hidden=10)):
        V, C, L, H, ctx = cfg.vocab_size, cfg.dim, cfg.n_layers, cfg.mlp_hidden, cfg.ctx
        formula = V * C + ctx * C + L * (4 * C + 4 * (C**2 + C) + 2 * C * H + H + C) + 2 * C + C * V + V
        assert model.count_params(cfg) == formula
        assert model.param_shapes(cfg) == cfg.param_shapes() and list(cfg.param_shapes()) == list(
            model.init_params(cfg, np.random.default_rng(0))
        )


def _all_keys(tree: object) -> set[str]:
    if not isinstance(tree, dict):
        return set()
    return set(tree) | {k for value in tree.values() for k in _all_keys(value)}


def test_checkpoints_page_header_fields_are_real(tmp_path: Path) -> None:
    from bevialm import train
    from bevialm.checkpoint import load_checkpoint

    text = (ROOT / "docs" / "checkpoints.md").read_text(encoding="utf-8")
    example = next(body for info, body, _, _ in fences(text) if info == "json")
    shown = set(re.findall(r'"([A-Za-z_][\w.]*)":', example))  # the field names (the "..." placeholders do not match)
    cfg = train.TrainConfig(
        data=str(ROOT / "data.txt"), ctx=8, dim=8, layers=1, mlp_hidden=8, batch=2, steps=2, sample_len=0,
        out=str(tmp_path),
    )
    train.train(cfg, stdout=io.StringIO())
    header = load_checkpoint(tmp_path / "last.npz").header
    assert "n_layers" in shown and shown - _all_keys(header) == set()  # every field shown is a real one
