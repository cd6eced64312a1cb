"""The command line: ``bevialm train`` and ``bevialm sample`` (and the grading commands).

``python main.py --data data.txt ...`` (the playbook's entry point) is ``bevialm train
--data data.txt ...``: both are built by :func:`train_parser` from the same flag
definitions, so they cannot drift. Each flag is defined exactly once, in
:mod:`bevialm.cli_flags`; the argument types and the one-line parser are
:mod:`bevialm.cli_args`'s (the grading commands use them too), and what each
subcommand does is :mod:`bevialm.cli_commands`'s.

``bevialm`` is also ``python -m bevialm`` (:mod:`bevialm.__main__`), and
``bevialm --version`` prints the version.

Exit codes: 0 done; 1 an error the user can fix (one ``error: ...`` line on
stderr, no traceback); 2 a usage error (argparse's message); 3 training
diverged (NaN or infinite loss); 130 interrupted by Ctrl-C and 143 by SIGTERM
(training saves its checkpoint first and says so in one line on stderr).
``BEVIALM_DEBUG=1`` shows the traceback behind an ``error:`` line.

``--config FILE`` (training) reads flags from a TOML file (:mod:`bevialm.config_file`): its
values become the training parser's defaults before the command line is parsed, so flags given
there override them. ``eval`` scores a whole text (:mod:`bevialm.evaluate`); ``export`` writes
nanoGPT-named weights (:mod:`bevialm.export`).

The picture commands ``plot`` and ``attention`` (and ``sample --attention``) compose
:mod:`bevialm.viz`; they need the optional matplotlib (``pip install 'bevialm[plot]'``)
and say so in one line when it is missing.

The grading subcommands (``skeleton``, ``grade``, ``grade-all``, ``autograder``) come from
:func:`bevialm.grading.cli.add_grading_subcommands`, which adds its parsers to
ours and sets on each a ``handler`` (a function of the parsed arguments
returning the exit code), the same convention as ``train`` and ``sample``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from bevialm import __version__
from bevialm.cli_args import OneLineParser
from bevialm.cli_commands import run_train
from bevialm.cli_flags import (
    ATTENTION_DESCRIPTION,
    EVAL_DESCRIPTION,
    EXPORT_DESCRIPTION,
    PLOT_DESCRIPTION,
    SAMPLE_DESCRIPTION,
    TRAIN_DESCRIPTION,
    configure_attention,
    configure_eval,
    configure_export,
    configure_plot,
    configure_sample,
    configure_train,
)
from bevialm.runtime import Stopped, Terminated

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143  # 0 and 3: cli_commands
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool its pipe closed on


def train_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The training parser alone (``python main.py``'s)."""
    p = OneLineParser(prog=prog, description=TRAIN_DESCRIPTION)
    configure_train(p)
    return p


def build_parser(prog: str = "bevialm") -> argparse.ArgumentParser:
    """``bevialm`` with all its subcommands."""
    # Imported here, not at the top: ``python main.py`` (training only) need not load the grader.
    from bevialm.board.command import add_board_subcommand
    from bevialm.grading.cli import add_grading_subcommands

    parser = OneLineParser(prog=prog, description="BeviaLLM: a gradient-verified NumPy transformer language model.")
    parser.add_argument("--version", action="version", version=f"bevialm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    configure_train(sub.add_parser("train", help="train a model on a text file", description=TRAIN_DESCRIPTION))
    configure_sample(sub.add_parser("sample", help="generate text from a checkpoint", description=SAMPLE_DESCRIPTION))
    configure_plot(sub.add_parser("plot", help="draw the loss curves of runs", description=PLOT_DESCRIPTION))
    configure_attention(
        sub.add_parser("attention", help="draw a model's attention over a prompt", description=ATTENTION_DESCRIPTION)
    )
    add_board_subcommand(sub)
    configure_eval(sub.add_parser("eval", help="loss, bits per character and perplexity over a text", description=EVAL_DESCRIPTION))
    configure_export(
        sub.add_parser("export", help="write a checkpoint as nanoGPT-named safetensors", description=EXPORT_DESCRIPTION)
    )
    add_grading_subcommands(sub)
    return parser

def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _training_parser(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]] | None:
    """The training parser ``argv`` is for (``main.py``'s, or ``bevialm train``'s) and its flags; None otherwise."""
    if parser.get_default("handler") is run_train:
        return parser, argv
    if not argv or argv[0] != "train":
        return None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["train"], argv[1:]
    return None  # pragma: no cover - build_parser always has the subcommands


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """``--config FILE``: its values become the training parser's defaults, so flags given override them."""
    from bevialm import config_file

    found = _training_parser(parser, argv)
    if found is None:
        return
    target, flags = found
    if "-h" in flags or "--help" in flags:
        return  # help needs no config, and a broken one must not hide it
    pre = OneLineParser(prog=target.prog, add_help=False)  # `--config` without a file: one usage line
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(flags)
    if known.config is None:
        return
    actions = {a.dest: a for a in target._actions if a.option_strings and a.dest != "help"}
    values = config_file.read(known.config, actions)
    target.set_defaults(**values)
    if "data" in values:
        actions["data"].required = False


def _dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    try:
        _apply_config(parser, list(sys.argv[1:] if argv is None else argv))
        args = parser.parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except KeyboardInterrupt as e:  # one line, whatever was saved (Stopped says what)
        terminated = isinstance(e, Terminated) or (isinstance(e, Stopped) and e.terminated)
        line = str(e) if isinstance(e, Stopped) else "terminated (SIGTERM)" if terminated else "interrupted"
        print(line, file=sys.stderr, flush=True)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader left (``bevialm sample ... | head``): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return EXIT_BROKEN_PIPE
    except (ValueError, OSError, MemoryError) as e:
        if os.environ.get("BEVIALM_DEBUG"):
            raise
        message = _one_line(e)
        if isinstance(e, MemoryError):  # the estimate (bevialm.memory) let through what did not fit
            message = "out of memory" + (f" ({e})" if str(e) else "") + "; try smaller sizes"
            message = " ".join(message.split())
        print(f"error: {message}", file=sys.stderr, flush=True)
        return EXIT_ERROR


def main(argv: list[str] | None = None, prog: str = "bevialm") -> int:
    """``bevialm COMMAND [flags]`` (or ``python -m bevialm``, with that ``prog``); returns the exit code."""
    return _dispatch(build_parser(prog), argv)


def train_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python main.py [flags]``: the ``train`` subcommand without the subcommand word."""
    return _dispatch(train_parser(prog), argv)


if __name__ == "__main__":  # pragma: no cover - ``python -m bevialm.cli``
    sys.exit(main())
