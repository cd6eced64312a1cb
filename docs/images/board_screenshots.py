"""Screenshots of `bevialm board` for docs/board.md, in headless Debian chromium (Playwright).

Run by docs/images/regenerate.sh after it trains runs/visualization and runs/visualization-bpe:
serves runs/ on a free port and photographs the runs view (both runs overlaid; their tokenizers
differ, so the y axis is bits per character), the attention explorer over a prompt (a token
pointed at, one head open large) and the generation mode stepped to a token.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

from bevialm.board.server import Board

HERE = Path(__file__).resolve().parent
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"]


def main(runs: str = "runs") -> None:
    board = Board(runs, "127.0.0.1", 0)
    threading.Thread(target=board.serve_forever, daemon=True).start()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 820})
        page.goto(board.url)
        page.wait_for_selector("#chart circle.pt-val[data-run='visualization-bpe']")
        for box in page.locator("#runs-table input[type=checkbox]").all():  # only the two runs of the docs
            if box.get_attribute("data-run") not in ("visualization", "visualization-bpe"):
                box.uncheck()
        page.wait_for_selector("#samples pre", timeout=120_000)  # drawn from last.npz: a few seconds
        page.wait_for_timeout(500)
        page.screenshot(path=str(HERE / "board-runs.png"), full_page=True)
        page.click("button[data-tab=attention]")
        page.select_option("#explore-run", "visualization")
        page.select_option("#explore-checkpoint", "best.npz")
        page.fill("#prompt", (HERE / "prompt-short.txt").read_text(encoding="utf-8"))
        page.click("#explore-run-button")
        page.wait_for_selector(".head[data-layer='3'][data-head='3']")
        page.click(".head[data-layer='3'][data-head='0'] .title")
        page.hover("#tokens .tok[data-position='18']")  # the B of TOBIAS
        page.wait_for_timeout(300)
        page.screenshot(path=str(HERE / "board-attention.png"), full_page=True, clip={"x": 0, "y": 0, "width": 1100, "height": 1300})
        page.check("input[value=generate]")
        page.fill("#prompt", (HERE / "generation-prompt.txt").read_text(encoding="utf-8"))
        page.fill("#gen-n", "22")
        page.fill("#gen-seed", "42")  # bevialm sample's default seed: the same text as docs/visualization.md's
        page.click("#explore-run-button")
        page.wait_for_selector("#stepper:not([hidden])")
        for _ in range(2):
            page.click("#step-next")
        page.screenshot(path=str(HERE / "board-generation.png"), full_page=True, clip={"x": 0, "y": 0, "width": 1100, "height": 1100})
        browser.close()
    board.shutdown()
    print("wrote docs/images/board-runs.png, board-attention.png, board-generation.png")


if __name__ == "__main__":
    main(*sys.argv[1:])
