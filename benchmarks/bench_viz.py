"""`make bench`, pictures: the cost of drawing attention and of recording it while generating.

Two figures, each against its target (docs/visualization.md):

- drawing the attention of a 256-token prompt for 4 layers x 4 heads (the forward pass, the
  figure and the PNG, as ``bevialm attention`` does): target under 5 s;
- generating with an :class:`bevialm.generate.AttentionRecorder` against plain generation, the
  same tokens (greedy) from a one-token prompt to a full context of 256: target at most 2x.

Generation is timed in alternating rounds (plain, recorded, plain, ...) and the medians compared,
so both see the same machine weather. Run it: ``python benchmarks/bench_viz.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bevialm import generate, model, viz

VOCAB = 65
DRAW_TARGET_S, RECORD_TARGET_RATIO = 5.0, 2.0


def trained_like(cfg: model.ModelConfig) -> dict[str, Any]:
    """Random parameters far enough from init that attention is uneven, as in a trained model."""
    rng = np.random.default_rng(0)
    params = model.init_params(cfg, rng)
    return {k: (p + rng.standard_normal(p.shape).astype(p.dtype) * 0.3) for k, p in params.items()}


def drawing_seconds(ctx: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds to draw a ``ctx``-token prompt's attention, 4 layers x 4 heads,
    to a PNG (CPU time is the fairer figure on a shared machine: it leaves out waiting for a core)."""
    cfg = model.ModelConfig(VOCAB, ctx=ctx, dim=64, n_layers=4, n_heads=4, mlp_hidden=256)
    params = trained_like(cfg)
    ids = np.random.default_rng(1).integers(0, VOCAB, size=(1, ctx))
    tokens = [chr(33 + int(i)) for i in ids[0]]
    viz.require_matplotlib()
    import matplotlib.figure  # noqa: F401  # imported once, outside the timing, as in a notebook

    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        _, cache = model.forward(params, ids, cfg)
        fig = viz.prompt_attention_figure(model.attention_maps(cache), tokens)
        viz.save_figure(fig, str(Path(tmp) / "attention.png"))
        return time.perf_counter() - t0, time.process_time() - c0


def recording_times(ctx: int, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds per generation of ``ctx - 1`` tokens, plain and recorded, alternating rounds."""
    cfg = model.ModelConfig(VOCAB, ctx=ctx, dim=64, n_layers=4, n_heads=4, mlp_hidden=256)
    params = trained_like(cfg)
    prompt = np.zeros((1, 1), dtype=np.int64)

    def greedy(logits: Any) -> Any:
        return np.argmax(logits, axis=1)

    def once(recorder: generate.AttentionRecorder | None) -> float:
        t0 = time.perf_counter()
        generate.generate(params, cfg, prompt, ctx - 1, greedy, recorder=recorder)
        return time.perf_counter() - t0

    once(None)  # warm-up
    plain, recorded = [], []
    for _ in range(rounds):
        plain.append(once(None))
        recorded.append(once(generate.AttentionRecorder()))
    return plain, recorded


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 64 tokens, one round")
    ap.add_argument("--json", default="bench-viz-results.json", help="where to write the results (default %(default)s)")
    args = ap.parse_args(argv)
    ctx, rounds = (64, 1) if args.quick else (256, 5)
    draw, draw_cpu = drawing_seconds(ctx)
    print(
        f"drawing a {ctx}-token prompt's attention, 4 layers x 4 heads, to PNG: {draw:.2f} s "
        f"({draw_cpu:.2f} s of CPU) (target < {DRAW_TARGET_S:g} s)"
    )
    plain, recorded = recording_times(ctx, rounds)
    p, r = statistics.median(plain), statistics.median(recorded)
    print(
        f"generating {ctx - 1} tokens at ctx {ctx}: plain {p * 1e3:.0f} ms, recording attention {r * 1e3:.0f} ms "
        f"(median of {rounds}): {r / p:.2f}x (target <= {RECORD_TARGET_RATIO:g}x)"
    )
    results = {"ctx": ctx, "draw_s": draw, "draw_cpu_s": draw_cpu, "plain_s": plain, "recorded_s": recorded, "record_ratio": r / p}
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
