"""Issue 19's pictures: `bevialm plot --bpc` (bits per character, the tokenizer named in the
legend) and attention figures of one layer that wrap its heads to stay a page wide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bevialm import cli, viz
from tests.board_fixtures import tiny_run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("plot-bpc")
    chars, bpe = base / "chars", base / "bpe"
    tiny_run(chars, sample_len=0)
    tiny_run(bpe, tokenizer="bpe", vocab_size=300, sample_len=0)
    return chars, bpe


def evals(run: Path) -> list[dict[str, float]]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]


def test_bpc_curves_are_the_recorded_bits_per_character_and_the_legend_names_each_tokenizer(two_runs: tuple[Path, Path]) -> None:
    chars, bpe = two_runs
    runs = [viz.in_bits_per_char(viz.read_metrics(str(r)), viz.bits_per_char_factor(str(r))) for r in two_runs]
    for run, m in zip(two_runs, runs, strict=True):
        np.testing.assert_allclose(m.eval_val, [e["val_bpc"] for e in evals(run)], rtol=1e-12)
    fig = viz.loss_figure(runs, tokenizers=[viz.run_tokenizer(str(r)) for r in two_runs], bpc=True)
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert f"{chars} (characters, 59 tokens)" in legend and f"{bpe} (byte-level BPE, 300 tokens)" in legend
    assert fig.axes[0].get_ylabel().startswith("bits per character")
    # the character run's factor is 1 / ln 2 exactly: one token per character
    assert viz.bits_per_char_factor(str(chars)) == pytest.approx(1 / np.log(2), rel=1e-12)


def test_plot_bpc_through_the_command_line(two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bpc.png"
    assert cli.main(["plot", *map(str, two_runs), "--bpc", "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote loss curves in bits per character to {out}")
    no_eval = tmp_path / "young"
    no_eval.mkdir()
    (no_eval / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 4.0}) + "\n" + "not json\n")
    assert cli.main(["plot", str(no_eval), "--bpc", "-o", str(tmp_path / "x.png")]) == 1
    assert "has no evaluation with bits per character yet" in capsys.readouterr().err
    assert viz.run_tokenizer(str(no_eval)) is None  # no checkpoint: the legend names the folder alone


def test_one_layers_heads_wrap_to_a_page_width_each_row_labelled() -> None:
    rng = np.random.default_rng(0)
    t, heads = 30, 4
    w = rng.random((2, heads, t, t))
    w /= w.sum(-1, keepdims=True)
    tokens = [chr(ord("a") + i % 26) for i in range(t)]
    fig = viz.prompt_attention_figure(w, tokens, layer=2)
    width, _ = fig.get_size_inches()
    assert width <= 10.0
    maps = [ax for ax in fig.axes if ax.images]
    columns = sorted({round(ax.get_position().x0, 3) for ax in maps})
    rows = sorted({round(ax.get_position().y0, 3) for ax in maps})
    assert (len(columns), len(rows)) == (2, 2)
    for ax in maps:  # every map has its own key labels under it
        assert [a.get_text() for a in ax.texts if a.get_label() == "x-token"] == tokens
    whole = viz.prompt_attention_figure(w, tokens)  # several layers: a row each, as before
    assert len({round(ax.get_position().y0, 3) for ax in whole.axes if ax.images}) == 2
