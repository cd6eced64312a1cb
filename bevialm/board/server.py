"""The board's HTTP server: a ``ThreadingHTTPServer`` (several tabs at once) and its handler.

Routes: ``/`` (the page), ``/static/NAME`` (only the files shipped in ``static/``, by exact
name), and a small JSON API the page polls:

- ``GET /api/runs``: every run's summary (:func:`bevialm.board.runs_view.summary`);
- ``GET /api/metrics?run=R&offset=B``: run R's metrics records after byte B;
- ``GET /api/samples?run=R``: run R's samples;
- ``POST /api/attention``: ``{"run", "checkpoint", "prompt", "mode": "prompt" | "generate",
  "n", "temperature", "seed"}``, the explorer's numbers.

Safe by default: it binds 127.0.0.1; it answers only requests whose ``Host`` is the
address it serves under when bound to loopback (a page elsewhere cannot reach it through
DNS rebinding); a POST must be ``application/json`` (a form on another site cannot send
one without the browser asking first, which this server never allows) of at most
:data:`MAX_BODY` bytes; at most :data:`MODEL_SLOTS` model runs at once; a request that
stalls is dropped after :data:`TIMEOUT` s. Every error is one JSON ``{"error": ...}`` line
the page shows, and the server goes on. A prompt the model cannot read (too long for its
context, characters outside its vocabulary) is an answer, ``200 {"error": ..., "refused":
true}``, not an HTTP error: the browser would log a failed request in its console.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bevialm.board import explore, paths, runs_view

MAX_BODY = 16 << 10
MODEL_SLOTS = 2
TIMEOUT = 30.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


class ClientError(ValueError):
    """A request the board refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


def static_files() -> dict[str, bytes]:
    """The page's files, read once from the package: ``{name: bytes}``."""
    folder = resources.files("bevialm.board") / "static"
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")}


class Board(ThreadingHTTPServer):
    """The server and what its handlers share: the runs folder, the caches, the limits."""

    daemon_threads = True  # Ctrl-C does not wait for an open tab's request

    def __init__(self, root: str, host: str, port: int) -> None:
        self.root = os.path.realpath(root)
        self.files = static_files()
        self.headers_cache = runs_view.HeaderCache()
        self.samples = runs_view.Samples(self.headers_cache)
        self.models = explore.ModelCache()
        self.slots = threading.BoundedSemaphore(MODEL_SLOTS)
        self.loopback = host in LOOPBACK
        family_host = host.strip("[]")
        if ":" in family_host:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__((family_host, port), Handler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def allowed_host(self, value: str | None) -> bool:
        if not self.loopback:
            return True  # the user chose to serve beyond this machine (and was warned)
        port = self.server_address[1]
        return value in {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")}


class Handler(BaseHTTPRequestHandler):
    server: Board
    timeout = TIMEOUT
    protocol_version = "HTTP/1.1"
    server_version = "bevialm-board"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: a board polled by a page would print a line a second."""

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; connect-src 'self'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        body = json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
        self._send(status, body, "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json({"error": message}, status)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self.close_connection = True  # a refused body may be left unread: never read it as the next request
        self._answer(self._post)

    def _answer(self, route: Any) -> None:
        try:
            if not self.server.allowed_host(self.headers.get("Host")):
                raise ClientError("unexpected Host header: open the address bevialm board printed", HTTPStatus.FORBIDDEN)
            route()
        except ClientError as e:
            self._error(e.status, str(e))
        except explore.ExploreError as e:  # an answer, not a failure: the page shows it beside the prompt
            self._json({"error": str(e), "refused": True})
        except paths.Refused as e:
            self._error(HTTPStatus.NOT_FOUND, str(e))
        except (ValueError, OSError, MemoryError) as e:  # a broken file under the runs folder: say so, serve on
            self._error(HTTPStatus.UNPROCESSABLE_ENTITY, " ".join(str(e).split()) or type(e).__name__)

    def _get(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        root = self.server.root
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.files["index.html"], _TYPES[".html"])
        elif url.path.startswith("/static/") and url.path[len("/static/") :] in self.server.files:
            name = url.path[len("/static/") :]
            self._send(HTTPStatus.OK, self.server.files[name], _TYPES.get(os.path.splitext(name)[1], "text/plain"))
        elif url.path == "/api/runs":
            cache = self.server.headers_cache
            self._json({"root": root, "runs": [runs_view.summary(root, n, cache) for n in paths.list_runs(root)]})
        elif url.path == "/api/metrics":
            offset = _integer(query.get("offset", "0"), "offset")
            self._json(runs_view.read_metrics(paths.metrics_file(root, query.get("run")), offset))
        elif url.path == "/api/samples":
            self._json({"samples": self.server.samples.of(root, query.get("run", ""))})
        else:
            raise ClientError("not found", HTTPStatus.NOT_FOUND)

    def _body(self) -> dict[str, Any]:
        if self.headers.get_content_type() != "application/json":
            raise ClientError("a request body must be application/json", HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        length = _integer(self.headers.get("Content-Length", ""), "Content-Length")
        if length > MAX_BODY:
            raise ClientError(f"the request is {length:,} bytes; the board takes at most {MAX_BODY:,}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            body = json.loads(self.rfile.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ClientError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise ClientError("the request body must be a JSON object")
        return body

    def _post(self) -> None:
        if urlsplit(self.path).path != "/api/attention":
            raise ClientError("not found", HTTPStatus.NOT_FOUND)
        body = self._body()
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ClientError("prompt must be text")
        path = paths.run_file(self.server.root, body.get("run"), body.get("checkpoint"))
        if not self.server.slots.acquire(timeout=TIMEOUT):
            raise ClientError("the board is busy running other requests: try again", HTTPStatus.SERVICE_UNAVAILABLE)
        try:
            loaded = self.server.models.get(path)
            if body.get("mode") == "generate":
                answer = explore.generation_attention(loaded, prompt, body.get("n"), body.get("temperature", 1.0), body.get("seed", 0))
            else:
                answer = explore.prompt_attention(loaded, prompt)
        finally:
            self.server.slots.release()
        self._json(answer)


def _integer(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise ClientError(f"{what} must be a whole number >= 0")
    return int(text)


def serve(root: str, host: str = "127.0.0.1", port: int = 8000, *, out: Any = None) -> None:
    """Serve the board over runs folder ``root`` until Ctrl-C (``KeyboardInterrupt``)."""
    out = out or sys.stdout
    if not os.path.isdir(root):
        raise ValueError(f"runs folder '{root}' does not exist (train a run first: make train)")
    try:
        board = Board(root, host, port)
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise OSError(f"cannot serve on {host} port {port}: {e.strerror or e}; choose another with --port (0: any free one)") from None
    if not board.loopback:
        print(
            f"warning: serving on {host}, not only this machine: anyone who can reach it can read the runs "
            f"in {root} and run their models (the default, 127.0.0.1, is this machine only)",
            file=sys.stderr,
            flush=True,
        )
    print(f"bevialm board: {board.url} (runs in {board.root}; Ctrl-C stops it)", file=out, flush=True)
    try:
        board.serve_forever(poll_interval=0.2)
    finally:
        board.server_close()
