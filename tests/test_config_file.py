"""``--config run.toml``: flags on the command line override it, every run folder gets
config.toml with the effective config, which repeats the run; bad keys and values are one line
naming the key, through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bevialm import cli, config_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DATA = str(ROOT / "data.txt")
TINY = {"ctx": 16, "dim": 16, "layers": 1, "heads": 2, "mlp_hidden": 32, "batch": 4, "steps": 4, "eval_every": 2,
        "eval_iters": 1, "log_every": 0, "sample_len": 0, "warmup": 1}  # fmt: skip


def _write(path: Path, values: dict[str, object]) -> Path:
    path.write_text(config_file.to_toml(values))
    return path


def _evals(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"]


def test_flags_override_the_config_and_config_toml_repeats_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "run.toml", {"data": DATA, **TINY, "lr": 0.01, "dim": 8})
    assert cli.train_main(["--config", "run.toml", "--dim", "16", "--out", "a"]) == 0
    written = tomllib.loads((tmp_path / "a" / "config.toml").read_text())
    assert written["dim"] == 16 and written["lr"] == 0.01 and written["data"] == DATA  # the flag won; the file's lr
    assert not {"out", "resume", "overwrite", "config"} & set(written)  # where and how a run started is not its config
    assert cli.main(["train", "--config", "a/config.toml", "--out", "b"]) == 0
    assert _evals(tmp_path / "a") == _evals(tmp_path / "b")  # the same run again, to the bit
    assert "model: 1 layer(s) x 2 head(s), dim 16" in capsys.readouterr().out


def test_to_toml_round_trips_every_kind_of_value() -> None:
    values = {"data": 'a "quoted" path\\ with é', "ctx": 3, "lr": 1e-4, "resume": True, "min_lr": None}
    assert tomllib.loads(config_file.to_toml(values, "two\nlines")) == {k: v for k, v in values.items() if v is not None}
    with pytest.raises(ValueError, match="cannot write the number inf"):
        config_file.to_toml({"lr": float("inf")})
    with pytest.raises(TypeError, match="cannot write list"):
        config_file.to_toml({"lr": [1]})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("ctxx = 3\n", r"config file 'bad.toml': unknown key 'ctxx' \(not a training flag; see --help\)"),
        ("config = 'x.toml'\n", r"config file 'bad.toml': unknown key 'config'"),
        ('ctx = "64"\n', r"config file 'bad.toml': ctx must be an integer, got '64' \(str\)"),
        ("ctx = 0\n", r"config file 'bad.toml': ctx: must be a positive integer, got '0'"),
        ("lr = true\n", r"config file 'bad.toml': lr must be a number, got True \(bool\)"),
        ("resume = 1\n", r"config file 'bad.toml': resume must be true or false, got 1 \(int\)"),
        ("tokenizer = 'words'\n", r"config file 'bad.toml': tokenizer must be one of char, bpe, got 'words'"),
        ("[data]\nx = 3\n", r"config file 'bad.toml': data must be a string, got \{'x': 3\} \(a table\)"),
        ("ctx = \n", r"config file 'bad.toml' is not valid TOML \(.*\)"),
        (b"ctx = '\xff'\n", r"config file 'bad.toml' is not valid TOML"),
    ],
)
def test_bad_configs_get_one_line_naming_the_key(tmp_path: Path, content: str | bytes, expected: str) -> None:
    (tmp_path / "bad.toml").write_bytes(content if isinstance(content, bytes) else content.encode())
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "--data", DATA, "--config", "bad.toml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert __import__("re").match("error: " + expected, done.stderr), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]  # nothing started


def test_a_missing_config_file_and_help_with_a_broken_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--config", str(tmp_path / "none.toml")]) == 1
    assert "error: cannot read config file" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("nonsense = 1\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--config", str(tmp_path / "bad.toml"), "--help"])
    assert exit_info.value.code == 0 and "--config FILE" in capsys.readouterr().out


def test_data_may_come_from_the_config_but_must_come_from_somewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "no-data.toml", {"ctx": 16})
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--config", str(tmp_path / "no-data.toml")], prog="main.py")
    assert exit_info.value.code == 2 and "the following arguments are required: --data" in capsys.readouterr().err
    # Other subcommands ignore a --config that is not theirs.
    with pytest.raises(SystemExit):
        cli.main(["sample", "--config", "x"])


def test_config_without_a_file_is_one_usage_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--data", DATA, "--config"], prog="main.py")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err == "main.py: error: argument --config: expected one argument (see main.py --help)\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("ctxx = 3\n", "unknown key 'ctxx'"),
        ('ctx = "64"\n', "ctx must be an integer, got '64' (str)"),
        ("ctx = 0\n", "ctx: must be a positive integer, got '0'"),
        ("lr = -1.5\n", "lr: must be a positive number, got '-1.5'"),
        ("resume = 1\n", "resume must be true or false, got 1 (int)"),
        ("activation = 'tanh'\n", "activation must be one of relu, gelu, got 'tanh'"),
        ("[data]\nx = 3\n", "data must be a string, got {'x': 3} (a table)"),
        ("ctx = \n", "is not valid TOML"),
    ],
)
def test_read_names_the_key(tmp_path: Path, content: str, expected: str) -> None:
    actions = {a.dest: a for a in cli.train_parser()._actions if a.option_strings}
    (tmp_path / "c.toml").write_text(content)
    with pytest.raises(config_file.ConfigError) as caught:
        config_file.read(str(tmp_path / "c.toml"), actions)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(config_file.ConfigError, match="cannot read config file"):
        config_file.read(str(tmp_path / "none.toml"), actions)
    (tmp_path / "ok.toml").write_text("ctx = 3\nlr = 1\nresume = true\ndata = 'x'\n")
    assert config_file.read(str(tmp_path / "ok.toml"), actions) == {"ctx": 3, "lr": 1.0, "resume": True, "data": "x"}
