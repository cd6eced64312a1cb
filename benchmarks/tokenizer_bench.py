"""`make bench-tokenizer`: BeviaLLM's byte-level BPE trained and run on Tiny Shakespeare.

Measures, on ``data/tinyshakespeare.txt`` (1.1 MB):

- training a 512-token and a 4,096-token vocabulary (seconds);
- encoding the whole text with the 4,096-token tokenizer: cold (a freshly loaded
  tokenizer, nothing cached) and warm (its chunk cache filled), in MB/s of UTF-8;
- decoding it back (MB/s), and checking the round trip is exact;
- training on a 10 MB single line that the pre-split cannot break (random ``ACGT``, as
  DNA: one chunk of 10 million bytes) to the same vocabularies, in seconds per MB next
  to Tiny Shakespeare's; the target is within 3x of Tiny Shakespeare per MB.

When Hugging Face ``tokenizers`` is installed (the ``bench`` extra), its byte-level BPE
trainer and encoder run on the same text in the same process, side by side, as a ratio
(our time / theirs). Each figure is the median of ``--repeats`` runs; results go to the
terminal and to JSON. Speed targets (4,096 in <= 10 s, encoding >= 2 MB/s) are reported,
never asserted: the tests only run ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bevialm import tokenizer  # noqa: E402

TEXT = ROOT / "data" / "tinyshakespeare.txt"
TRAIN_TARGET_S, ENCODE_TARGET_MBS = 10.0, 2.0
SINGLE_LINE_BYTES, SINGLE_LINE_TARGET = 10_000_000, 3.0


CPU: dict[str, float] = {}
"""The median CPU time (all threads of the process) of each figure, by the figure's name."""


def median_seconds(fn: Callable[[], Any], repeats: int, name: str = "") -> tuple[float, Any]:
    """The median wall time of ``repeats`` calls of ``fn`` and the last call's result; the
    median CPU time goes to ``CPU[name]``. On a shared machine the CPU time is the steadier
    figure: it does not count the time other processes held the cores."""
    times, cpu, result = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if name:
        CPU[name] = statistics.median(cpu)
    return statistics.median(times), result


def ours(text: str, sizes: list[int], repeats: int) -> dict[str, Any]:
    n_bytes = len(text.encode("utf-8"))
    out: dict[str, Any] = {"train_s": {}}
    trained: dict[int, tokenizer.BPETokenizer] = {}
    for size in sizes:
        seconds, trained[size] = median_seconds(lambda size=size: tokenizer.train_bpe(text, size), repeats, f"ours train {size}")  # type: ignore[misc]
        out["train_s"][str(size)] = seconds
    big = trained[sizes[-1]]

    def fresh() -> tokenizer.Tokenizer:
        """The tokenizer as loaded from a checkpoint: nothing cached yet."""
        return tokenizer.from_json(big.to_json())

    cold, ids = median_seconds(lambda: fresh().encode(text), repeats, "ours encode")
    warm_tok = fresh()
    warm_tok.encode(text)
    warm, _ = median_seconds(lambda: warm_tok.encode(text), repeats)
    decode_s, back = median_seconds(lambda: big.decode(ids), repeats)
    if back != text:
        raise SystemExit("round trip failed: decode(encode(text)) != text")
    out.update(
        vocab_size=big.vocab_size,
        tokens=int(ids.size),
        chars_per_token=len(text) / ids.size,
        encode_cold_s=cold,
        encode_cold_mb_s=n_bytes / cold / 1e6,
        encode_warm_s=warm,
        encode_warm_mb_s=n_bytes / warm / 1e6,
        decode_s=decode_s,
        decode_mb_s=n_bytes / decode_s / 1e6,
        round_trip_exact=True,
    )
    return out


def single_line(n_bytes: int, sizes: list[int], repeats: int) -> dict[str, Any]:
    """Training on ``n_bytes`` of one unbroken line (seeded random ``ACGT``): seconds per size."""
    rng = np.random.default_rng(0)
    text = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, n_bytes)].tobytes().decode("ascii")
    out: dict[str, Any] = {"megabytes": n_bytes / 1e6, "train_s": {}}
    for size in sizes:
        seconds, _ = median_seconds(lambda size=size: tokenizer.train_bpe(text, size), repeats, f"ours line {size}")  # type: ignore[misc]
        out["train_s"][str(size)] = seconds
    return out


def hugging_face(text: str, sizes: list[int], repeats: int) -> dict[str, Any] | None:
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        return None
    import tokenizers as hf

    def train(size: int) -> Any:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[], show_progress=False
        )
        tok.train_from_iterator([text], trainer)
        return tok

    n_bytes = len(text.encode("utf-8"))
    out: dict[str, Any] = {"version": hf.__version__, "train_s": {}}
    trained: dict[int, Any] = {}
    for size in sizes:
        out["train_s"][str(size)], trained[size] = median_seconds(lambda size=size: train(size), repeats, f"hf train {size}")  # type: ignore[misc]
    big = trained[sizes[-1]]
    encode_s, encoding = median_seconds(lambda: big.encode(text), repeats, "hf encode")
    lines = text.splitlines(keepends=True)
    batch_s, _ = median_seconds(lambda: big.encode_batch(lines), repeats, "hf encode lines")
    out.update(
        vocab_size=big.get_vocab_size(),
        tokens=len(encoding.ids),
        encode_s=encode_s,
        encode_mb_s=n_bytes / encode_s / 1e6,
        encode_lines_s=batch_s,
        encode_lines_mb_s=n_bytes / batch_s / 1e6,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="a 100 kB slice and vocabularies of 300 and 400: a smoke test")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported (default: 3)")
    p.add_argument("--no-hf", action="store_true", help="skip Hugging Face tokenizers even if installed")
    p.add_argument("--json", default="bench-tokenizer.json", help="where to write the results (default: %(default)s)")
    args = p.parse_args(argv)

    text = TEXT.read_text(encoding="utf-8")
    sizes = [512, 4096]
    if args.quick:
        text, sizes = text[:100_000], [300, 400]
    repeats = 1 if args.quick else max(1, args.repeats)
    mb = len(text.encode("utf-8")) / 1e6
    print(f"byte-level BPE on {TEXT.name}: {mb:.2f} MB, {len(text):,} characters; median of {repeats} run(s)")

    mine = ours(text, sizes, repeats)
    line = single_line(SINGLE_LINE_BYTES // 50 if args.quick else SINGLE_LINE_BYTES, sizes, repeats)
    theirs = None if args.no_hf else hugging_face(text, sizes, repeats)
    big = str(sizes[-1])

    def rate(seconds: float) -> str:
        return f"{mb / seconds:6.2f} MB/s"

    def secs(seconds: float) -> str:
        return f"{seconds:7.2f} s"

    header = f"{'':34}{'BeviaLLM: wall (CPU)':>28}"
    if theirs:
        header += f"{'HF tokenizers ' + theirs['version'] + ': wall (CPU)':>36}{'time ours / HF: wall (CPU)':>29}"
    print(header)

    def row(label: str, ours_s: float, ours_key: str, hf_s: float | None = None, hf_key: str = "", speed: bool = False) -> None:
        show = rate if speed else secs
        line = f"{label:34}{show(ours_s):>16} ({show(CPU[ours_key]).strip():>9})"
        if theirs and hf_s is not None:
            line += f"{show(hf_s):>24} ({show(CPU[hf_key]).strip():>9})"
            line += f"{ours_s / hf_s:>20.1f}x ({CPU[ours_key] / CPU[hf_key]:.1f}x)"
        print(line)

    for size in sizes:
        s = str(size)
        row(f"train to {size:,} tokens", mine["train_s"][s], f"ours train {size}",
            theirs["train_s"][s] if theirs else None, f"hf train {size}")  # fmt: skip
    row("encode the text, one string (cold)", mine["encode_cold_s"], "ours encode",
        theirs["encode_s"] if theirs else None, "hf encode", speed=True)  # fmt: skip
    if theirs:
        print(f"{'HF encode_batch over its lines':34}{'':28}{rate(theirs['encode_lines_s']):>24} "
              f"({rate(CPU['hf encode lines']).strip():>9})")  # fmt: skip
    print(f"{'encode again (chunk cache warm)':34}{rate(mine['encode_warm_s']):>16}")
    print(f"{'decode':34}{rate(mine['decode_s']):>16}")
    line_mb = line["megabytes"]
    print(f"one unbroken line of {line_mb:g} MB (random ACGT, a single chunk), seconds per MB: wall (CPU)")
    for size in sizes:
        ours_s, line_s = mine["train_s"][str(size)] / mb, line["train_s"][str(size)] / line_mb
        ratio, cpu_ratio = line_s / ours_s, CPU[f"ours line {size}"] / line_mb / (CPU[f"ours train {size}"] / mb)
        line[f"per_mb_ratio_{size}"] = ratio
        verdict = f"target <= {SINGLE_LINE_TARGET:g}x: {'met' if ratio <= SINGLE_LINE_TARGET else 'MISSED'}"
        print(f"  train to {size:,}: {line_s:.2f} s/MB against {ours_s:.2f} s/MB on {TEXT.name}: "
              f"{ratio:.1f}x ({cpu_ratio:.1f}x); {verdict}")  # fmt: skip
    tokens = f"{mine['tokens']:,} tokens ({mine['chars_per_token']:.2f} characters per token)"
    print(f"{sizes[-1]:,}-token vocabulary: {tokens}; round trip exact")
    if theirs:
        print(f"HF's {theirs['vocab_size']:,}-token vocabulary: {theirs['tokens']:,} tokens")
    else:
        print("Hugging Face tokenizers is not installed (pip install -e '.[bench]'): BeviaLLM alone")
    mine["cpu_s"] = {k: v for k, v in CPU.items() if k.startswith("ours")}
    if theirs:
        theirs["cpu_s"] = {k: v for k, v in CPU.items() if k.startswith("hf")}
    if not args.quick:
        train_ok = mine["train_s"][big] <= TRAIN_TARGET_S
        encode_ok = mb / mine["encode_cold_s"] >= ENCODE_TARGET_MBS
        print(
            f"targets (wall time): train to 4,096 in <= {TRAIN_TARGET_S:g} s: {'met' if train_ok else 'MISSED'}; "
            f"encode >= {ENCODE_TARGET_MBS:g} MB/s (cold): {'met' if encode_ok else 'MISSED'}"
        )
    results = {
        "text": TEXT.name,
        "megabytes": mb,
        "repeats": repeats,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "bevialm": mine,
        "single_line": line,
        "hugging_face": theirs,
    }
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
