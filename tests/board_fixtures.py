"""What the board's tests share: real tiny runs in a runs folder, a board serving them on a
free port in this process (so coverage sees the server), and what `bevialm attention` and
`bevialm sample --attention` compute for a prompt (captured from the real commands)."""

from __future__ import annotations

import http.client
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bevialm import cli, train, viz
from bevialm.board.server import Board
from bevialm.types import Array

ROOT = Path(__file__).resolve().parent.parent
DATA = str(ROOT / "data.txt")
PROMPT = "MARA: Of what?"
SECRET = "the outside file's secret 8c1f"


@dataclass(frozen=True)
class Runs:
    root: Path
    outside: Path
    printed: dict[str, str]  # what each trainer printed


def tiny_run(out: Path, **changes: Any) -> str:
    """Train a real tiny run into ``out``; return what the trainer printed."""
    fields: dict[str, Any] = dict(
        data=DATA, ctx=16, dim=16, layers=2, heads=2, mlp_hidden=32, batch=4, steps=20, warmup=2,
        log_every=2, eval_every=10, eval_iters=2, sample_every=20, sample_len=12, out=str(out),
    )  # fmt: skip
    fields.update(changes)
    printed = io.StringIO()
    train.train(train.TrainConfig(**fields), stdout=printed)
    return printed.getvalue()


def make_runs(base: Path) -> Runs:
    """``runs/``: ``tiny`` (characters), ``bpe`` (byte-level BPE), ``broken`` (a corrupt
    checkpoint and lines that are not records), ``escape`` (a link to a folder outside), and in
    ``tiny`` a link ``secret.npz`` to a file outside."""
    root, outside = base / "runs", base / "outside"
    outside.mkdir()
    (outside / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 1.0, "note": SECRET}) + "\n")
    (outside / "secret.npz").write_text(SECRET)
    printed = {"tiny": tiny_run(root / "tiny"), "bpe": tiny_run(root / "bpe", tokenizer="bpe", vocab_size=300)}
    broken = root / "broken"
    broken.mkdir()
    (broken / "last.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    good = (root / "tiny" / "metrics.jsonl").read_text().splitlines()[0]
    (broken / "metrics.jsonl").write_text(f"{good}\nnot json at all\n[1, 2]\n")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "tiny" / "secret.npz").symlink_to(outside / "secret.npz")
    return Runs(root, outside, printed)


@contextmanager
def serving(root: Path) -> Iterator[Board]:
    """A board over ``root`` on a free port of 127.0.0.1, in a thread of this process."""
    board = Board(str(root), "127.0.0.1", 0)
    thread = threading.Thread(target=board.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield board
    finally:
        board.shutdown()
        board.server_close()
        thread.join(timeout=10)


def request(
    board: Board, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """Send ``path`` exactly as written (no normalisation); the status and the JSON answer (or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", board.server_address[1], timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        sent = {"Host": f"127.0.0.1:{board.server_address[1]}", **(headers or {})}
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
            sent.setdefault("Content-Length", str(len(body)))
        for k, v in sent.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        answer = conn.getresponse()
        data = answer.read()
    finally:
        conn.close()
    try:
        return answer.status, json.loads(data)
    except json.JSONDecodeError:
        return answer.status, data.decode("utf-8", "replace")


def post(board: Board, **fields: Any) -> tuple[int, Any]:
    return request(board, "POST", "/api/attention", json.dumps(fields).encode())


def attention_of_the_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, checkpoint: Path, prompt: str) -> tuple[Array, list[str]]:
    """The maps and labels `bevialm attention` draws for ``prompt`` (its figure function, spied on)."""
    seen: dict[str, Any] = {}
    real = viz.prompt_attention_figure

    def spy(maps: Any, tokens: Any, **kw: Any) -> Any:
        seen["maps"], seen["tokens"] = maps, tokens
        return real(maps, tokens, **kw)

    monkeypatch.setattr(viz, "prompt_attention_figure", spy)
    assert cli.main(["attention", "--checkpoint", str(checkpoint), "--prompt", prompt, "-o", str(tmp_path / "a.png")]) == 0
    maps = np.stack([np.asarray(m)[0] for m in seen["maps"]]).astype(np.float64)
    t = maps.shape[-1]
    maps[..., np.triu(np.ones((t, t), dtype=bool), k=1)] = np.nan  # blank in the figure
    return maps, [viz.visible(s) for s in seen["tokens"]]


def from_json(nested: Any) -> Array:
    """The board's nested lists (``None`` for blank) as an array with NaN."""
    return np.array(nested, dtype=object).astype(np.float64)  # None becomes nan
