"""The command line: the playbook's flags and defaults, one definition shared by ``main.py``,
``bevialm train`` and ``bevialm sample``, exit codes, and every bad input through the real
command line (subprocesses: one clear line, no traceback)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bevialm import cli, cli_args, model
from bevialm.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DATA = str(ROOT / "data.txt")
MAIN = str(ROOT / "main.py")
TINY = ["--ctx", "16", "--dim", "16", "--layers", "1", "--heads", "2", "--mlp_hidden", "32", "--batch", "4"]
FAST = ["--log_every", "5", "--eval_every", "10", "--eval_iters", "2", "--sample_len", "20", "--warmup", "2"]


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}


def subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = sub.choices[name]
    return found


# --- flags ----------------------------------------------------------------------------------------

APPENDIX_C = {
    "seed": 42, "ctx": 128, "dim": 128, "layers": 2, "mlp_hidden": 512, "batch": 16, "steps": 5000,
    "lr": 3e-4, "wd": 0.1, "log_every": 200, "sample_every": 1000, "sample_len": 400,
}  # fmt: skip
OURS = {
    "heads": 1, "activation": "relu", "dropout": 0.0, "warmup": 100, "min_lr": None, "beta2": 0.95,
    "grad_clip": 1.0, "eval_every": 500, "eval_iters": 50, "out": None, "resume": False,
    "overwrite": False, "dtype": "float32", "temperature": 1.0, "top_k": 0, "top_p": 1.0,
}  # fmt: skip


def test_main_py_has_every_appendix_c_flag_with_its_default() -> None:
    args = cli.train_parser().parse_args(["--data", "d.txt"])
    assert args.data == "d.txt"
    for name, default in {**APPENDIX_C, **OURS}.items():
        assert getattr(args, name) == default, name
    with pytest.raises(SystemExit):
        cli.train_parser().parse_args([])  # --data is required


def test_train_and_main_py_share_one_definition_and_every_flag_has_help() -> None:
    main_py, train_sub, sample_sub = options(cli.train_parser()), options(subparser("train")), options(subparser("sample"))
    assert main_py.keys() == train_sub.keys()
    for flag, action in main_py.items():
        assert action.help and len(action.help) > 15, flag
        assert (action.default, action.help, action.type) == (train_sub[flag].default, train_sub[flag].help, train_sub[flag].type)
    shared = {"--seed", "--out", "--sample_len", "--temperature", "--top_k", "--top_p"}
    assert shared <= sample_sub.keys() and shared <= main_py.keys()
    for flag in shared:  # one definition; --out and --sample_len word their help for each command
        assert sample_sub[flag].default == main_py[flag].default
        assert (sample_sub[flag].help == main_py[flag].help) == (flag not in {"--out", "--sample_len"}), flag
    for flag, action in sample_sub.items():
        assert action.help, flag
    assert {"--checkpoint", "--prompt", "--prompt_file", "--num_samples"} <= sample_sub.keys()


def test_grading_subcommands_are_wired_in() -> None:
    from bevialm.grading import cli as grading_cli

    parser = cli.build_parser()
    assert parser.parse_args(["skeleton", "out"]).handler is grading_cli.cmd_skeleton
    assert parser.parse_args(["grade", "--list-checks"]).handler is grading_cli.cmd_grade
    assert parser.parse_args(["autograder", "a.zip"]).handler is grading_cli.cmd_autograder


@pytest.mark.parametrize(
    ("convert", "text", "expected"),
    [
        (cli_args.positive_int, "3", 3),
        (cli_args.positive_int, "0", "must be a positive integer, got '0'"),
        (cli_args.positive_int, "2.5", "expected an integer, got '2.5'"),
        (cli_args.non_negative_int, "0", 0),
        (cli_args.non_negative_int, "-1", "must be an integer >= 0"),
        (cli_args.positive_float, "1e-3", 1e-3),
        (cli_args.positive_float, "0", "must be a positive number"),
        (cli_args.positive_float, "nan", "must be a finite number"),
        (cli_args.positive_float, "fast", "expected a number, got 'fast'"),
        (cli_args.non_negative_float, "0", 0.0),
        (cli_args.non_negative_float, "-0.5", "must be a number >= 0"),
        (cli_args.probability, "0.5", 0.5),
        (cli_args.probability, "1", r"must lie in [0, 1)"),
        (cli_args.top_p_value, "1", 1.0),
        (cli_args.top_p_value, "0", r"must lie in (0, 1]"),
    ],
)
def test_argument_types(convert: Any, text: str, expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(argparse.ArgumentTypeError) as caught:
            convert(text)
        assert expected in str(caught.value)
    else:
        assert convert(text) == expected


# --- in-process runs (exit codes) ---------------------------------------------------------------------


def test_train_then_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "run")
    assert cli.main(["train", "--data", DATA, *TINY, *FAST, "--steps", "10", "--out", out, "--top_k", "5"]) == 0
    assert "done: step 10/10" in capsys.readouterr().out
    code = cli.main(["sample", "--out", out, "--prompt", "MARA:", "--num_samples", "2", "--sample_len", "15", "--top_p", "0.9"])
    printed = capsys.readouterr().out
    assert code == 0 and "--- sample 1/2 ---" in printed and "--- sample 2/2 ---" in printed
    assert sum(line.startswith("MARA:") for line in printed.splitlines()) == 2
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("TOBIAS:\n", encoding="utf-8")
    argv = ["sample", "--checkpoint", str(tmp_path / "run" / "last.npz"), "--prompt_file", str(prompt), "--temperature", "0"]
    assert cli.main([*argv, "--sample_len", "30"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("TOBIAS:\n") and len(first) == len("TOBIAS:\n") + 30 + 1
    assert cli.main([*argv, "--sample_len", "30", "--seed", "7"]) == 0 and capsys.readouterr().out == first  # greedy
    argv[-3] = str(tmp_path / "nope.txt")
    assert cli.main(argv) == 1
    assert capsys.readouterr().err == f"error: prompt file '{tmp_path / 'nope.txt'}' does not exist\n"


def test_a_bpe_model_trains_and_samples_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "run")
    argv = ["train", "--data", DATA, *TINY, *FAST, "--steps", "10", "--out", out, "--tokenizer", "bpe", "--vocab_size", "300"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "tokenizer byte-level BPE, 300 tokens" in printed and "bits/char)" in printed
    prompt = "MARA: 日本 😀"  # characters data.txt never had
    assert cli.main(["sample", "--out", out, "--prompt", prompt, "--sample_len", "25", "--num_samples", "2"]) == 0
    printed = capsys.readouterr().out
    assert sum(line.startswith(prompt) for line in printed.splitlines()) == 2 and "\ufffd" not in printed


def test_main_py_entry_point_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data", DATA, *TINY, *FAST, "--steps", "5", "--out", str(tmp_path)]
    assert cli.train_main(argv, prog="main.py") == 0
    assert "step 5/5 | loss" in capsys.readouterr().out


def test_divergence_exits_3_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = model.loss_and_grads
    monkeypatch.setattr(model, "loss_and_grads", lambda *a, **k: (float("nan"), real(*a, **k)[1]))
    assert cli.main(["train", "--data", DATA, *TINY, *FAST, "--steps", "5", "--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: training diverged at step 1/5") and err.count("\n") == 1


def test_ctrl_c_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = model.loss_and_grads
    calls = [0]

    def interrupting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "loss_and_grads", interrupting)
    assert cli.main(["train", "--data", DATA, *TINY, *FAST, "--steps", "9", "--out", str(tmp_path)]) == 130
    captured = capsys.readouterr()
    assert "interrupted" not in captured.out  # one message, on stderr
    assert captured.err == f"interrupted at step 3/9: saved {tmp_path / 'last.npz'}; continue with the same command and --resume\n"
    monkeypatch.setattr(model, "loss_and_grads", real)
    assert cli.main(["train", "--data", DATA, *TINY, *FAST, "--steps", "9", "--out", str(tmp_path), "--resume"]) == 0
    assert load_checkpoint(tmp_path / "last.npz").step == 9


def test_errors_are_one_line_unless_debugging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.txt")
    assert cli.main(["train", "--data", missing, "--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err == f"error: data file '{missing}' does not exist\n"
    monkeypatch.setenv("BEVIALM_DEBUG", "1")
    with pytest.raises(ValueError, match="does not exist"):
        cli.main(["train", "--data", missing])


# --- the real command line ----------------------------------------------------------------------------

PYTHON = [sys.executable]
SAMPLE = [sys.executable, "-m", "bevialm.cli", "sample"]


def train_cmd(*flags: str) -> list[str]:
    return [*PYTHON, MAIN, *TINY, *flags]


BAD_INPUTS: list[tuple[str, list[str], int, str]] = [
    # (id, argv with {tmp}, exit code, expected text in the error line)
    ("dim-zero", train_cmd("--data", DATA, "--dim", "0"), 2, "argument --dim: must be a positive integer, got '0'"),
    ("ctx-negative", train_cmd("--data", DATA, "--ctx", "-3"), 2, "argument --ctx: must be a positive integer, got '-3'"),
    ("steps-not-a-number", train_cmd("--data", DATA, "--steps", "many"), 2, "argument --steps: expected an integer"),
    ("lr-nan", train_cmd("--data", DATA, "--lr", "nan"), 2, "argument --lr: must be a finite number"),
    ("dropout-one", train_cmd("--data", DATA, "--dropout", "1"), 2, "argument --dropout: must lie in [0, 1)"),
    ("seed-negative", train_cmd("--data", DATA, "--seed", "-1"), 2, "argument --seed: must be an integer >= 0, got '-1'"),
    ("steps-fractional", train_cmd("--data", DATA, "--steps", "2.5"), 2, "argument --steps: expected an integer, got '2.5'"),
    ("dim-1e9-as-written", train_cmd("--data", DATA, "--dim", "1e9"), 1, "GiB of memory"),  # 1e9 is read as 10^9
    ("unknown-flag", train_cmd("--data", DATA, "--stepz", "3"), 2, "unrecognized arguments: --stepz 3"),
    ("resume-and-overwrite", train_cmd("--data", DATA, "--resume", "--overwrite"), 1, "pass only one of them"),
    ("no-data-flag", train_cmd(), 2, "the following arguments are required: --data"),
    ("heads-not-dividing-dim", train_cmd("--data", DATA, "--heads", "3"), 1, "error: train: heads (3) must divide dim (16)"),
    ("min-lr-above-lr", train_cmd("--data", DATA, "--min_lr", "0.1"), 1, "error: train: min_lr (0.1) must lie between 0 and lr"),
    ("data-too-short", train_cmd("--data", "{tmp}/short.txt", "--out", "{tmp}/r1"), 1, "is too short for --ctx 16"),
    ("data-missing", train_cmd("--data", "{tmp}/nope.txt"), 1, "error: data file '{tmp}/nope.txt' does not exist"),
    ("data-empty", train_cmd("--data", "{tmp}/empty.txt"), 1, "error: data file '{tmp}/empty.txt' is empty"),
    ("data-not-utf8", train_cmd("--data", "{tmp}/latin1.txt"), 1, "is not valid UTF-8 (byte 0xe9 at offset 3)"),
    ("data-a-directory", train_cmd("--data", "{tmp}"), 1, "is a directory, not a file"),
    ("out-unwritable", train_cmd("--data", DATA, "--out", "{tmp}/short.txt/run"), 1, "run folder '{tmp}/short.txt/run' cannot be written"),
    ("out-a-file", train_cmd("--data", DATA, "--out", "{tmp}/short.txt"), 1, "exists and is not a folder"),
    ("resume-nothing", train_cmd("--data", DATA, "--out", "{tmp}/r2", "--resume"), 1, "there is no checkpoint '{tmp}/r2/last.npz' to resume from"),
    ("resume-corrupt", train_cmd("--data", DATA, "--out", "{tmp}/corrupt", "--resume"), 1, "is not a BeviaLLM checkpoint (not an .npz/zip file)"),
    ("sample-corrupt", [*SAMPLE, "--checkpoint", "{tmp}/corrupt/last.npz"], 1, "error: checkpoint '{tmp}/corrupt/last.npz' is not a BeviaLLM checkpoint"),
    ("sample-missing", [*SAMPLE, "--out", "{tmp}/nothing"], 1, "error: checkpoint '{tmp}/nothing/last.npz' does not exist"),
    ("sample-top-p-zero", [*SAMPLE, "--top_p", "0"], 2, "argument --top_p: must lie in (0, 1]"),
    ("sample-seed-negative", [*SAMPLE, "--seed", "-5"], 2, "argument --seed: must be an integer >= 0"),
    ("sample-two-prompts", [*SAMPLE, "--prompt", "a", "--prompt_file", "b"], 2, "not allowed with argument"),
    # tokenizers
    ("bpe-data-empty", train_cmd("--data", "{tmp}/empty.txt", "--tokenizer", "bpe"), 1, "error: data file '{tmp}/empty.txt' is empty"),
    ("vocab-size-junk", train_cmd("--data", DATA, "--tokenizer", "bpe", "--vocab_size", "lots"), 2, "argument --vocab_size: expected an integer, got 'lots'"),
    ("vocab-size-zero", train_cmd("--data", DATA, "--tokenizer", "bpe", "--vocab_size", "0"), 2, "argument --vocab_size: must be a positive integer"),
    ("vocab-size-below-256", train_cmd("--data", DATA, "--tokenizer", "bpe", "--vocab_size", "100"), 1, "error: train: vocab_size 100 is too small for a byte-level BPE: its first 256 tokens are the byte values"),
    ("vocab-size-without-bpe", train_cmd("--data", DATA, "--vocab_size", "300"), 1, "error: train: vocab_size applies to --tokenizer bpe"),
    ("tokenizer-unknown", train_cmd("--data", DATA, "--tokenizer", "words"), 2, "argument --tokenizer: invalid choice: 'words'"),
    ("sample-corrupt-tokenizer", [*SAMPLE, "--checkpoint", "{tmp}/badtok.npz"], 1, "header field 'tokenizer' is invalid (BPE: merge 1 is (97, 999), but only tokens 0..256 exist before it)"),
    ("resume-corrupt-tokenizer", train_cmd("--data", DATA, "--out", "{tmp}/badtok", "--resume", "--tokenizer", "bpe"), 1, "header field 'tokenizer' is invalid (BPE: merge 1"),
]


def _write_checkpoint_with_a_corrupt_tokenizer(path: Path) -> None:
    """A BPE model's checkpoint whose tokenizer refers to a token that does not exist yet."""
    import json

    import numpy as np

    from bevialm.checkpoint import make_header, save_checkpoint
    from bevialm.optim import init_state
    from bevialm.tokenizer import BPETokenizer

    cfg = model.ModelConfig(vocab_size=258, ctx=16, dim=16, n_layers=1, n_heads=2, mlp_hidden=32)
    params = model.init_params(cfg, np.random.default_rng(0))
    tok = BPETokenizer(((97, 98), (97, 256)))
    header = make_header(model_config=dataclasses.asdict(cfg), tokenizer=tok, step=1, rng=np.random.default_rng(1))
    save_checkpoint(path, params=params, header=header, opt_state=init_state(params))
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    fields = json.loads(arrays["header"].tobytes())
    fields["tokenizer"]["merges"][1] = [97, 999]
    arrays["header"] = np.frombuffer(json.dumps(fields).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, subprocess.CompletedProcess[str]]]]:
    """Every bad-input command, started all at once (each is mostly interpreter start-up)."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "short.txt").write_text("to be or not to be\n", encoding="utf-8")
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "latin1.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    (tmp / "corrupt").mkdir()
    (tmp / "corrupt" / "last.npz").write_bytes(b"this is not a checkpoint")
    (tmp / "badtok").mkdir()
    _write_checkpoint_with_a_corrupt_tokenizer(tmp / "badtok" / "last.npz")
    shutil.copy(tmp / "badtok" / "last.npz", tmp / "badtok.npz")
    procs = {}
    for case_id, argv, _, _ in BAD_INPUTS:
        cmd = [a.replace("{tmp}", str(tmp)) for a in argv]
        procs[case_id] = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for case_id, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[case_id] = (str(tmp), subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    yield results


@pytest.mark.parametrize(("case_id", "argv", "code", "expected"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_through_the_real_command_line(
    bad_input_runs: dict[str, tuple[str, subprocess.CompletedProcess[str]]], case_id: str, argv: list[str], code: int, expected: str
) -> None:
    tmp, done = bad_input_runs[case_id]
    err = done.stderr
    assert done.returncode == code, err
    assert "Traceback" not in err and done.stdout == ""
    lines = err.strip().splitlines()
    last = lines[-1]
    assert len(lines) == 1, err
    if code == 2:  # argparse: one line too, naming the program and --help
        assert ": error: " in last and last.endswith("--help)")
    else:
        assert last.startswith("error: ")
    assert expected.replace("{tmp}", tmp) in last


def test_ctrl_c_on_a_real_training_process_saves_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = train_cmd("--data", DATA, "--out", str(out), "--log_every", "1", "--eval_iters", "1", "--sample_len", "0")
    # SIGINT back to its default in the child: a suite run as a background job of a
    # non-interactive shell inherits SIGINT ignored, and the child would never see the Ctrl-C.
    proc = subprocess.Popen(
        [*cmd, "--steps", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    logged = 0
    for line in proc.stdout:  # wait until step 1 is done, log line included: a Ctrl-C then saves step >= 1
        logged += line.startswith("step ")
        if logged == 2 or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.startswith("interrupted at step ") and err.count("\n") == 1 and "Traceback" not in err
    assert err.endswith(f"saved {out / 'last.npz'}; continue with the same command and --resume\n")
    assert "interrupted" not in rest
    step = load_checkpoint(out / "last.npz").step
    assert step >= 1
    resumed = subprocess.run([*cmd, "--steps", str(step + 2), "--resume"], capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {step} of last.npz" in resumed.stdout
    assert load_checkpoint(out / "last.npz").step == step + 2


def test_console_script_samples_a_checkpoint_written_by_main_py(tmp_path: Path) -> None:
    done = subprocess.run(
        train_cmd("--data", DATA, *FAST, "--steps", "10", "--out", str(tmp_path)), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == "" and "----- sample at step 10 -----" in done.stdout
    script = Path(sys.executable).parent / "bevialm"
    command = [str(script)] if script.exists() else SAMPLE[:3]
    sample = subprocess.run(
        [*command, "sample", "--out", str(tmp_path), "--prompt", "MARA", "--sample_len", "12"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("MARA") and len(sample.stdout) == 4 + 12 + 1
