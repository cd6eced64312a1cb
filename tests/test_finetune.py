"""``--init_from CHECKPOINT``: the checkpoint's weights, a fresh optimizer and step 0; its model
shape and tokenizer (BPE kept, a character vocabulary kept and text outside it refused in one
line naming the characters); a fine-tuning run resumes; the resume and interrupt hints."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bevialm import checkpoint, model, runtime, train
from bevialm.train import TrainConfig
from tests.test_train import failing_at

ROOT = Path(__file__).resolve().parent.parent
DATA = str(ROOT / "data.txt")
BASE = TrainConfig(data=DATA, ctx=16, dim=16, layers=1, heads=2, mlp_hidden=32, batch=4, steps=4, eval_every=0,
                   eval_iters=1, log_every=0, sample_len=0, warmup=1)  # fmt: skip


def _quiet() -> object:
    return open(os.devnull, "w")  # noqa: SIM115


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base") / "run"
    train.train(replace(BASE, out=str(out)), stdout=_quiet())  # type: ignore[arg-type]
    return out


def _other_text(tmp_path: Path) -> str:
    """Another text in the same characters: data.txt's lines in reverse order."""
    lines = Path(DATA).read_text().splitlines(keepends=True)
    path = tmp_path / "other.txt"
    path.write_text("".join(reversed(lines)))
    return str(path)


def test_weights_from_the_checkpoint_fresh_optimizer_step_zero(base_run: Path, tmp_path: Path) -> None:
    cfg = replace(BASE, data=_other_text(tmp_path), init_from=str(base_run / "best.npz"), out=str(tmp_path / "ft"),
                  ctx=64, dim=64, dtype="float64")  # fmt: skip  # shape flags that differ: the checkpoint's win
    run = train.prepare(cfg, _quiet())  # type: ignore[arg-type]
    try:
        source = checkpoint.load_checkpoint(base_run / "best.npz").params
        assert run.snap.step == 0 and run.cfg.ctx == 16 and run.cfg.dim == 16
        for name, value in source.items():
            assert run.snap.params[name].dtype == np.float64
            np.testing.assert_array_equal(run.snap.params[name], value.astype(np.float64))
        assert all(not m.any() for m in run.snap.opt.m.values()) and run.snap.opt.t == 0
        assert run.data.init_note == "note: --init_from: the model's shape is the checkpoint's (--ctx 64 -> 16, --dim 64 -> 16)"
    finally:
        assert run.metrics is not None
        run.metrics.close()
        run.lock.release()


def test_a_fine_tuning_run_trains_resumes_and_writes_its_config(base_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    cfg = replace(BASE, data=_other_text(tmp_path), init_from=str(base_run / "best.npz"), out=str(out), steps=6)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "loss_and_grads", failing_at(3, KeyboardInterrupt()))
        with pytest.raises(runtime.Stopped):
            train.train(cfg, stdout=_quiet())  # type: ignore[arg-type]
    result = train.train(replace(cfg, resume=True), stdout=_quiet())  # type: ignore[arg-type]
    assert result.step == 6
    assert f'init_from = "{base_run / "best.npz"}"' in (out / "config.toml").read_text()
    assert checkpoint.load_checkpoint(out / "last.npz").tokenizer == checkpoint.load_checkpoint(base_run / "best.npz").tokenizer


def test_bpe_runs_keep_their_tokenizer(tmp_path: Path) -> None:
    base = replace(BASE, tokenizer="bpe", vocab_size=280, out=str(tmp_path / "bpe"), steps=2)
    train.train(base, stdout=_quiet())  # type: ignore[arg-type]
    (tmp_path / "new.txt").write_text("A text the tokenizer was not trained on, with ünïcode and digits 12345. " * 20)
    ft = replace(BASE, data=str(tmp_path / "new.txt"), init_from=str(tmp_path / "bpe" / "last.npz"), out=str(tmp_path / "ft"), steps=2)
    lines: list[str] = []

    class Out:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    train.train(ft, stdout=Out())  # type: ignore[arg-type]
    kept = checkpoint.load_checkpoint(tmp_path / "ft" / "last.npz").tokenizer
    assert kept == checkpoint.load_checkpoint(tmp_path / "bpe" / "last.npz").tokenizer
    text = "".join(lines)
    assert f"from '{tmp_path / 'bpe' / 'last.npz'}'" in text and "note: the text allows only" not in text
    assert "fine-tuning: weights from" in text and ", fresh optimizer, step 0" in text


def test_text_outside_a_char_vocabulary_is_refused_in_one_line(base_run: Path, tmp_path: Path) -> None:
    (tmp_path / "new.txt").write_text("Wherefore art thou; Romeo? " * 200)
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "--data", "new.txt", "--init_from", str(base_run / "best.npz")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr == (
        "error: data file 'new.txt' contains characters not in the vocabulary: ';'; fine-tuning keeps the "
        f"vocabulary of '{base_run / 'best.npz'}'\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt"]  # no run folder made


def test_a_bad_init_checkpoint_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "--data", DATA, "--init_from", "missing.npz"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "missing.npz" in done.stderr, done.stderr
    with pytest.raises(ValueError, match="init_from must be a checkpoint path or None"):
        replace(BASE, init_from="")


def test_resuming_a_char_run_on_other_data_names_the_data(base_run: Path, tmp_path: Path) -> None:
    (tmp_path / "new.txt").write_text("only a few letters here " * 100)
    cfg = replace(BASE, data=str(tmp_path / "new.txt"), out=str(base_run), resume=True)
    with pytest.raises(train.TrainError, match=rf"the run was trained on '{DATA}'; resume with --data {DATA}$"):
        train.train(cfg, stdout=_quiet())  # type: ignore[arg-type]


def test_an_interrupted_make_train_names_a_make_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BEVIALM_MAKE", "make train")
    monkeypatch.setenv("BEVIALM_MAKE_ARGS", "--steps 9 --overwrite")
    monkeypatch.setattr(model, "loss_and_grads", failing_at(2, KeyboardInterrupt()))
    with pytest.raises(runtime.Stopped) as stopped:
        train.train(replace(BASE, steps=9), stdout=_quiet())  # type: ignore[arg-type]
    run = Path("runs") / "run-001"
    assert str(stopped.value).endswith(f'continue with: make train ARGS="--steps 9 --resume --out {run}"')

