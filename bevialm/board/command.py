"""``bevialm board [RUNS_DIR] [--port P] [--host H]``: its flags and its handler.

:func:`add_board_subcommand` adds the parser to ``bevialm``'s subcommands and sets its
``handler``, the convention of :mod:`bevialm.cli`.
"""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = (
    "Serve a local web page to watch training and explore attention: every run in RUNS_DIR with its "
    "config, tokenizer, steps and best validation loss; loss curves that grow while a run trains; "
    "and, for a checkpoint and a prompt you type, every layer's and head's attention. It reads only "
    "files under RUNS_DIR and binds 127.0.0.1 (this machine) unless --host says otherwise."
)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535 (0: any free one), got {text!r}")
    return int(text)


def add_board_subcommand(sub: Any) -> None:
    """Add ``board`` to ``sub`` (an ``add_subparsers`` result)."""
    p = sub.add_parser("board", help="a local web page to watch training and explore attention", description=DESCRIPTION)
    p.add_argument("runs_dir", nargs="?", default="runs", metavar="RUNS_DIR", help="the folder of runs (default: %(default)s)")
    p.add_argument("--port", type=_port, default=8000, help="port to listen on; 0 picks a free one (default: %(default)s)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; any other prints a warning)",
    )
    p.set_defaults(handler=run_board)


def run_board(args: argparse.Namespace) -> int:
    from bevialm.board.server import serve
    from bevialm.runtime import Stopped, Terminated, stop_signals_raise

    try:
        with stop_signals_raise():
            serve(args.runs_dir, args.host, args.port)
    except KeyboardInterrupt as e:
        raise Stopped("bevialm board stopped", terminated=isinstance(e, Terminated)) from None
    return 0  # pragma: no cover - serve returns only by an exception
