"""`bevialm board`'s server and API, without a browser: the runs and their metrics, the
explorer's numbers against the real commands', every way out of the runs folder, the limits,
broken files (an error in the answer, the server serving on) and the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bevialm import cli, metrics, viz
from bevialm.board import explore, paths, runs_view
from bevialm.board.server import MAX_BODY, Board
from tests.board_fixtures import (
    PROMPT,
    SECRET,
    Runs,
    attention_of_the_command,
    from_json,
    make_runs,
    post,
    request,
    serving,
)

CLI = [sys.executable, "-m", "bevialm.cli"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return make_runs(tmp_path_factory.mktemp("board"))


@pytest.fixture(scope="module")
def board(runs: Runs) -> Iterator[Board]:
    with serving(runs.root) as b:
        yield b


def records_in(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_runs_list_names_each_runs_tokenizer_model_steps_and_best_validation(runs: Runs, board: Board) -> None:
    status, data = request(board, "GET", "/api/runs")
    assert status == 200
    by_name = {r["name"]: r for r in data["runs"]}
    assert sorted(by_name) == ["bpe", "broken", "tiny"]  # not "escape": its link leads outside
    tiny = by_name["tiny"]
    assert tiny["tokenizer"].startswith("characters") and by_name["bpe"]["tokenizer"] == "byte-level BPE, 300 tokens"
    assert (tiny["model"]["n_layers"], tiny["model"]["n_heads"], tiny["config"]["steps"]) == (2, 2, 20)
    assert tiny["tokens_per_step"] == 4 * 16
    evals = [r for r in records_in(runs.root / "tiny" / "metrics.jsonl") if r["kind"] == "eval"]
    assert tiny["best_val_loss"] == min(float(str(r["val_loss"])) for r in evals)
    assert tiny["checkpoints"] == ["best.npz", "last.npz"]  # not secret.npz, a link outside
    assert by_name["broken"]["errors"] and "corrupt" in by_name["broken"]["errors"][0]


def test_metrics_are_read_from_an_offset_whole_lines_only_and_again_from_0_when_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    first = json.dumps({"kind": "train", "step": 2, "loss": 4.0, "lr": 1e-3})
    path.write_text(first + "\n" + '{"kind": "eval", "step": 4, "val_loss": Infin')  # the second line is being written
    got = runs_view.read_metrics(str(path), 0)
    assert [r["step"] for r in got["records"]] == [2] and got["offset"] == len(first) + 1 and not got["problems"]
    with path.open("a") as f:
        f.write('ity, "val_bpc": NaN}\n')
    got = runs_view.read_metrics(str(path), got["offset"])
    assert got["records"] == [{"kind": "eval", "step": 4.0, "val_loss": None, "val_bpc": None}]  # JSON cannot carry inf
    path.write_text(first + "\n")  # --resume rewrote it, shorter
    again = runs_view.read_metrics(str(path), got["offset"])
    assert again["reset"] and [r["step"] for r in again["records"]] == [2]
    assert runs_view.read_metrics(str(tmp_path / "none.jsonl"), 5)["missing"]


def test_the_board_and_plot_take_the_same_lines_as_records(tmp_path: Path) -> None:
    lines = [
        {"kind": "train", "step": 1, "loss": 2.0, "lr": 1e-3},
        {"kind": "train", "step": 2},  # no loss
        {"kind": "train", "step": 3, "loss": 2.0, "lr": "0.5"},  # a string for a number
        {"kind": "eval", "step": -1, "val_loss": 1.0},  # a negative step
        {"kind": "eval", "step": 4.5, "val_loss": 1.0},  # not a whole step
        {"kind": "eval", "step": 5, "val_loss": 1.5},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    board = runs_view.read_metrics(str(path), 0)["records"]
    plot = metrics.read_records(path.read_text().splitlines(keepends=True)).records
    assert [r["step"] for r in board] == [r["step"] for r in plot] == [1, 5]


def test_lines_that_are_not_records_are_reported_and_skipped(runs: Runs, board: Board) -> None:
    status, data = request(board, "GET", "/api/metrics?run=broken&offset=0")
    assert status == 200 and len(data["records"]) == 1
    assert len(data["problems"]) == 2 and "is not a metrics record" in data["problems"][0]


def test_a_metrics_poll_reads_at_most_its_limit_and_says_there_is_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.jsonl"
    line = json.dumps({"kind": "train", "step": 1, "loss": 1.0}) + "\n"
    path.write_text(line * 10)
    monkeypatch.setattr(runs_view, "MAX_READ", len(line) * 3 + 5)
    got = runs_view.read_metrics(str(path), 0)
    assert len(got["records"]) == 3 and got["more"]
    monkeypatch.setattr(runs_view, "MAX_READ", 4)  # one line longer than a read: reported, not a hang
    got = runs_view.read_metrics(str(path), 0)
    assert got["offset"] == 4 and "longer than" in got["problems"][0]


ESCAPES = [
    "/api/metrics?run=..&offset=0",
    "/api/metrics?run=../..&offset=0",
    "/api/metrics?run=..%2F..%2Foutside&offset=0",
    "/api/metrics?run=%2e%2e&offset=0",
    "/api/metrics?run=%2Ftmp&offset=0",
    "/api/metrics?run=/etc&offset=0",
    "/api/metrics?run=tiny%2F..%2F..%2Foutside&offset=0",
    "/api/metrics?run=tiny%5C..%5C..&offset=0",
    "/api/metrics?run=escape&offset=0",
    "/api/metrics?run=tiny%00&offset=0",
    "/api/samples?run=escape",
    "/api/samples?run=..",
    "/static/../server.py",
    "/static/%2e%2e/server.py",
    "/static/..%2Fserver.py",
    "//etc/passwd",
    "/../../../../etc/passwd",
    "/api/../../etc/passwd",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_no_path_leads_out_of_the_runs_folder(runs: Runs, board: Board, path: str) -> None:
    status, data = request(board, "GET", path)
    assert status == 404, (path, data)
    assert SECRET not in json.dumps(data) and "root:" not in json.dumps(data)


@pytest.mark.parametrize(
    ("run", "checkpoint"),
    [
        ("tiny", "secret.npz"),  # a link inside the run to a file outside
        ("tiny", "../tiny/best.npz"),
        ("tiny", "..%2Fbest.npz"),
        ("tiny", "/etc/passwd"),
        ("tiny", str(Path(__file__))),
        ("escape", "secret.npz"),
        ("..", "outside/secret.npz"),
        ("tiny", ["best.npz"]),
        (None, "best.npz"),
    ],
)
def test_the_explorer_reads_no_checkpoint_outside_the_runs_folder(runs: Runs, board: Board, run: object, checkpoint: object) -> None:
    status, data = post(board, run=run, checkpoint=checkpoint, prompt="MA")
    assert status == 404 and "error" in data and SECRET not in json.dumps(data)


def test_paths_refuse_what_is_not_a_run(runs: Runs) -> None:
    root = os.path.realpath(runs.root)
    assert paths.run_folder(root, ".") == root  # the runs folder may itself be a run
    for bad in ("", "a/b", "..", ".hidden", 3):
        with pytest.raises(paths.Refused):
            paths.run_folder(root, bad)
    assert paths.list_runs(str(runs.root / "none")) == [] and paths.checkpoints(root, str(runs.root / "none")) == []
    assert paths.list_runs(str(runs.root / "tiny")) == ["."]


def test_a_page_elsewhere_cannot_reach_the_board_by_another_host_name(board: Board) -> None:
    status, data = request(board, "GET", "/api/runs", headers={"Host": f"attacker.example:{board.server_address[1]}"})
    assert status == 403 and "Host" in data["error"]
    assert request(board, "GET", "/api/runs", headers={"Host": f"localhost:{board.server_address[1]}"})[0] == 200


def test_bodies_are_bounded_json_objects(board: Board) -> None:
    huge = request(board, "POST", "/api/attention", b"{}", {"Content-Length": str(MAX_BODY + 1)})
    assert huge[0] == 413 and "at most" in huge[1]["error"]
    form = request(board, "POST", "/api/attention", b"prompt=x", {"Content-Type": "application/x-www-form-urlencoded"})
    assert form[0] == 415  # what a form on another site could send without asking first
    assert request(board, "POST", "/api/attention", b"[1]")[0] == 400
    assert request(board, "POST", "/api/attention", b"{nope")[0] == 400
    assert request(board, "POST", "/api/attention", b"{}", {"Content-Length": "ten"})[0] == 400
    assert request(board, "POST", "/api/elsewhere", b"{}")[0] == 404
    assert request(board, "GET", "/api/metrics?run=tiny&offset=-1")[0] == 400
    assert request(board, "GET", "/nothing-here")[0] == 404


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": "M" * 17}, "the prompt has 17 characters; this model reads at most ctx = 16: shorten it"),
        ({"prompt": "M" * 5000}, "at most 4,000"),
        ({"prompt": ""}, "type a prompt first"),
        ({"prompt": "M€"}, "not in"),
        ({"prompt": 5}, "prompt must be text"),
        ({"prompt": "MA", "mode": "generate", "n": 201}, "from 1 to 200"),
        ({"prompt": "MA", "mode": "generate", "n": True}, "from 1 to 200"),
        ({"prompt": "MA", "mode": "generate", "n": 3, "temperature": "hot"}, "temperature"),
        ({"prompt": "MA", "mode": "generate", "n": 3, "seed": -1}, "seed"),
    ],
)
def test_a_prompt_the_model_cannot_read_gets_a_message(board: Board, fields: dict[str, object], message: str) -> None:
    status, data = post(board, run="tiny", checkpoint="best.npz", **fields)
    assert status == (400 if fields["prompt"] == 5 else 200) and message in data["error"], data


def test_too_much_attention_to_send_is_refused(runs: Runs, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = explore.ModelCache().get(str(runs.root / "tiny" / "best.npz"))
    monkeypatch.setattr(explore, "MAX_WEIGHTS", 100)
    with pytest.raises(explore.ExploreError, match="generate fewer"):
        explore.generation_attention(loaded, "MA", 50, 1.0, 0)


def test_a_corrupt_checkpoint_is_an_error_in_the_answer_and_the_server_serves_on(board: Board) -> None:
    status, data = post(board, run="broken", checkpoint="last.npz", prompt="MA")
    assert status == 422 and "corrupt" in data["error"]
    status, data = request(board, "GET", "/api/samples?run=broken")
    assert status == 422 and "corrupt" in data["error"]
    assert request(board, "GET", "/api/runs")[0] == 200


def test_the_explorer_shows_the_numbers_and_labels_of_bevialm_attention(
    runs: Runs, board: Board, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for run, prompt in (("tiny", PROMPT), ("bpe", "MARA: Of the climbing, é")):
        expected, labels = attention_of_the_command(monkeypatch, tmp_path, runs.root / run / "best.npz", prompt)
        status, data = post(board, run=run, checkpoint="best.npz", prompt=prompt)
        assert status == 200 and data["tokens"] == labels
        got = from_json(data["weights"])
        assert got.shape == expected.shape == (2, 2, len(labels), len(labels))
        np.testing.assert_array_equal(got, expected)  # the same numbers, bit for bit
    assert "␣" in labels and any(r"\x" in t for t in labels)  # BPE: a visible space, bytes of a part character


def test_generation_mode_shows_what_sample_attention_records(
    runs: Runs, board: Board, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, object] = {}
    real = viz.generation_attention_figure

    def spy(weights: object, tokens: list[str], prompt_len: int, **kw: object) -> object:
        seen.update(weights=weights, tokens=tokens, prompt_len=prompt_len)
        return real(weights, tokens, prompt_len, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(viz, "generation_attention_figure", spy)
    ckpt = str(runs.root / "tiny" / "best.npz")
    argv = ["sample", "--checkpoint", ckpt, "--prompt", "MA", "--sample_len", "20", "--temperature", "0.8", "--seed", "7"]
    assert cli.main([*argv, "--attention", str(tmp_path / "g.png")]) == 0
    status, data = post(board, run="tiny", checkpoint="best.npz", prompt="MA", mode="generate", n=20, temperature=0.8, seed=7)
    assert status == 200 and data["prompt_len"] == seen["prompt_len"] == 2
    assert data["tokens"] == [viz.visible(t) for t in seen["tokens"]]  # type: ignore[attr-defined]
    np.testing.assert_array_equal(from_json(data["weights"]), np.asarray(seen["weights"], dtype=np.float64))


def test_samples_are_the_ones_the_trainer_printed(runs: Runs, board: Board) -> None:
    status, data = request(board, "GET", "/api/samples?run=tiny")
    assert status == 200 and [s["step"] for s in data["samples"]] == [20]
    printed = runs.printed["tiny"].split("----- sample at step 20 -----\n")[1].split("\n-----")[0]
    assert data["samples"][0]["text"] == printed
    assert request(board, "GET", "/api/samples?run=tiny")[1] == data  # drawn once per checkpoint


def test_several_tabs_at_once(board: Board) -> None:
    def one(i: int) -> int:
        if i % 4 == 0:
            return post(board, run="tiny", checkpoint="best.npz", prompt=PROMPT)[0]
        return request(board, "GET", "/api/runs" if i % 2 else "/api/metrics?run=tiny&offset=0")[0]

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(24))) == {200}


def test_the_page_and_its_files_ship_in_the_package(board: Board) -> None:
    status, page = request(board, "GET", "/")
    assert status == 200 and "<title>BeviaLLM board</title>" in page
    for name in ("board.css", "charts.js", "runs.js", "explorer.js", "colors.js"):
        assert f"/static/{name}" in page and request(board, "GET", f"/static/{name}")[0] == 200
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    root = Path(__file__).resolve().parent.parent
    assert '"board/static/*"' in (root / "pyproject.toml").read_text()  # package-data: they ship in the wheel
    for f in (root / "bevialm" / "board" / "static").iterdir():
        assert "https://" not in f.read_text() and "http://" not in f.read_text().replace('"http://www.w3.org/2000/svg"', "")


# --- the command line ----------------------------------------------------------------------------


def test_a_missing_runs_folder_or_a_bad_port_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([*CLI, "board", str(tmp_path / "none")], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and done.stderr == f"error: runs folder '{tmp_path / 'none'}' does not exist (train a run first: make train)\n"
    done = subprocess.run([*CLI, "board", "--port", "70000"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "port number" in done.stderr


def wait_for_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("bevialm board: http://"), line + (proc.stderr.read() if proc.stderr else "")
    return line


@pytest.mark.parametrize(("host", "warned"), [("127.0.0.1", False), ("0.0.0.0", True)])
def test_it_prints_its_address_warns_beyond_loopback_and_stops_on_ctrl_c_with_one_line(runs: Runs, host: str, warned: bool) -> None:
    proc = subprocess.Popen(
        [*CLI, "board", str(runs.root), "--port", "0", "--host", host], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = wait_for_line(proc)
        assert f"http://{host}:" in line
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    lines = err.splitlines()
    assert proc.returncode == 130 and lines[-1] == "bevialm board stopped" and "Traceback" not in err
    assert len(lines) == (2 if warned else 1)
    if warned:
        assert lines[0].startswith("warning: serving on 0.0.0.0, not only this machine")


def test_the_board_is_a_bevialm_subcommand() -> None:
    args = cli.build_parser().parse_args(["board"])
    assert (args.runs_dir, args.port, args.host) == ("runs", 8000, "127.0.0.1")


def test_a_port_in_use_is_one_line(board: Board, runs: Runs) -> None:
    port = str(board.server_address[1])
    done = subprocess.run([*CLI, "board", str(runs.root), "--port", port], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and done.stderr.startswith(f"error: cannot serve on 127.0.0.1 port {port}: ")
    assert done.stderr.count("\n") == 1 and "--port" in done.stderr


def test_the_command_in_this_process_warns_serves_and_stops_on_ctrl_c(
    runs: Runs, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(self: Board, poll_interval: float = 0.5) -> None:
        assert self.allowed_host("anything.example:1")  # beyond loopback, as the user chose
        raise KeyboardInterrupt

    monkeypatch.setattr(Board, "serve_forever", interrupted)
    assert cli.main(["board", str(runs.root), "--port", "0", "--host", "0.0.0.0"]) == 130
    captured = capsys.readouterr()
    assert captured.out.startswith("bevialm board: http://0.0.0.0:")
    assert captured.err.splitlines()[0].startswith("warning: serving on 0.0.0.0") and captured.err.splitlines()[-1] == "bevialm board stopped"


def test_caches_keep_the_latest_few_and_a_missing_file_or_a_busy_board_is_a_message(runs: Runs, board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    models, headers = explore.ModelCache(size=1), runs_view.HeaderCache(size=1)
    for name in ("best.npz", "last.npz"):
        path = str(runs.root / "tiny" / name)
        assert models.get(path).step == 20 and headers.get(path).step == 20
    with pytest.raises(paths.Refused, match="has no nothing.npz"):
        paths.run_file(os.path.realpath(runs.root), "tiny", "nothing.npz")
    monkeypatch.setattr("bevialm.board.server.TIMEOUT", 0.01)
    taken = [board.slots.acquire() for _ in range(2)]  # both slots busy (two models running)
    try:
        status, data = post(board, run="tiny", checkpoint="best.npz", prompt="MA")
    finally:
        for _ in taken:
            board.slots.release()
    assert status == 503 and "busy" in data["error"]


def test_a_sample_that_cannot_be_drawn_is_a_message(runs: Runs, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = runs_view.HeaderCache().get(str(runs.root / "tiny" / "last.npz"))
    monkeypatch.setitem(ckpt.header["train_config"], "temperature", -1.0)
    assert "temperature" in runs_view._sample(ckpt, str(runs.root / "tiny" / "last.npz"))["error"]


def test_an_ipv6_loopback_address_is_served_and_shown_in_brackets(runs: Runs) -> None:
    try:
        b = Board(str(runs.root), "::1", 0)
    except OSError as e:  # a machine without IPv6
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        assert b.url == f"http://[::1]:{b.server_address[1]}/" and b.loopback
        assert b.allowed_host(f"[::1]:{b.server_address[1]}") and not b.allowed_host("[::1]:1")
    finally:
        b.server_close()
