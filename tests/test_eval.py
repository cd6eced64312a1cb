"""``bevialm eval``: every token after the first scored once, the same numbers whatever the batch,
equal to a direct computation; unseen characters named, never guessed; --json; bad input in one
line through the real command line."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bevialm import evaluate, model
from bevialm.data import Vocab
from bevialm.model import ModelConfig
from tests.test_export import write_checkpoint

BEVIALM = [sys.executable, "-m", "bevialm"]
CFG = ModelConfig(vocab_size=11, ctx=8, dim=12, n_layers=2, n_heads=3, mlp_hidden=20, activation="gelu")


@pytest.mark.parametrize("n", [2, 8, 9, 10, 17, 30])
def test_windows_score_every_token_after_the_first_once(n: int) -> None:
    ids = np.arange(n)
    parts = evaluate.windows(ids, 8)
    targets = np.concatenate([y.ravel() for _, y in parts])
    np.testing.assert_array_equal(targets, ids[1:])
    for x, y in parts:
        np.testing.assert_array_equal(x + 1, y)  # each input predicts the token after it


def _direct_nats(params: dict[str, np.ndarray], ids: np.ndarray) -> float:
    """The summed -log p of every token after the first, window by window, one window at a time."""
    total = 0.0
    for start in range(0, len(ids) - 1, CFG.ctx):
        x = ids[start : start + CFG.ctx][None, : len(ids) - 1 - start]
        logits, _ = model.forward(params, x, CFG)
        logits = logits[0] - logits[0].max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        y = ids[start + 1 : start + 1 + x.shape[1]]
        total -= float(logp[np.arange(len(y)), y].sum())
    return total


def test_the_numbers_are_a_direct_computation_for_any_batch(tmp_path: Path) -> None:
    params = write_checkpoint(tmp_path / "c.npz", CFG, np.float64)
    ids = np.random.default_rng(0).integers(0, CFG.vocab_size, 43)
    expected = _direct_nats(params, ids)
    for batch in (1, 2, 7):
        ev = evaluate.evaluate_ids(params, CFG, ids, lambda a: int(a.size), batch)
        assert ev.tokens == ev.characters == 42
        assert ev.nats == pytest.approx(expected, rel=1e-12)
    assert ev.loss == pytest.approx(expected / 42, rel=1e-12)
    assert ev.bits_per_char == pytest.approx(ev.loss / math.log(2), rel=1e-12)  # one character per token
    assert ev.perplexity == pytest.approx(math.exp(ev.loss), rel=1e-12)


def test_bits_per_character_count_the_characters_the_tokens_cover() -> None:
    ev = evaluate.Evaluation(tokens=10, characters=40, nats=20.0)
    assert ev.bits_per_char == pytest.approx(20.0 / 40 / math.log(2))
    assert ev.perplexity == pytest.approx(math.exp(2.0))
    assert evaluate.Evaluation(tokens=1, characters=1, nats=1e4).perplexity == math.inf
    assert evaluate.as_json(evaluate.Evaluation(1, 1, 1e4), "c", 0, "d")["perplexity"] is None


def test_progress_lines_only_on_long_texts() -> None:
    clock = iter([0.0, 0.5, 1.5, 1.7, 3.0, 3.1])
    lines: list[str] = []
    progress = evaluate.progress_printer(lines.append, is_tty=False, clock=lambda: next(clock))
    for done in (10, 20, 30, 40, 50):
        progress(done, 50)
    assert lines == ["scored 20 of 50 tokens (40%, 2 s)\n", "scored 40 of 50 tokens (80%, 3 s)\n", "scored 50 of 50 tokens (100%, 3 s)\n"]
    short: list[str] = []
    quick = evaluate.progress_printer(short.append, is_tty=True, clock=lambda: 0.0)
    quick(5, 5)
    assert short == []  # a text scored in under a second prints no progress


def test_eval_prints_one_line_or_json(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "c.npz", CFG)
    (tmp_path / "t.txt").write_text("abcabcabcdefghijkkkk" * 3)
    done = subprocess.run([*BEVIALM, "eval", "--checkpoint", "c.npz", "--data", "t.txt", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["tokens"] == result["characters"] == 59 and result["step"] == 7
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    done = subprocess.run([*BEVIALM, "eval", "--checkpoint", "c.npz", "--data", "t.txt"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.stdout.startswith("t.txt with c.npz (step 7): loss ")
    assert f"{result['bits_per_char']:.4f} bits/char" in done.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc\u00e9xyzq", r"error: text 't.txt' contains characters not in the vocabulary: 'é', 'x', 'y', 'z', 'q'; "
         r"the run never saw them, so the model cannot score them$"),
        ("a", r"error: the text has 1 token\(s\): at least 2 are needed to score one$"),
        ("", r"error: text 't.txt' is empty"),
    ],
)  # fmt: skip
def test_bad_texts_get_one_line(tmp_path: Path, text: str, expected: str) -> None:
    write_checkpoint(tmp_path / "c.npz", CFG)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    done = subprocess.run([*BEVIALM, "eval", "--checkpoint", "c.npz", "--data", "t.txt"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert re.match(expected, done.stderr), done.stderr
    assert done.stdout == ""


def test_a_char_model_names_what_it_never_saw() -> None:
    with pytest.raises(ValueError, match=r"contains characters not in the vocabulary: 'z'"):
        Vocab(tuple("ab")).encode("abz", what="text 't.txt'")


def test_eval_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bevialm import cli

    write_checkpoint(tmp_path / "c.npz", CFG)
    (tmp_path / "t.txt").write_text("abcdefghijk" * 4)
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "c.npz"), "--data", str(tmp_path / "t.txt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 43
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "c.npz"), "--data", str(tmp_path / "t.txt"), "--batch", "2"]) == 0
    assert "(43 tokens, 43 characters scored)" in capsys.readouterr().out
    (tmp_path / "t.txt").write_text("abz")
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "c.npz"), "--data", str(tmp_path / "t.txt")]) == 1
    assert capsys.readouterr().err.endswith("'z'; the run never saw them, so the model cannot score them\n")
