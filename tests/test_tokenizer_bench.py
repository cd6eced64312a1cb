"""`make bench-tokenizer` must keep working: a quick smoke run of its script (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_tokenizer_bench_quick_run_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/tokenizer_bench.py", "--quick", "--no-hf", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(out.read_text())
    mine = results["bevialm"]
    assert mine["round_trip_exact"] and mine["vocab_size"] == 400 and results["hugging_face"] is None
    assert mine["train_s"]["300"] > 0 and mine["encode_cold_mb_s"] > 0 and 1 < mine["chars_per_token"] < 4
    line = results["single_line"]
    assert line["megabytes"] == 0.2 and line["train_s"]["400"] > 0 and line["per_mb_ratio_400"] > 0
    assert "one unbroken line of 0.2 MB" in run.stdout
    assert "round trip exact" in run.stdout and "BeviaLLM alone" in run.stdout
