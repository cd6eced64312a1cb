"""Pictures and the terminal view (bevialm.viz) and the commands that compose them: the figures'
structure, the files written, the exact terminal text, life without matplotlib, and every bad
input through the real command line (one line, no traceback)."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bevialm import cli, runtime, train, viz
from bevialm.types import Array

ROOT = Path(__file__).resolve().parent.parent
DATA = str(ROOT / "data.txt")
CLI = [sys.executable, "-m", "bevialm.cli"]

TOKENS = ["T", "o", " ", "\n", "b"]  # space and newline: drawn as visible glyphs
GLYPHS = ["T", "o", "␣", "↵", "b"]


def panels(fig: Figure) -> list[Axes]:
    """The heat maps (every axes with an image; the colour bar has none)."""
    return [ax for ax in fig.axes if ax.images]


def token_labels(ax: Axes, which: str) -> list[str]:
    """The token labels written beside a map's columns (``"x"``) or rows (``"y"``)."""
    return [t.get_text() for t in ax.texts if t.get_label() == f"{which}-token"]


def image_data(ax: Axes) -> np.ma.MaskedArray[Any, Any]:
    """The (masked) array a heat map shows."""
    data = ax.images[0].get_array()
    assert isinstance(data, np.ma.MaskedArray)
    return data


def causal_maps(layers: int, heads: int, t: int, seed: int = 0) -> Array:
    """Row-stochastic causal weights, zero above the diagonal, as ``model.attention_maps`` gives."""
    rng = np.random.default_rng(seed)
    w = rng.random((layers, heads, t, t)) * np.tril(np.ones((t, t)))
    out: Array = w / w.sum(axis=-1, keepdims=True)
    return out


# --- pure functions ---------------------------------------------------------------------------------


def test_visible_shows_whitespace_and_control_characters_as_glyphs() -> None:
    assert viz.visible(" the\n") == "␣the↵"
    assert viz.visible("\t\r\x00a") == "⇥␍␀a"
    assert [viz.visible(t) for t in TOKENS] == GLYPHS


def test_token_texts_decode_one_token_at_a_time_and_show_part_characters_as_bytes() -> None:
    from bevialm.data import Vocab
    from bevialm.tokenizer import train_bpe

    vocab = Vocab.from_text("ab \n")
    assert viz.token_texts(vocab, vocab.encode("a b\n")) == ["a", " ", "b", "\n"]
    bytes_only = train_bpe("hé hé", 256)  # no merges: every byte is a token, é is two
    assert viz.token_texts(bytes_only, bytes_only.encode("hé!")) == ["h", "\\xc3", "\\xa9", "!"]
    merged = train_bpe("héllo héllo héllo", 300)
    ids = merged.encode("héllo")
    assert "".join(viz.token_texts(merged, ids)) == "héllo" and len(ids) < 5  # whole characters: their text


def test_prompt_figure_has_a_map_per_layer_and_head_labelled_with_the_prompt_and_blank_future_cells() -> None:
    maps = causal_maps(2, 3, len(TOKENS))
    fig = viz.prompt_attention_figure([m[None] for m in maps], TOKENS)  # model.attention_maps' (1, H, T, T) per layer
    grid = panels(fig)
    assert len(grid) == 2 * 3
    titles = [ax.get_title() for ax in grid]
    assert titles == [f"layer {layer}, head {head}" for layer in (1, 2) for head in (1, 2, 3)]
    for i, ax in enumerate(grid):
        image = ax.images[0]
        data = image_data(ax)
        future = np.triu(np.ones((5, 5), dtype=bool), k=1)
        assert np.array_equal(np.ma.getmaskarray(data), future)  # masked: drawn blank
        np.testing.assert_allclose(data.filled(0), maps[i // 3, i % 3] * ~future)
        assert image.get_clim() == (0.0, 1.0)
        left, bottom = i % 3 == 0, i // 3 == 1
        assert token_labels(ax, "y") == (GLYPHS if left else [])
        assert token_labels(ax, "x") == (GLYPHS if bottom else [])
    bars = [ax for ax in fig.axes if ax.get_label() == "colorbar"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "weight (square-root scale)"


def test_layer_and_head_select_one_map_and_refuse_out_of_range_numbers() -> None:
    maps = causal_maps(2, 3, 4)
    fig = viz.prompt_attention_figure(maps, list("abcd"), layer=2, head=3)
    (only,) = panels(fig)
    assert only.get_title() == "layer 2, head 3"
    np.testing.assert_allclose(image_data(only).filled(0), maps[1, 2])
    assert len(panels(viz.prompt_attention_figure(maps, list("abcd"), head=1))) == 2
    with pytest.raises(viz.VizError, match=r"^layer 3 is out of range: the model has 2 layers \(1 to 2\)$"):
        viz.prompt_attention_figure(maps, list("abcd"), layer=3)
    with pytest.raises(viz.VizError, match=r"^head 4 is out of range: the model has 3 heads \(1 to 3\)$"):
        viz.prompt_attention_figure(maps, list("abcd"), head=4)
    with pytest.raises(viz.VizError, match="do not fit a prompt of 3 tokens"):
        viz.prompt_attention_figure(maps, list("abc"))


def test_generation_figure_strips_generated_tokens_against_context_positions() -> None:
    # prompt "ab", generated "cde": 3 rows, keys at positions 0..3 (a b c d)
    w = np.full((1, 2, 3, 4), np.nan)
    w[0, :, 0, :2] = [0.25, 0.75]
    w[0, :, 1, :3] = [0.1, 0.2, 0.7]
    w[0, :, 2, :4] = [0.4, 0.3, 0.2, 0.1]
    fig = viz.generation_attention_figure(w, list("abcde"), 2)
    grid = panels(fig)
    assert len(grid) == 2
    first = grid[0]
    assert token_labels(first, "y") == list("cde")
    assert token_labels(first, "x") == list("abcd")
    data = image_data(first)
    assert np.array_equal(np.ma.getmaskarray(data), np.isnan(w[0, 0]))
    assert [np.asarray(line.get_xdata())[0] for line in first.lines] == [1.5]  # the prompt ends
    # a prompt longer than the context: the positions nothing attended to are left out
    w2 = np.concatenate((np.full((1, 2, 3, 2), np.nan), w), axis=-1)
    cropped = panels(viz.generation_attention_figure(w2, list("xyabcde"), 4))[0]
    assert token_labels(cropped, "x") == list("abcd")
    with pytest.raises(viz.VizError, match="does not fit 2 prompt and 2 generated tokens"):
        viz.generation_attention_figure(w, list("abcd"), 2)


def test_long_axes_label_every_kth_token() -> None:
    fig = viz.prompt_attention_figure(causal_maps(1, 1, 200), [chr(97 + i % 26) for i in range(200)])
    labels = token_labels(panels(fig)[0], "x")
    assert len(labels) == 40 and labels[:2] == ["a", "f"]  # every 5th of 200


def png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


def assert_not_blank(path: Path) -> None:
    from matplotlib.image import imread

    pixels = imread(str(path))[..., :3]
    assert pixels.var() > 0.01, pixels.var()  # a white page has 0


def test_figures_are_written_as_png_of_the_expected_size_or_svg(tmp_path: Path) -> None:
    fig = viz.prompt_attention_figure(causal_maps(2, 2, 5), TOKENS)
    size = viz.save_figure(fig, str(tmp_path / "a.png"), dpi=80)
    inches = fig.get_size_inches()
    assert png_size(tmp_path / "a.png") == size and abs(size[0] - inches[0] * 80) <= 1 and abs(size[1] - inches[1] * 80) <= 1
    assert_not_blank(tmp_path / "a.png")
    viz.save_figure(fig, str(tmp_path / "a.svg"))
    assert b"<svg" in (tmp_path / "a.svg").read_bytes()[:1000]
    with pytest.raises(viz.VizError, match=r"^output '.*a\.jpg' must end in \.png or \.svg"):
        viz.save_figure(fig, str(tmp_path / "a.jpg"))
    with pytest.raises(viz.VizError, match=r"^output folder '.*nope' does not exist"):
        viz.save_figure(fig, str(tmp_path / "nope" / "a.png"))


# --- the terminal ---------------------------------------------------------------------------------

# prompt "ab", generated " c": two rows; 1 layer, 2 heads
HAND = np.full((1, 2, 2, 3), np.nan)
HAND[0, 0, 0, :2] = [0.3, 0.7]
HAND[0, 0, 1, :3] = [0.05, 0.15, 0.8]
HAND[0, 1, 0, :2] = [1.0, 0.0]
HAND[0, 1, 1, :3] = [0.5, 0.25, 0.25]


def test_terminal_text_is_exact_for_a_hand_made_array() -> None:
    text = viz.attention_text(HAND, list("ab c"), 2, top=2)
    assert text == (
        "layer 1 of 1: for each generated token, the 2 context tokens each head attends to most "
        "(token, distance back, weight)\n"
        "token │ head 1             │ head 2\n"
        "␣     │ b -1 .70  a -2 .30 │ a -2 1.0  b -1 .00\n"
        "c     │ ␣ -1 .80  b -2 .15 │ a -3 .50  b -2 .25"  # a tie (.25, .25): the earlier position first
    )
    one_head = viz.attention_text(HAND, list("ab c"), 2, head=2, top=1)
    assert one_head.splitlines()[1:] == ["token │ head 2", "␣     │ a -2 1.0", "c     │ a -3 .50"]


def test_terminal_text_shows_the_last_layer_unless_told_and_checks_the_numbers() -> None:
    two = np.concatenate((HAND, HAND[:, ::-1]), axis=0)  # layer 2: the two heads swapped
    assert viz.attention_text(two, list("ab c"), 2).startswith("layer 2 of 2:")
    swapped = viz.attention_text(two, list("ab c"), 2, layer=2, head=1).splitlines()[2:]
    assert swapped == viz.attention_text(HAND, list("ab c"), 2, head=2).splitlines()[2:]
    with pytest.raises(viz.VizError, match=r"^layer 3 is out of range: the model has 2 layers \(1 to 2\)$"):
        viz.attention_text(two, list("ab c"), 2, layer=3)
    with pytest.raises(viz.VizError, match=r"^head 3 is out of range"):
        viz.attention_text(two, list("ab c"), 2, head=3)
    with pytest.raises(viz.VizError, match="does not fit 2 prompt and 1 generated tokens"):
        viz.attention_text(two, list("ab "), 2)


def test_terminal_text_pads_when_the_context_is_shorter_than_top() -> None:
    lines = viz.attention_text(HAND, list("ab c"), 2, head=1, top=3).splitlines()
    assert lines[2] == "␣     │ b -1 .70  a -2 .30"  # only two keys existed (trailing padding stripped)


def test_terminal_colour_marks_heavy_and_light_weights_only_when_asked() -> None:
    plain = viz.attention_text(HAND, list("ab c"), 2, top=2)
    coloured = viz.attention_text(HAND, list("ab c"), 2, top=2, color=True)
    assert "\x1b" not in plain
    assert "\x1b[1mb -1 .70\x1b[0m" in coloured  # >= 0.5: bold
    assert "\x1b[2mb -2 .15\x1b[0m" in coloured  # < 0.2: dim
    assert " a -2 .30 " in coloured  # in between: as it is
    assert coloured.replace("\x1b[1m", "").replace("\x1b[2m", "").replace("\x1b[0m", "").split() == plain.split()


# --- metrics and the loss figure ---------------------------------------------------------------------


def write_metrics(folder: Path, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return folder


TRAIN_LINES = [
    '{"kind": "train", "step": 10, "loss": 4.0, "lr": 0.001, "time": 1.0}',
    '{"kind": "train", "step": 20, "loss": 3.5, "lr": 0.002, "time": 2.0}',
    '{"kind": "eval", "step": 20, "train_loss": 3.4, "val_loss": 3.6, "lr": 0.002, "time": 2.5}',
]


def test_metrics_of_a_run_still_training_skip_the_line_being_written(tmp_path: Path) -> None:
    run = write_metrics(tmp_path / "run", TRAIN_LINES)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"kind": "train", "step": 30, "lo')  # cut short: the trainer is writing it
    m = viz.read_metrics(str(run))
    assert m.name == str(run) and list(m.train_step) == [10, 20] and list(m.train_loss) == [4.0, 3.5]
    assert list(m.eval_step) == [20] and list(m.eval_val) == [3.6] and list(m.eval_train) == [3.4]
    assert viz.read_metrics(str(run / "metrics.jsonl")).name == str(run)  # the file named directly
    only_train = viz.read_metrics(str(write_metrics(tmp_path / "young", TRAIN_LINES[:1])))
    assert only_train.eval_step.size == 0


def test_metrics_refuse_a_missing_folder_a_folder_without_metrics_and_an_empty_file(tmp_path: Path) -> None:
    with pytest.raises(viz.VizError, match=r"^run folder '.*nothing' does not exist$"):
        viz.read_metrics(str(tmp_path / "nothing"))
    (tmp_path / "bare").mkdir()
    with pytest.raises(viz.VizError, match=r"^run folder '.*bare' has no metrics.jsonl"):
        viz.read_metrics(str(tmp_path / "bare"))
    empty = write_metrics(tmp_path / "empty", [])
    with pytest.raises(viz.VizError, match=r"metrics.jsonl' holds no metrics yet"):
        viz.read_metrics(str(empty))


def test_loss_figure_overlays_runs_with_a_legend_naming_each_run_folder(tmp_path: Path) -> None:
    a = viz.read_metrics(str(write_metrics(tmp_path / "relu", TRAIN_LINES)))
    b = viz.read_metrics(str(write_metrics(tmp_path / "gelu", TRAIN_LINES)))
    fig = viz.loss_figure([a, b])
    loss_ax, lr_ax = fig.axes[:2]
    assert len(loss_ax.lines) == 4 and len(lr_ax.lines) == 2  # train + val per run; one lr curve per run
    legend_texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert str(tmp_path / "relu") in legend_texts and str(tmp_path / "gelu") in legend_texts
    assert loss_ax.get_xlabel() == "step" and lr_ax.get_ylabel() == "learning rate"
    with pytest.raises(viz.VizError, match="at least one run"):
        viz.loss_figure([])


def test_without_matplotlib_pictures_say_how_to_install_it_and_the_text_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(viz.MatplotlibMissing) as e:
        viz.require_matplotlib()
    assert str(e.value) == (
        "drawing needs matplotlib, which is not installed: pip install 'bevialm[plot]' "
        "(in a clone of the repository: make install)"
    )
    with pytest.raises(viz.MatplotlibMissing):
        viz.prompt_attention_figure(causal_maps(1, 1, 3), list("abc"))
    assert viz.attention_text(HAND, list("ab c"), 2, layer=1).startswith("layer 1 of 1")


# --- through the real command line ------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A tiny real training run (checkpoints and metrics.jsonl) and what the trainer printed."""
    out = tmp_path_factory.mktemp("viz") / "run"
    printed = io.StringIO()
    cfg = train.TrainConfig(
        data=DATA, ctx=16, dim=16, layers=2, heads=2, mlp_hidden=32, batch=4, steps=20, warmup=2,
        log_every=5, eval_every=10, eval_iters=2, sample_len=0, out=str(out),
    )  # fmt: skip
    train.train(cfg, stdout=printed)
    yield out, printed.getvalue()


def test_the_trainer_names_the_command_that_draws_its_curves(run: tuple[Path, str]) -> None:
    out, printed = run
    assert printed.splitlines()[-1] == f"draw its loss curves: {runtime.command()} plot {out}"


def start(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_the_picture_commands_write_their_pictures(
    run: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process (the bad inputs below go through real subprocesses), so coverage sees the commands."""
    out, _ = run
    ckpt = str(out / "best.npz")
    monkeypatch.chdir(tmp_path)

    def bevialm(*args: str) -> str:
        code = cli.main(list(args))
        printed, err = capsys.readouterr()
        assert code == 0 and err == "", err
        return printed

    assert bevialm("plot", str(out)) == f"wrote loss curves to {out / 'loss.png'}, 800 x 565 pixels\n"
    assert png_size(out / "loss.png") == (800, 565)
    assert_not_blank(out / "loss.png")
    assert bevialm("plot", str(out), str(out / "metrics.jsonl"), "-o", "two.svg") == "wrote loss curves to two.svg\n"
    assert (tmp_path / "two.svg").stat().st_size > 1000
    printed = bevialm("attention", "--checkpoint", ckpt, "--prompt", "MARA: the\nend", "--layer", "2")
    width, height = png_size(out / "attention.png")  # beside the checkpoint, as plot's loss.png
    assert printed == f"wrote attention to {out / 'attention.png'}, {width} x {height} pixels\n"
    assert_not_blank(out / "attention.png")
    assert not (tmp_path / "attention.png").exists()
    printed = bevialm(
        "sample", "--checkpoint", ckpt, "--prompt", "MARA:", "--sample_len", "9", "--attention", "gen.png",
        "--show-attention", "--head", "2",
    )  # fmt: skip
    lines = printed.splitlines()
    assert lines[0].startswith("MARA:") and len(lines[0]) == 5 + 9
    assert lines[1].startswith("layer 2 of 2: for each generated token") and lines[2].split() == ["token", "│", "head", "2"]
    assert len(lines) == 1 + 2 + 9 + 1 and "\x1b" not in printed  # not a terminal: no colour
    assert [line[0] for line in lines[3:12]] == [viz.visible(c) for c in lines[0][5:]]
    assert lines[-1].startswith("wrote attention while generating sample 1 to gen.png, ")
    assert_not_blank(tmp_path / "gen.png")
    several = bevialm("sample", "--checkpoint", ckpt, "--num_samples", "2", "--sample_len", "3", "--show-attention")
    assert several.count("layer 2 of 2: for each generated token") == 2


def test_show_attention_is_coloured_on_a_terminal(run: tuple[Path, str]) -> None:
    out, _ = run
    primary, secondary = pty.openpty()
    argv = [*CLI, "sample", "--checkpoint", str(out / "best.npz"), "--prompt", "MA", "--sample_len", "30", "--show-attention"]
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = subprocess.Popen(argv, stdout=secondary, stderr=subprocess.PIPE, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert proc.wait(timeout=120) == 0
    printed = b"".join(chunks).decode()
    assert "\x1b[0m" in printed and ("\x1b[1m" in printed or "\x1b[2m" in printed)


NO_MPL = "drawing needs matplotlib, which is not installed: pip install 'bevialm[plot]' (in a clone of the repository: make install)"


def test_without_matplotlib_the_commands_print_one_line_and_show_attention_still_works(run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = run
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError(\"No module named 'matplotlib'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    ckpt = str(out / "best.npz")
    procs = [
        start("plot", str(out), "-o", "x.png", cwd=tmp_path, env=env),
        start("attention", "--checkpoint", ckpt, "--prompt", "MA", cwd=tmp_path, env=env),
        start("sample", "--checkpoint", ckpt, "--sample_len", "5", "--attention", "g.png", cwd=tmp_path, env=env),
    ]
    for proc in procs:
        code, printed, err = finish(proc)
        assert (code, printed, err) == (1, "", f"error: {NO_MPL}\n")
    code, printed, err = finish(start("sample", "--checkpoint", ckpt, "--prompt", "MA", "--sample_len", "5", "--show-attention", cwd=tmp_path, env=env))
    assert code == 0 and err == "" and len(printed.splitlines()) == 1 + 2 + 5
    assert not list(tmp_path.glob("*.png"))


BAD: list[tuple[str, list[str], str]] = [
    # (id, argv with {run} and {tmp}, the error line)
    ("plot-missing-run", ["plot", "{tmp}/nothing"], "error: run folder '{tmp}/nothing' does not exist"),
    ("plot-not-a-run", ["plot", "{tmp}/bare"], "error: run folder '{tmp}/bare' has no metrics.jsonl (is it a run folder?)"),
    ("plot-empty-metrics", ["plot", "{tmp}/empty"], "error: '{tmp}/empty/metrics.jsonl' holds no metrics yet"),
    ("plot-output-folder-missing", ["plot", "{run}", "-o", "{tmp}/no/such/loss.png"], "error: output folder '{tmp}/no/such' does not exist"),
    ("plot-bad-extension", ["plot", "{run}", "-o", "loss.jpg"], "error: output 'loss.jpg' must end in .png or .svg"),
    ("attention-unknown-chars", ["attention", "--checkpoint", "{run}/best.npz", "--prompt", "Zé~"], "error: prompt contains characters not in the vocabulary"),
    ("attention-layer-range", ["attention", "--checkpoint", "{run}/best.npz", "--prompt", "MA", "--layer", "3"], "error: layer 3 is out of range: the model has 2 layers (1 to 2)"),
    ("attention-head-range", ["attention", "--checkpoint", "{run}/best.npz", "--prompt", "MA", "--head", "9"], "error: head 9 is out of range: the model has 2 heads (1 to 2)"),
    ("attention-output-folder-missing", ["attention", "--checkpoint", "{run}/best.npz", "--prompt", "MA", "-o", "{tmp}/no/a.png"], "error: output folder '{tmp}/no' does not exist"),
    ("attention-prompt-too-long", ["attention", "--checkpoint", "{run}/best.npz", "--prompt", "M" * 17], "error: the prompt has 17 characters; the model reads 1 to ctx = 16: shorten it, or pass --last to draw its last ctx"),
    ("attention-empty-prompt", ["attention", "--checkpoint", "{run}/best.npz", "--prompt", ""], "error: the prompt has 0 characters; the model reads 1 to ctx = 16: give a prompt"),
    ("attention-missing-checkpoint", ["attention", "--out", "{tmp}/nothing", "--prompt", "MA"], "error: checkpoint '{tmp}/nothing/last.npz' does not exist"),
    ("sample-layer-range", ["sample", "--checkpoint", "{run}/best.npz", "--show-attention", "--layer", "5"], "error: layer 5 is out of range: the model has 2 layers (1 to 2)"),
    ("sample-attention-folder-missing", ["sample", "--checkpoint", "{run}/best.npz", "--attention", "{tmp}/no/g.png"], "error: output folder '{tmp}/no' does not exist"),
    ("sample-attention-too-big", ["sample", "--checkpoint", "{run}/best.npz", "--show-attention", "--sample_len", "200000"], "error: sampling 1 x 200000 tokens needs about"),
    ("sample-attention-nothing-generated", ["sample", "--checkpoint", "{run}/best.npz", "--attention", "g.png", "--sample_len", "0"], "error: --attention draws the generated characters: --sample_len must be at least 1"),
]


@pytest.fixture(scope="module")
def bad_runs(run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, int, str, str]]:
    """Every bad command at once (each is mostly interpreter start-up)."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "bare").mkdir()
    write_metrics(tmp / "empty", [])
    procs = {}
    for case_id, argv, _ in BAD:
        args = [a.replace("{run}", str(run[0])).replace("{tmp}", str(tmp)) for a in argv]
        procs[case_id] = start(*args, cwd=tmp)
    return {case_id: (str(tmp), *finish(proc)) for case_id, proc in procs.items()}


@pytest.mark.parametrize(("case_id", "argv", "expected"), BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_through_the_real_command_line(
    bad_runs: dict[str, tuple[str, int, str, str]], run: tuple[Path, str], case_id: str, argv: list[str], expected: str
) -> None:
    tmp, code, printed, err = bad_runs[case_id]
    assert code == 1 and printed == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert err.startswith(expected.replace("{tmp}", tmp).replace("{run}", str(run[0])))
    if case_id == "sample-attention-too-big":  # the record's memory is counted: it names it
        assert "the recorded attention" in err
    assert not list(Path(tmp).glob("*.png"))


def test_the_docs_pictures_exist_are_small_pngs_and_regenerate_from_a_script() -> None:
    page = (ROOT / "docs" / "visualization.md").read_text(encoding="utf-8")
    pictures = sorted(set(re.findall(r"\]\((images/[\w.-]+\.png)\)", page)))
    assert pictures == [
        "images/attention-generation.png",
        "images/attention-layer1.png",
        "images/attention-layer2.png",
        "images/attention-layer4.png",
        "images/loss-bpc.png",
        "images/loss.png",
    ]
    script = (ROOT / "docs" / "images" / "regenerate.sh").read_text(encoding="utf-8")
    for picture in pictures:
        path = ROOT / "docs" / picture
        png_size(path)  # a PNG
        assert path.stat().st_size < 300_000
        assert f"docs/{picture}" in script and f"docs/{picture}" in page  # how to draw it again
    assert "(docs/visualization.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_speed_benchmark_runs(tmp_path: Path) -> None:
    """`make bench` runs benchmarks/bench_viz.py: a quick smoke run (no timing asserted)."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_viz.py", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert results["ctx"] == 64 and results["draw_s"] > 0 and results["record_ratio"] > 0
    assert "to PNG:" in done.stdout and "recording attention" in done.stdout
