"""Reading metrics.jsonl written by something else (bevialm.metrics): every malformed record is
skipped and counted, never a traceback; through ``bevialm plot`` one note line and the picture."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bevialm import metrics

CLI = [sys.executable, "-m", "bevialm.cli"]

GOOD = [
    '{"kind": "train", "step": 10, "loss": 4.0, "lr": 0.001, "time": 1.0}\n',
    '{"kind": "eval", "step": 10, "train_loss": 3.9, "val_loss": 4.1, "lr": 0.001}\n',
    '{"kind": "train", "step": 20, "loss": 3.5, "lr": 0.002, "note": "other fields are kept"}\n',
]

MALFORMED = [
    '{"kind": "train", "loss": 4.0}\n',  # no step
    '{"kind": "eval", "val_loss": 4.0}\n',  # no step
    '{"kind": "train", "step": "10", "loss": 4.0}\n',  # a string step
    '{"kind": "train", "step": 10, "loss": "4.0"}\n',  # a string loss
    '{"kind": "eval", "step": 10, "val_loss": [1]}\n',  # a list for a number
    '{"kind": "train", "step": true, "loss": 4.0}\n',  # a boolean is not a step
    '{"kind": "train", "step": 2.5, "loss": 4.0}\n',  # a step is whole
    '{"kind": "train", "step": -1, "loss": 4.0}\n',
    '{"kind": "train", "step": NaN, "loss": 4.0}\n',
    '{"kind": "train", "step": 10}\n',  # a train record without its loss
    '{"kind": "other", "step": 10}\n',
    '{"step": 10, "loss": 1.0}\n',  # no kind
    "[1, 2, 3]\n",
    "not json at all\n",
    "[" * 100_000 + "\n",  # deep enough to exhaust the parser's recursion
]


def test_good_records_are_kept_in_order_with_their_fields() -> None:
    found = metrics.read_records(GOOD)
    assert found.skipped == 0
    assert [r["step"] for r in found.records] == [10, 10, 20]
    assert found.records[2]["note"] == "other fields are kept"


@pytest.mark.parametrize("line", MALFORMED, ids=range(len(MALFORMED)))
def test_each_malformed_record_is_refused(line: str) -> None:
    assert metrics.parse_record(line) is None


def test_malformed_records_are_counted_blank_lines_and_a_line_being_written_are_not() -> None:
    lines = [GOOD[0], *MALFORMED, "\n", GOOD[1], '{"kind": "train", "st']
    found = metrics.read_records(lines)
    assert [r["kind"] for r in found.records] == ["train", "eval"]
    assert found.skipped == len(MALFORMED)


def test_the_note_counts_and_is_silent_for_none() -> None:
    assert metrics.skipped_note("m.jsonl", 0) is None
    assert metrics.skipped_note("m.jsonl", 1) == (
        "note: skipped 1 line of 'm.jsonl' that are not metrics records (cut short, or written by something else)"
    )
    assert "skipped 3 lines of 'm.jsonl'" in str(metrics.skipped_note("m.jsonl", 3))


def test_plot_skips_foreign_records_with_one_note_through_the_real_command_line(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join([GOOD[0], *MALFORMED, GOOD[1], GOOD[2]]), encoding="utf-8")
    proc = subprocess.run([*CLI, "plot", str(run)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (
        f"note: skipped {len(MALFORMED)} lines of '{run}/metrics.jsonl' that are not metrics records "
        "(cut short, or written by something else)\n"
    )
    assert proc.stdout.startswith(f"wrote loss curves to {run}/loss.png")
    assert (run / "loss.png").stat().st_size > 0


def test_plot_of_only_foreign_records_is_one_error_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(MALFORMED[:3]), encoding="utf-8")
    proc = subprocess.run([*CLI, "plot", str(run)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr == f"error: '{run}/metrics.jsonl' holds no metrics: none of its 3 lines is a metrics record\n"
