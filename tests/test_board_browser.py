"""`bevialm board` in a real browser: Debian's chromium, driven by Playwright, over a board
serving real tiny runs on a free port. The curve has a point per metrics record and grows
without a reload (also while a real run trains); the explorer's weights are `bevialm
attention`'s; hovering a token highlights that row in every head; no console errors.
Screenshots are kept in the test's temporary folder and in board-screenshots/ (ignored by git).

Playwright's own browser download cannot work on the project's machines, so the tests use
``/usr/bin/chromium`` (``.ci/run`` installs it with apt). Without it they are skipped with the
reason, except under ``CI=true``, where a missing browser fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from bevialm.board.server import Board
from tests.board_fixtures import PROMPT, ROOT, Runs, attention_of_the_command, from_json, make_runs, serving

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = os.environ.get("BEVIALM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"]
SHOTS = ROOT / "board-screenshots"
TIMEOUT_MS = 20_000


def missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (make install installs the dev extra)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does it)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = missing_browser()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser tests: {reason}")
        print(f"skipping the browser tests: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return make_runs(tmp_path_factory.mktemp("board-browser"))


@pytest.fixture(scope="module")
def board(runs: Runs) -> Iterator[Board]:
    with serving(runs.root) as b:
        yield b


class Console:
    """Every console error and uncaught exception of a page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))


@pytest.fixture
def page(browser: Browser, board: Board, tmp_path: Path) -> Iterator[tuple[Page, Console]]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    p = context.new_page()
    p.set_default_timeout(TIMEOUT_MS)
    console = Console(p)
    p.goto(board.url)
    yield p, console
    context.close()
    assert console.errors == []  # the browser console has no errors


def shot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(exist_ok=True)
    shutil.copy(path, SHOTS / name)
    return path


def points(page: Page, run: str) -> dict[str, int]:
    return {kind: page.locator(f"#chart circle.pt-{kind}[data-run='{run}']").count() for kind in ("train", "val")}


def counted(path: Path) -> dict[str, int]:
    kinds = [json.loads(line)["kind"] for line in path.read_text().splitlines()]
    return {"train": kinds.count("train"), "val": kinds.count("eval")}


def wait_points(page: Page, run: str, want: dict[str, int]) -> None:
    page.wait_for_function(
        "([run, t, v]) => document.querySelectorAll(`#chart circle.pt-train[data-run='${run}']`).length === t"
        " && document.querySelectorAll(`#chart circle.pt-val[data-run='${run}']`).length === v",
        arg=[run, want["train"], want["val"]],
    )


def test_the_curve_has_a_point_per_record_and_a_new_line_adds_one_without_a_reload(
    page: tuple[Page, Console], runs: Runs, tmp_path: Path
) -> None:
    p, _ = page
    metrics = runs.root / "tiny" / "metrics.jsonl"
    want = counted(metrics)
    wait_points(p, "tiny", want)
    assert points(p, "tiny") == want and want["train"] == 10 and want["val"] == 2
    assert p.locator("#chart").get_attribute("data-y") == "bpc"  # the runs' tokenizers differ
    legend = p.locator("#legend").inner_text()
    assert "tiny: characters" in legend and "bpe: byte-level BPE, 300 tokens" in legend
    assert "corrupt" in p.locator("tr[data-run='broken']").inner_text()  # a broken run says why, in the page
    shot(p, tmp_path, "board-runs.png")
    p.evaluate("window.notReloaded = true")
    last = json.loads(metrics.read_text().splitlines()[-2])  # the last train record
    with metrics.open("a") as f:
        f.write(json.dumps({**last, "step": 22, "loss": last["loss"] - 0.01}) + "\n")
    wait_points(p, "tiny", {**want, "train": want["train"] + 1})
    assert p.evaluate("window.notReloaded") is True
    p.select_option("#x-axis", "tokens")
    p.select_option("#y-axis", "loss")
    assert p.locator("#chart").get_attribute("data-y") == "loss" and "tokens seen" in p.locator("#chart").inner_text()
    assert points(p, "tiny") == {**want, "train": want["train"] + 1}


def test_a_run_that_is_training_grows_on_the_page(page: tuple[Page, Console], runs: Runs, tmp_path: Path) -> None:
    p, _ = page
    out = runs.root / "live"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bevialm", "train", "--data", str(ROOT / "data.txt"), "--out", str(out),
         "--ctx", "16", "--dim", "16", "--layers", "1", "--heads", "2", "--mlp_hidden", "32", "--batch", "4",
         "--steps", "100000", "--log_every", "25", "--eval_every", "500", "--eval_iters", "2", "--sample_len", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        grown = "(n) => document.querySelectorAll(`#chart circle.pt-train[data-run='live']`).length >= n"
        p.wait_for_function(grown, arg=3, timeout=60_000)
        before = points(p, "live")["train"]
        shot(p, tmp_path, "board-training-1.png")
        p.wait_for_function(grown, arg=before + 4, timeout=60_000)
        shot(p, tmp_path, "board-training-2.png")
        assert "training" in p.locator("tr[data-run='live']").inner_text()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def run_explorer(p: Page, run: str, prompt: str) -> None:
    p.click("button[data-tab=attention]")
    p.wait_for_function("(run) => [...document.querySelectorAll('#explore-run option')].some((o) => o.value === run)", arg=run)
    p.select_option("#explore-run", run)
    p.select_option("#explore-checkpoint", "best.npz")
    p.fill("#prompt", prompt)
    p.click("#explore-run-button")


def test_the_explorer_shows_bevialm_attentions_numbers_and_hover_highlights_each_heads_row(
    page: tuple[Page, Console], runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, _ = page
    expected, labels = attention_of_the_command(monkeypatch, tmp_path, runs.root / "tiny" / "best.npz", PROMPT)
    run_explorer(p, "tiny", PROMPT)
    p.wait_for_selector(".head[data-layer='1'][data-head='1']")
    assert json.loads(p.locator("#heads").get_attribute("data-tokens") or "") == labels
    assert [t for t in p.locator("#tokens .tok").all_inner_texts()] == labels
    for panel in p.locator(".head").all():
        layer, head = int(panel.get_attribute("data-layer") or ""), int(panel.get_attribute("data-head") or "")
        np.testing.assert_array_equal(from_json(json.loads(panel.get_attribute("data-weights") or "")), expected[layer, head])
    query = 6  # the "O" of "Of"
    p.hover(f"#tokens .tok[data-position='{query}']")
    for panel in p.locator(".head").all():
        layer, head = int(panel.get_attribute("data-layer") or ""), int(panel.get_attribute("data-head") or "")
        assert panel.get_attribute("data-query") == str(query)
        cells = panel.locator(".reads .cell")
        shown = [c.get_attribute("data-weight") for c in cells.all()]
        row = expected[layer, head, query]
        assert [float(w or "nan") for w in shown[: query + 1]] == row[: query + 1].tolist() and set(shown[query + 1 :]) == {""}
        assert int(panel.locator(".reads .cell.top").first.get_attribute("data-key") or "") == int(np.nanargmax(row))
    assert "current" in (p.locator(f"#tokens .tok[data-position='{query}']").get_attribute("class") or "")
    p.click(".head[data-layer='1'][data-head='0']")
    big = p.locator("#big")
    assert big.is_visible() and "layer 2, head 1" in big.inner_text()
    assert big.locator("svg.head-lines line").count() >= 1
    shot(p, tmp_path, "board-attention.png")


def test_generation_mode_steps_through_the_new_tokens(page: tuple[Page, Console], tmp_path: Path) -> None:
    p, _ = page
    p.click("button[data-tab=attention]")
    p.check("input[value=generate]")
    p.fill("#gen-n", "12")
    run_explorer(p, "tiny", "MARA:")
    p.wait_for_selector("#stepper:not([hidden])")
    assert p.locator("#step-label").inner_text().startswith("generated token 1 of 12")
    p.click("#step-next")
    p.click("#step-next")
    assert p.locator("#step-label").inner_text().startswith("generated token 3 of 12")
    assert p.locator(".head").first.get_attribute("data-query") == "2"
    current = p.locator("#tokens .tok.current")
    assert current.get_attribute("data-position") == str(5 + 2)
    shot(p, tmp_path, "board-generation.png")


def test_a_prompt_longer_than_the_context_gets_a_message_in_the_page(page: tuple[Page, Console]) -> None:
    p, _ = page
    run_explorer(p, "tiny", "MARA: Of what? Of the climbing.")
    message = p.locator("#explore-message.error")
    message.wait_for()
    assert message.inner_text() == "the prompt has 31 characters; this model reads at most ctx = 16: shorten it"


def test_two_tabs_at_once(browser: Browser, board: Board, runs: Runs) -> None:
    context = browser.new_context()
    tabs = [context.new_page() for _ in range(2)]
    errors: list[Any] = []
    for tab in tabs:
        tab.on("pageerror", lambda e: errors.append(e))
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(board.url)
    for tab in tabs:
        tab.wait_for_selector("#chart circle.pt-val[data-run='bpe']")
    context.close()
    assert errors == []
