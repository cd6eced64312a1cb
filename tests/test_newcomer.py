"""The rough edges a newcomer hit (issue 20): make clean keeps runs, help texts that fit their
command, attention beside its run and over a prompt's last ctx tokens, an unlabelled gradient
check, gradcheck's __all__, the README's flag list, the docs' reading order."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bevialm import cli, gradcheck, train
from bevialm.layers import linear

ROOT = Path(__file__).resolve().parent.parent


def _make_n(target: str) -> str:
    if shutil.which("make") is None:  # pragma: no cover - make is how the project is run
        pytest.skip("make is not installed")
    argv = ["make", "--no-print-directory", "-n", target]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_make_clean_keeps_runs_and_clean_runs_removes_them() -> None:
    assert "runs" not in _make_n("clean")
    assert _make_n("clean-runs").strip() == "rm -rf runs"


def test_make_train_passes_args_and_names_itself_for_the_resume_hint() -> None:
    recipe = _make_n("train")
    assert "BEVIALM_MAKE=\"make train\" BEVIALM_MAKE_ARGS=''" in recipe
    with_args = subprocess.run(["make", "--no-print-directory", "-n", "train", "ARGS=--steps 5"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
    line = next(x for x in with_args.splitlines() if "main.py" in x)
    assert "BEVIALM_MAKE_ARGS='--steps 5'" in with_args and line.endswith("--steps 2000 --steps 5")  # later flags win


def _help(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_sample_help_does_not_speak_of_training(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("sample", capsys=capsys)
    assert "training writes" not in text and "in training" not in text
    assert "run folder to sample from" in text and "tokens to generate per sample" in text
    train_text = _help("train", capsys=capsys)
    assert "0 prints no samples" in train_text and "config.toml" in train_text


def test_attention_help_says_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("attention", capsys=capsys)
    assert "at most ctx tokens" in text and "the prompt's tokens (characters for a character-level model)" in text
    assert "--last" in text and "attention.png in the checkpoint's run folder" in text


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "run"
    cfg = train.TrainConfig(data=str(ROOT / "data.txt"), ctx=16, dim=16, layers=1, heads=2, mlp_hidden=32, batch=4,
                            steps=2, eval_every=0, eval_iters=1, log_every=0, sample_len=0, out=str(out))  # fmt: skip
    train.train(cfg, stdout=open("/dev/null", "w"))  # noqa: SIM115
    return out


def test_attention_draws_a_long_prompts_last_ctx_tokens_with_last(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    monkeypatch.chdir(tmp_path)
    prompt = "MARA: the lamp is lit tonight"  # 29 characters, ctx 16
    assert cli.main(["attention", "--checkpoint", str(tiny_run / "best.npz"), "--prompt", prompt, "--last"]) == 0
    out, err = capsys.readouterr()
    assert err == "note: the prompt has 29 characters; drawing its last ctx = 16\n"
    assert out.startswith(f"wrote attention to {tiny_run / 'attention.png'}, ")
    assert not (tmp_path / "attention.png").exists()


def test_an_unlabelled_gradient_check_has_no_empty_name() -> None:
    cfg = linear.LinearConfig(3, 2)
    params = linear.init(cfg, np.random.default_rng(0), np.float64)
    x = np.random.default_rng(1).normal(size=(2, 3))
    report = gradcheck.vjp_check(lambda p, a: linear.forward(p, a, cfg), linear.backward, params, x, rng=np.random.default_rng(2))
    assert report.format().splitlines()[0] == "gradient check: passed"
    labelled = gradcheck.vjp_check(lambda p, a: linear.forward(p, a, cfg), linear.backward, params, x, rng=np.random.default_rng(2), label="linear")
    assert labelled.format().splitlines()[0] == "gradient check 'linear': passed"


def test_gradcheck_all_names_every_public_name() -> None:
    public = {n for n, v in vars(gradcheck).items() if not n.startswith("_") and getattr(v, "__module__", None) == "bevialm.gradcheck"}
    assert public <= set(gradcheck.__all__)
    assert all(hasattr(gradcheck, n) for n in gradcheck.__all__)


def test_the_readme_lists_every_training_flag() -> None:
    readme = (ROOT / "README.md").read_text()
    flags = {a.option_strings[0] for a in cli.train_parser()._actions if a.option_strings and a.dest != "help"}
    listed = set(re.findall(r"(?<![\w-])(--\w+)", readme))
    assert flags - listed == set()


def test_docs_readme_is_a_reading_order_linking_every_page() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    linked = set(re.findall(r"\]\(([\w-]+\.md)\)", index))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages - linked == set()
    assert linked - pages == set()


def test_vscode_launch_configs_run_what_the_project_runs() -> None:
    import json

    configs = {c["name"]: c for c in json.loads((ROOT / ".vscode" / "launch.json").read_text())["configurations"]}
    quick_start = re.search(r"main\.py (--data data\.txt .*?) \$\(ARGS\)", (ROOT / "Makefile").read_text())
    assert quick_start is not None
    assert configs["main.py: the quick start"]["args"] == quick_start.group(1).split()  # the same as make train
    assert configs["pytest: the current test file"]["module"] == "pytest"
    assert configs["bevialm grade: a student's package"]["args"][0] == "grade"
    assert all(c["python"] == "${workspaceFolder}/.venv/bin/python" for c in configs.values())  # make install's venv
