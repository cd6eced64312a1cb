"""`make bench` must keep working: a quick smoke run of the benchmark script (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_run_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/bench.py", "--quick", "--no-torch", "--configs", "a", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(out.read_text())
    row = results["configs"]["a"]
    assert row["ms_per_step"] > 0 and row["tokens_per_s"] > 0 and 0 < row["share_of_peak"] < 1.5
    assert row["shards"] == 2 and 0 < row["products_ms"]  # the quick start's 512 tokens: two shards of 256
    assert results["sampling"]["kv_cache_tokens_per_s"] > 0
    assert "GFLOP/s" in run.stdout and "sampling at ctx" in run.stdout


def test_matmul_floor_runs_whole_and_in_shards() -> None:
    for shards in ("1", "2"):
        run = subprocess.run(
            [sys.executable, "benchmarks/matmul_floor.py", "--configs", "a", "--repeats", "1", "--shards", shards],
            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        )
        assert run.returncode == 0, run.stderr
        assert f"matrix products of one step, {shards} shard(s):" in run.stdout
