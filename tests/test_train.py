"""The trainer: logs, metrics, checkpoints, exact resume after Ctrl-C or a crash, independent
random streams, divergence, the run folder's rules and bad data. Tiny models, a few dozen steps."""

from __future__ import annotations

import io
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bevialm import checkpoint, model, runtime, train, train_report
from bevialm.checkpoint import CheckpointError, load_checkpoint
from bevialm.data import DataError
from bevialm.train import TrainConfig, TrainError, TrainingDiverged
from bevialm.types import Array

ROOT = Path(__file__).resolve().parent.parent
DATA = str(ROOT / "data.txt")
TIMING = {"time", "ms_per_step", "tokens_per_s"}


def tiny(out: Path, **overrides: Any) -> TrainConfig:
    fields: dict[str, Any] = {
        "data": DATA,
        "ctx": 16,
        "dim": 16,
        "layers": 1,
        "heads": 2,
        "mlp_hidden": 32,
        "dropout": 0.1,  # so the training stream drives dropout masks too
        "batch": 4,
        "steps": 30,
        "lr": 3e-3,
        "warmup": 5,
        "log_every": 5,
        "eval_every": 10,
        "eval_iters": 3,
        "sample_every": 15,
        "sample_len": 20,
        "out": str(out),
    }
    return TrainConfig(**{**fields, **overrides})


def run(cfg: TrainConfig) -> tuple[train.TrainResult, str]:
    stdout = io.StringIO()
    result = train.train(cfg, stdout=stdout)
    return result, stdout.getvalue()


def metrics(out: Path, *, timing: bool = False) -> list[dict[str, Any]]:
    lines = (out / train.METRICS).read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if timing or k not in TIMING} for line in lines]


def same_params(a: dict[str, Array], b: dict[str, Array]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


def failing_at(call: int, exc: BaseException | None = None) -> Callable[..., Any]:
    """``model.loss_and_grads`` that raises ``exc`` (or returns a NaN loss) on its ``call``-th call."""
    real = model.loss_and_grads
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        loss, grads = real(*args, **kwargs)
        if calls[0] == call:
            if exc is not None:
                raise exc
            return float("nan"), grads
        return loss, grads

    return wrapper


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, train.TrainResult, str]:
    """One uninterrupted tiny run that the other tests compare against."""
    out = tmp_path_factory.mktemp("reference")
    result, stdout = run(tiny(out))
    return out, result, stdout


def test_a_run_logs_evaluates_samples_and_writes_its_folder(reference: tuple[Path, train.TrainResult, str]) -> None:
    out, result, stdout = reference
    assert sorted(p.name for p in out.iterdir()) == ["best.npz", "config.toml", "last.npz", "metrics.jsonl"]
    records = metrics(out, timing=True)
    assert [(r["kind"], r["step"]) for r in records] == [
        ("train", 5), ("train", 10), ("eval", 10), ("train", 15), ("train", 20), ("eval", 20),
        ("train", 25), ("train", 30), ("eval", 30),
    ]  # fmt: skip
    assert set(records[0]) == {"kind", "step", "loss", "lr", "grad_norm", "ms_per_step", "tokens_per_s", "time"}
    assert set(records[2]) == {"kind", "step", "train_loss", "val_loss", "val_bpc", "lr", "time"}
    # one token per character: bits per character is the loss in bits
    assert records[2]["val_bpc"] == pytest.approx(records[2]["val_loss"] / math.log(2), rel=1e-12)
    assert result.val_bpc == pytest.approx(result.val_loss / math.log(2))  # type: ignore[operator]
    assert result.best_val_bpc == pytest.approx(result.best_val_loss / math.log(2))  # type: ignore[operator]
    assert f"({records[-1]['val_bpc']:.4f} bits/char)" in stdout
    assert records[0]["lr"] == pytest.approx(3e-3)  # update 4 (0-based) ends the 5-step warmup
    first, last = records[0]["loss"], records[-2]["loss"]
    assert first > last  # it learns: from ~ln(59) = 4.08 down
    assert result.step == 30 and result.val_loss == records[-1]["val_loss"]
    assert result.best_val_loss == min(r["val_loss"] for r in records if r["kind"] == "eval")
    for line in ("step  5/30 | loss ", "ms/step | ", " tok/s | ETA ", "step 10/30 | eval: train ", "new best",
                 "----- sample at step 15 -----", "----- sample at step 30 -----", "done: step 30/30",
                 "sample from it: ", " sample --checkpoint "):  # fmt: skip
        assert line in stdout, line
    last_ckpt, best_ckpt = load_checkpoint(out / "last.npz"), load_checkpoint(out / "best.npz")
    assert last_ckpt.step == 30 and last_ckpt.opt_state is not None and last_ckpt.opt_state.t == 30
    assert best_ckpt.opt_state is None and best_ckpt.step == result.best_step
    assert last_ckpt.train_config["steps"] == 30 and last_ckpt.model_config["n_heads"] == 2
    assert all(p.dtype == np.float32 for p in last_ckpt.params.values())


def test_ctrl_c_saves_and_resume_is_bit_identical(
    reference: tuple[Path, train.TrainResult, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref_out, ref_result, _ = reference
    cfg = tiny(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(model, "loss_and_grads", failing_at(18, KeyboardInterrupt()))
        stdout = io.StringIO()
        with pytest.raises(runtime.Stopped) as caught:
            train.train(cfg, stdout=stdout)
    assert str(caught.value) == (
        f"interrupted at step 17/30: saved {tmp_path / 'last.npz'}; continue with the same command and --resume"
    )
    assert not caught.value.terminated and "interrupted" not in stdout.getvalue()  # one message, the caller prints it
    assert load_checkpoint(tmp_path / "last.npz").step == 17

    result, stdout2 = run(replace(cfg, resume=True))
    assert "resuming from step 17 of last.npz" in stdout2
    assert metrics(tmp_path) == metrics(ref_out)  # every loss, lr and gradient norm, to the bit
    for name in ("last.npz", "best.npz"):
        a, b = load_checkpoint(tmp_path / name), load_checkpoint(ref_out / name)
        assert same_params(a.params, b.params), name
        assert a.step == b.step and a.best_val_loss == b.best_val_loss and a.rng_state == b.rng_state
    a_opt, b_opt = load_checkpoint(tmp_path / "last.npz").opt_state, load_checkpoint(ref_out / "last.npz").opt_state
    assert a_opt is not None and b_opt is not None and same_params(a_opt.m, b_opt.m) and same_params(a_opt.v, b_opt.v)
    assert (result.val_loss, result.best_val_loss, result.best_step) == (
        ref_result.val_loss,
        ref_result.best_val_loss,
        ref_result.best_step,
    )


def test_resume_after_a_crash_drops_the_lost_metrics_and_replays_them(
    reference: tuple[Path, train.TrainResult, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref_out = reference[0]
    cfg = tiny(tmp_path)
    with monkeypatch.context() as patch:  # a crash (not Ctrl-C) at step 27 saves nothing
        patch.setattr(model, "loss_and_grads", failing_at(27, MemoryError()))
        with pytest.raises(MemoryError):
            run(cfg)
    assert load_checkpoint(tmp_path / "last.npz").step == 20
    assert metrics(tmp_path)[-1]["step"] == 25  # logged after the last checkpoint
    with open(tmp_path / train.METRICS, "a", encoding="utf-8") as f:
        f.write('{"kind": "train", "st')  # a line cut short
    run(replace(cfg, resume=True))
    assert metrics(tmp_path) == metrics(ref_out)
    assert same_params(load_checkpoint(tmp_path / "last.npz").params, load_checkpoint(ref_out / "last.npz").params)


def test_ctrl_c_during_an_evaluation_saves_the_step_before_and_resume_redoes_it(
    reference: tuple[Path, train.TrainResult, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref_out = reference[0]
    cfg = tiny(tmp_path)
    real, calls = train.evaluate, [0]

    def interrupted_at_third_call(*args: Any) -> float:  # the train-split evaluation at step 20
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real(*args)

    with monkeypatch.context() as patch:
        patch.setattr(train, "evaluate", interrupted_at_third_call)
        with pytest.raises(runtime.Stopped, match="interrupted at step 19/30"):
            run(cfg)
    # step 20 ran, but its evaluation did not: saving step 20 would skip that evaluation for good
    assert load_checkpoint(tmp_path / "last.npz").step == 19
    run(replace(cfg, resume=True))
    assert metrics(tmp_path) == metrics(ref_out)
    for name in ("last.npz", "best.npz"):
        a, b = load_checkpoint(tmp_path / name), load_checkpoint(ref_out / name)
        assert same_params(a.params, b.params) and a.best_val_loss == b.best_val_loss, name


def test_ctrl_c_while_writing_best_keeps_best_and_its_loss_together(
    reference: tuple[Path, train.TrainResult, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref_out = reference[0]
    cfg = tiny(tmp_path)
    real = checkpoint.save_checkpoint
    saves: list[str] = []

    def interrupted_writing_best(path: Any, **kwargs: Any) -> None:
        saves.append(str(path))
        if len(saves) == 4:  # best.npz at step 20 (after last at step 0, best and last at step 10)
            raise KeyboardInterrupt
        real(path, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "save_checkpoint", interrupted_writing_best)
        with pytest.raises(KeyboardInterrupt):
            run(cfg)
    assert saves[3].endswith("best.npz")
    last = load_checkpoint(tmp_path / "last.npz")
    assert last.step == 19 and last.best_val_loss == load_checkpoint(tmp_path / "best.npz").best_val_loss
    run(replace(cfg, resume=True))
    assert metrics(tmp_path) == metrics(ref_out)
    assert same_params(load_checkpoint(tmp_path / "best.npz").params, load_checkpoint(ref_out / "best.npz").params)


def test_ctrl_c_before_the_first_step_can_be_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny(tmp_path, steps=3, eval_every=0, sample_len=0, eval_iters=1)
    with monkeypatch.context() as patch:
        patch.setattr(model, "loss_and_grads", failing_at(1, KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            run(cfg)
    assert load_checkpoint(tmp_path / "last.npz").step == 0
    result, _ = run(replace(cfg, resume=True))
    assert result.step == 3


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = checkpoint._write_archive
    calls = [0]

    def full_disk(file: Any, arrays: Any) -> None:
        calls[0] += 1
        if calls[0] > 3:  # last at step 0, best and last at step 10 fit, then the disk is full
            file.write(b"PK\x03\x04 partial")
            raise OSError(28, "No space left on device")
        real(file, arrays)

    monkeypatch.setattr(checkpoint, "_write_archive", full_disk)
    with pytest.raises(TrainError) as caught:
        run(tiny(tmp_path))
    message = str(caught.value)
    assert message.startswith(f"cannot write checkpoint '{tmp_path / 'best.npz'}': No space left on device;")
    assert f"the last good checkpoint is '{tmp_path / 'last.npz'}' (step 10)" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "config.toml", "last.npz", "metrics.jsonl"]  # no temp file
    assert load_checkpoint(tmp_path / "last.npz").step == 10


def test_resume_with_other_training_flags_says_so(reference: tuple[Path, train.TrainResult, str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    _, stdout = run(tiny(out, resume=True, steps=32, lr=1e-3))
    assert "note: --resume with flags that differ from the checkpoint's run (steps 30 -> 32, lr 0.003 -> 0.001)" in stdout
    _, stdout = run(tiny(out, resume=True, steps=32, lr=1e-3, log_every=1))
    assert "note:" not in stdout  # the checkpoint now records the new values; loop flags never count


def test_interrupt_message_says_how_to_resume_an_overwriting_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model, "loss_and_grads", failing_at(2, KeyboardInterrupt()))
    with pytest.raises(runtime.Stopped, match="continue with the same command and --resume in place of --overwrite$"):
        run(tiny(tmp_path, overwrite=True))


def test_evaluation_and_sampling_never_change_the_training_trajectory(
    reference: tuple[Path, train.TrainResult, str], tmp_path: Path
) -> None:
    ref_out = reference[0]
    run(tiny(tmp_path, eval_every=0, sample_every=0, sample_len=0, log_every=3, eval_iters=1))
    ours = load_checkpoint(tmp_path / "last.npz")
    assert same_params(ours.params, load_checkpoint(ref_out / "last.npz").params)
    assert [r["kind"] for r in metrics(tmp_path)].count("eval") == 1  # evaluation still runs at the end


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "loss_and_grads", failing_at(25))
    with pytest.raises(TrainingDiverged) as caught:
        run(tiny(tmp_path))
    message = str(caught.value)
    assert "training diverged at step 25/30 (loss nan" in message
    assert f"the last good checkpoint is '{tmp_path / 'last.npz'}' (step 20)" in message and "\n" not in message
    ckpt = load_checkpoint(tmp_path / "last.npz")
    assert ckpt.step == 20 and all(np.isfinite(p).all() for p in ckpt.params.values())


def test_a_nan_before_the_first_evaluation_keeps_the_starting_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "loss_and_grads", failing_at(3))
    with pytest.raises(TrainingDiverged, match=r"the last good checkpoint is '.*last.npz' \(step 0\)"):
        run(tiny(tmp_path))
    assert load_checkpoint(tmp_path / "last.npz").step == 0


def test_a_non_finite_evaluation_stops_without_saving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "evaluate", lambda *args: float("inf"))
    with pytest.raises(TrainingDiverged, match=r"evaluation loss train inf, val inf"):
        run(tiny(tmp_path))
    assert load_checkpoint(tmp_path / "last.npz").step == 0  # the start's, not the diverged step's


def test_float64_runs_and_the_folder_rules(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, dtype="float64", steps=4, eval_every=2, log_every=0, sample_len=0, eval_iters=1)
    result, stdout = run(cfg)
    assert result.step == 4 and "ms/step" not in stdout and "sample at" not in stdout  # log_every 0, sample_len 0
    assert load_checkpoint(tmp_path / "last.npz").params["lm_head.W"].dtype == np.float64
    with pytest.raises(TrainError, match="already holds a run .*pass --resume to continue it, --overwrite"):
        run(cfg)
    (tmp_path / "best.npz").unlink()
    result, _ = run(replace(cfg, overwrite=True, steps=2))
    assert result.step == 2 and (tmp_path / "best.npz").exists()  # rewritten by the new run
    _, stdout = run(replace(cfg, resume=True, steps=2))
    assert "nothing to do: the run is at step 2, --steps is 2" in stdout


def test_resume_refuses_what_it_cannot_continue(reference: tuple[Path, train.TrainResult, str], tmp_path: Path) -> None:
    ref_out = reference[0]
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"dim": 32, "heads": 2}, "was trained with another model: dim 16 in the checkpoint, 32 now"),
        ({"layers": 2}, "layers 1 in the checkpoint, 2 now"),
        ({"dtype": "float64"}, "holds float32 parameters, --dtype is float64"),
    ]
    for overrides, message in cases:
        with pytest.raises(TrainError, match=message):
            run(tiny(out, resume=True, steps=40, **overrides))
    other = tmp_path / "other.txt"
    other.write_text("completely different text! " * 200, encoding="utf-8")
    with pytest.raises(TrainError, match=r"\(characters, 16 tokens\) differs .* \(characters, 59 tokens\): the run was trained on '.*data.txt'; resume with --data .*data.txt$"):
        run(tiny(out, resume=True, data=str(other)))
    shutil.copy(out / "best.npz", out / "last.npz")  # parameters only
    with pytest.raises(TrainError, match="no optimizer or RNG state"):
        run(tiny(out, resume=True, steps=40))
    (out / "last.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        run(tiny(out, resume=True, steps=40))
    with pytest.raises(TrainError, match="no checkpoint .* to resume from"):
        run(tiny(tmp_path / "empty", resume=True))


def test_resume_checks_the_vocabulary(reference: tuple[Path, train.TrainResult, str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    text = (ROOT / "data.txt").read_text(encoding="utf-8")
    swapped = tmp_path / "swapped.txt"  # same size of vocabulary, one character replaced
    missing = sorted(set(text))[-1]
    swapped.write_text(text.replace(missing, "\u00e9"), encoding="utf-8")
    with pytest.raises(TrainError, match=r"the tokenizer made from .* \(characters, 59 tokens\) differs from the one"):
        run(tiny(out, resume=True, data=str(swapped)))


def test_unusable_run_folders_are_explained(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(TrainError, match="exists and is not a folder"):
        run(tiny(a_file))
    with pytest.raises(TrainError, match="cannot be written"):
        run(tiny(a_file / "run"))


def test_data_too_short_for_the_context(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 5, encoding="utf-8")  # 50 characters: 45 train, 5 val
    with pytest.raises(TrainError, match="its validation part has 5 characters of 50, at least ctx \\+ 1 = 17"):
        run(tiny(tmp_path / "run", data=str(short)))
    with pytest.raises(TrainError, match="its training part has 45 characters"):
        run(tiny(tmp_path / "run", data=str(short), ctx=64))
    with pytest.raises(DataError, match="does not exist"):
        run(tiny(tmp_path / "run", data=str(tmp_path / "missing.txt")))
    assert not (tmp_path / "run").exists()  # nothing is created for a run that cannot start


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ctx": 0}, "ctx must be a positive integer"),
        ({"batch": -1}, "batch must be a positive integer"),
        ({"warmup": -1}, "warmup must be an integer >= 0"),
        ({"log_every": 1.5}, "log_every must be an integer >= 0"),
        ({"heads": 3}, r"heads \(3\) must divide dim \(16\)"),
        ({"activation": "tanh"}, "activation must be one of"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"min_lr": 1.0}, r"min_lr \(1.0\) must lie between 0 and lr"),
        ({"dropout": 1.0}, r"train: dropout must be a probability in \[0, 1\)"),  # the model config's own check
        ({"beta2": 1.0}, r"beta2 must lie in \[0, 1\)"),
        ({"wd": float("inf")}, "wd must be a finite number >= 0"),
        ({"grad_clip": -1.0}, "grad_clip must be a finite number >= 0"),
        ({"top_p": 0.0}, r"top_p must lie in \(0, 1\]"),
        ({"resume": True, "overwrite": True}, "--overwrite deletes it: pass only one of them"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"tokenizer": "words"}, "tokenizer must be one of"),
        ({"vocab_size": 300}, "vocab_size applies to --tokenizer bpe"),
        ({"tokenizer": "bpe", "vocab_size": 100}, "vocab_size 100 is too small for a byte-level BPE"),
        ({"tokenizer": "bpe", "vocab_size": 300.0}, "vocab_size must be an integer"),
    ],
)
def test_train_config_rejects_bad_values(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path, **overrides)


def test_config_helpers(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, top_k=5, top_p=0.9)
    assert cfg.floor_lr == pytest.approx(3e-4) and replace(cfg, min_lr=0.0).floor_lr == 0.0
    assert cfg.sampling.top_k == 5 and cfg.sampling.top_p == 0.9
    assert tiny(tmp_path).sampling.top_k is None and tiny(tmp_path).sampling.top_p is None
    m = cfg.model_config(59)
    assert (m.vocab_size, m.n_layers, m.n_heads, m.dropout) == (59, 1, 2, 0.1)
    assert "eval_iters" in TrainConfig.field_names()
    assert train_report.clock(59.6) == "1:00" and train_report.clock(3725) == "1:02:05"


def test_evaluate_is_deterministic_and_in_evaluation_mode() -> None:
    cfg = model.ModelConfig(vocab_size=5, ctx=4, dim=8, n_layers=1, n_heads=1, mlp_hidden=8, dropout=0.5)
    params = model.init_params(cfg, np.random.default_rng(0))
    data = np.arange(40) % 5
    a = train.evaluate(params, cfg, data, 3, 4, np.random.default_rng(1))
    b = train.evaluate(params, cfg, data, 3, 4, np.random.default_rng(1))
    assert a == b and abs(a - np.log(5)) < 0.05  # a fresh model is about uniform


# --- byte-level BPE ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, train.TrainResult, str]:
    out = tmp_path_factory.mktemp("bpe")
    result, stdout = run(tiny(out, tokenizer="bpe", vocab_size=300, steps=20))
    return out, result, stdout


def test_a_bpe_run_trains_reports_bits_per_character_and_saves_its_tokenizer(
    bpe_reference: tuple[Path, train.TrainResult, str],
) -> None:
    out, result, stdout = bpe_reference
    assert "tokenizer byte-level BPE, 300 tokens, trained in" in stdout and "characters per token" in stdout
    ckpt = load_checkpoint(out / "last.npz")
    tok = ckpt.tokenizer
    assert tok.vocab_size == 300 and ckpt.model_config["vocab_size"] == 300
    text = (ROOT / "data.txt").read_text(encoding="utf-8")
    ids = tok.encode(text)
    n_val = int(len(ids) * 0.1 + 0.5)
    val_chars = tok.count_chars(ids[-n_val:])
    assert 3000 < val_chars < 4000  # about the last 10% of 36,184 characters
    record = metrics(out)[-1]
    assert record["val_bpc"] == pytest.approx(record["val_loss"] * n_val / val_chars / math.log(2), rel=1e-12)
    assert record["val_bpc"] < record["val_loss"] / math.log(2)  # a token is more than one character
    assert result.val_bpc == pytest.approx(record["val_bpc"])
    assert "----- sample at step 20 -----" in stdout


def test_a_bpe_run_resumes_bit_identically_and_samples(
    bpe_reference: tuple[Path, train.TrainResult, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref_out = bpe_reference[0]
    cfg = tiny(tmp_path, tokenizer="bpe", vocab_size=300, steps=20)
    with monkeypatch.context() as patch:
        patch.setattr(model, "loss_and_grads", failing_at(13, KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            run(cfg)
    assert load_checkpoint(tmp_path / "last.npz").step == 12
    run(replace(cfg, resume=True))
    assert metrics(tmp_path) == metrics(ref_out)
    for name in ("last.npz", "best.npz"):
        assert same_params(load_checkpoint(tmp_path / name).params, load_checkpoint(ref_out / name).params)

    from bevialm import generate

    loaded = generate.load_model(tmp_path / "best.npz")
    prompt = "MARA: ünïcödé 日本 😀"  # characters data.txt never had: bytes encode them
    texts = generate.sample_text(loaded.params, loaded.cfg, loaded.tokenizer, prompt, 40, num_samples=3,
                                 rng=generate.sampling_rng(0))  # fmt: skip
    for t in texts:
        assert t.startswith(prompt) and "\ufffd" not in t


def test_resuming_a_bpe_run_with_another_tokenizer_is_refused(
    bpe_reference: tuple[Path, train.TrainResult, str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(bpe_reference[0], out)
    with pytest.raises(TrainError, match=r"\(characters, 59 tokens\) differs .* \(byte-level BPE, 300 tokens\): the data or --tokenizer/--vocab_size changed$"):
        run(tiny(out, resume=True, steps=20))
    text = (ROOT / "data.txt").read_text(encoding="utf-8")
    other = tmp_path / "other.txt"
    other.write_text(text[::-1], encoding="utf-8")
    with pytest.raises(TrainError, match=r"tokenizer made from .* \(byte-level BPE, 300 tokens\) differs from the one"):
        run(tiny(out, resume=True, steps=20, tokenizer="bpe", vocab_size=300, data=str(other)))


def test_a_text_that_allows_fewer_merges_says_so(tmp_path: Path) -> None:
    data = tmp_path / "abc.txt"
    data.write_text("abc abc abc\n" * 40, encoding="utf-8")
    _, stdout = run(tiny(tmp_path / "run", data=str(data), tokenizer="bpe", vocab_size=1000, steps=2, ctx=4,
                         eval_every=0, sample_len=0))  # fmt: skip
    assert "note: the text allows only" in stdout and "not --vocab_size 1,000" in stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"heads": 3, "dim": 16}, r"train: heads \(3\) must divide dim \(16\)"),
        ({"layers": 0}, "train: layers must be a positive integer, got 0"),
        ({"ctx": -1}, "train: ctx must be a positive integer, got -1"),
        ({"activation": "tanh"}, "train: activation must be one of"),
    ],
)
def test_model_flags_are_checked_by_the_model_config_in_the_flags_names(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="unused.txt", **flags)
