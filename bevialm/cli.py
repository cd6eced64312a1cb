"""The command line: ``bevialm train`` and ``bevialm sample`` (and the grading commands).

``python main.py --data data.txt ...`` (the playbook's entry point) is ``bevialm train
--data data.txt ...``: both are built by :func:`train_parser` from the same flag
definitions, so they cannot drift. Each flag is defined exactly once below, in a
group function that both subcommands call where the flag applies (``--seed``,
``--out``, ``--sample_len``, ``--temperature``, ``--top_k``, ``--top_p`` serve
training's periodic samples as well as ``sample``).

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
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from bevialm import __version__
from bevialm.runtime import Stopped, Terminated, stop_signals_raise, tune_malloc

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool its pipe closed on

DEFAULT_OUT = None  # training: a new numbered folder in runs/; --resume and sample: the newest one there


# --- argument types: each rejects a bad value with argparse's one-line usage error -------------


def _number(text: str, kind: type[int] | type[float]) -> Any:
    try:
        value = float(text) if kind is float else _integer(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _integer(text: str) -> int:
    """``2000``, and also ``2e3`` or ``1e9`` (people write sizes so): any finite whole number."""
    try:
        return int(text)
    except ValueError:
        value = float(text)  # a ValueError here: not a number at all
        if not math.isfinite(value) or value != int(value):
            raise
        return int(value)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line (``prog: error: ... (see prog --help)``), exit 2:
    a wrong flag is one clear line, as every other bad input is, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _checked(kind: type[int] | type[float], ok: Callable[[Any], bool], requirement: str) -> Callable[[str], Any]:
    """An argparse ``type``: parse ``text`` as ``kind`` and require ``ok(value)``."""

    def parse(text: str) -> Any:
        value = _number(text, kind)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must {requirement}, got {text!r}")
        return value

    parse.number_kind = kind  # type: ignore[attr-defined]  # what a config file's value must be
    return parse


positive_int = _checked(int, lambda v: v > 0, "be a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "be an integer >= 0")
positive_float = _checked(float, lambda v: v > 0, "be a positive number")
non_negative_float = _checked(float, lambda v: v >= 0, "be a number >= 0")
probability = _checked(float, lambda v: 0 <= v < 1, "lie in [0, 1)")  # dropout, Adam's betas
top_p_value = _checked(float, lambda v: 0 < v <= 1, "lie in (0, 1]")  # a nucleus mass


# --- the flags, each defined once ---------------------------------------------------------------


def _add_seed_and_out(p: argparse._ActionsContainer, *, training: bool) -> None:
    p.add_argument(
        "--seed", type=non_negative_int, default=42, help="random seed (>= 0) for reproducibility (default: %(default)s)"
    )
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help="run folder, where training writes best.npz, last.npz, metrics.jsonl and config.toml "
        "(default: a new runs/run-NNN; with --resume the newest one there)"
        if training
        else "run folder to sample from, used without --checkpoint (default: the newest run in runs/)",
    )


def _add_config_flags(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="read training flags from this TOML file (key = value, the flags' names: ctx = 64); flags on "
        "the command line override it. Every run folder gets config.toml, its effective config: "
        "--config runs/run-007/config.toml repeats that run in a new folder",
    )
    p.add_argument(
        "--init_from",
        default=None,
        metavar="CHECKPOINT",
        help="fine-tune: start from this checkpoint's weights, with a fresh optimizer at step 0; the model's "
        "shape and tokenizer are the checkpoint's (a character vocabulary must cover --data)",
    )


def _add_model_flags(p: argparse._ActionsContainer) -> None:
    p.add_argument("--ctx", type=positive_int, default=128, help="context window length in tokens (default: %(default)s)")
    p.add_argument("--dim", type=positive_int, default=128, help="embedding dimension (default: %(default)s)")
    p.add_argument("--layers", type=positive_int, default=2, help="number of transformer blocks (default: %(default)s)")
    p.add_argument(
        "--heads", type=positive_int, default=1, help="attention heads per block; must divide --dim (default: %(default)s)"
    )
    p.add_argument("--mlp_hidden", type=positive_int, default=512, help="MLP hidden layer size (default: %(default)s)")
    p.add_argument(
        "--activation", choices=("relu", "gelu"), default="relu", help="MLP activation (default: %(default)s)"
    )
    p.add_argument(
        "--dropout",
        type=probability,
        default=0.0,
        help="dropout probability in [0, 1) on embeddings and residual branches (default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="parameter dtype: float32 to train, float64 for exactness (default: %(default)s)",
    )


def _add_optimizer_flags(p: argparse._ActionsContainer) -> None:
    p.add_argument("--batch", type=positive_int, default=16, help="batch size (default: %(default)s)")
    p.add_argument(
        "--shards",
        type=positive_int,
        default=2,  # bevialm.parallel.DEFAULT_SHARDS (not imported here: --help stays fast)
        help="compute each batch in up to N shards on N threads, one BLAS thread each; the sum is the "
        "whole batch's gradient, and small batches stay whole (default: %(default)s)",
    )
    p.add_argument(
        "--accum",
        type=positive_int,
        default=1,
        metavar="K",
        help="gradient accumulation: K batches per optimizer step, weighted by tokens; a step then "
        "trains on batch x K x ctx tokens (default: %(default)s)",
    )
    p.add_argument("--steps", type=positive_int, default=5000, help="total training steps (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=3e-4, help="peak learning rate (default: %(default)s)")
    p.add_argument(
        "--warmup",
        type=non_negative_int,
        default=100,
        help="linear warmup steps before the cosine decay; 0 for none (default: %(default)s)",
    )
    p.add_argument(
        "--min_lr",
        type=non_negative_float,
        default=None,
        help="learning-rate floor the cosine decays to by --steps; equal to --lr for a constant rate "
        "(default: --lr / 10)",
    )
    p.add_argument(
        "--wd",
        type=non_negative_float,
        default=0.1,
        help="AdamW decoupled weight decay, on weight matrices only (default: %(default)s)",
    )
    p.add_argument("--beta2", type=probability, default=0.95, help="AdamW second-moment decay (default: %(default)s)")
    p.add_argument(
        "--grad_clip",
        type=non_negative_float,
        default=1.0,
        help="clip the global gradient norm to this; 0 disables clipping (default: %(default)s)",
    )


def _add_loop_flags(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--log_every", type=non_negative_int, default=200, help="print a progress line every N steps; 0: never (default: %(default)s)"
    )
    p.add_argument(
        "--eval_every",
        type=non_negative_int,
        default=500,
        help="estimate train and val loss and write checkpoints every N steps (always at the end); "
        "0: only at the end (default: %(default)s)",
    )
    p.add_argument(
        "--eval_iters",
        type=positive_int,
        default=50,
        help="batches averaged per split in each evaluation (default: %(default)s)",
    )
    p.add_argument(
        "--sample_every",
        type=non_negative_int,
        default=1000,
        help="print a sample every N steps (always at the end); 0: only at the end (default: %(default)s)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (default: the newest in runs/) from its last.npz until --steps "
        "(pass the same model flags; not together with --overwrite)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an --out that already holds a run; its files are replaced once the new run "
        "has started (its first checkpoint written)",
    )


def _add_tokenizer_flags(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--tokenizer",
        choices=("char", "bpe"),
        default="char",
        help="char: one token per character of the text; bpe: a byte-level BPE trained on the text "
        "first, saved in the checkpoints (default: %(default)s)",
    )
    p.add_argument(
        "--vocab_size",
        type=positive_int,
        default=None,
        metavar="N",
        help="tokens of the BPE vocabulary: 256 byte tokens plus N - 256 merges; N >= 256, "
        "with --tokenizer bpe only (default: 512)",
    )


def _add_sampling_flags(p: argparse._ActionsContainer, *, training: bool) -> None:
    p.add_argument(
        "--sample_len",
        type=non_negative_int,
        default=400,
        help="tokens (characters with --tokenizer char) of each sample printed during training; 0 prints "
        "no samples (default: %(default)s)"
        if training
        else "tokens to generate per sample (characters for a character-level model) (default: %(default)s)",
    )
    p.add_argument(
        "--temperature",
        type=non_negative_float,
        default=1.0,
        help="divide logits by this before sampling; 0 is greedy (argmax) (default: %(default)s)",
    )
    p.add_argument(
        "--top_k", type=non_negative_int, default=0, help="sample only among the k likeliest tokens; 0: all (default: %(default)s)"
    )
    p.add_argument(
        "--top_p",
        type=top_p_value,
        default=1.0,
        help="nucleus sampling: the smallest set of likeliest tokens with this much probability; "
        "1: all (default: %(default)s)",
    )


def _add_sample_only_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="checkpoint to sample from (default: best.npz, else last.npz, of --out or of the newest run)",
    )
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument(
        "--prompt",
        default=None,
        help="text the samples continue, encoded with the model's tokenizer; with characters, every "
        "character must be in its vocabulary (default: a newline, or the vocabulary's first character)",
    )
    prompt.add_argument("--prompt_file", default=None, metavar="PATH", help="read the prompt from this UTF-8 file")
    p.add_argument(
        "--num_samples", type=positive_int, default=1, help="number of samples, drawn as one batch (default: %(default)s)"
    )
    p.add_argument(
        "--unseen_tokens",
        action="store_true",
        help="also draw tokens that never occur in the run's training text (by default they are never drawn: "
        "a byte-level BPE has byte tokens an ASCII text never uses, such as the pieces of 'é')",
    )


def _add_layer_and_head(p: argparse._ActionsContainer) -> None:
    p.add_argument("--layer", type=positive_int, default=None, metavar="L", help="only layer L (1 = the first block)")
    p.add_argument("--head", type=positive_int, default=None, metavar="H", help="only head H (1 = the first)")


def _add_sample_attention_flags(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--attention",
        default=None,
        metavar="FILE",
        help="record every head's attention while generating and draw it to FILE (.png or .svg; the first "
        "sample; all layers unless --layer/--head; needs matplotlib). Best with a short --sample_len, e.g. 60",
    )
    p.add_argument(
        "--show-attention",
        "--show_attention",
        action="store_true",
        dest="show_attention",
        help="after each sample, print for every generated character the context characters each head "
        "attends to most (the last layer unless --layer; works without matplotlib)",
    )
    _add_layer_and_head(p)


# --- parsers ------------------------------------------------------------------------------------


def _configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="PATH", help="training text file (UTF-8); 10%% at its end is validation")
    _add_seed_and_out(p, training=True)
    _add_config_flags(p)
    model = p.add_argument_group("model")
    _add_model_flags(model)
    optim = p.add_argument_group("optimisation")
    _add_optimizer_flags(optim)
    loop = p.add_argument_group("loop, logging and checkpoints")
    _add_loop_flags(loop)
    tokens = p.add_argument_group("tokenizer")
    _add_tokenizer_flags(tokens)
    sampling = p.add_argument_group("samples printed during training")
    _add_sampling_flags(sampling, training=True)
    p.set_defaults(handler=_run_train)


def _configure_sample(p: argparse.ArgumentParser) -> None:
    _add_sample_only_flags(p)
    _add_seed_and_out(p, training=False)
    _add_sampling_flags(p, training=False)
    _add_sample_attention_flags(p.add_argument_group("attention while generating"))
    p.set_defaults(handler=_run_sample)


def _configure_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="run folder(s) holding metrics.jsonl (a run still training is fine; default: the newest run in runs/)",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="FILE",
        help="picture to write, .png or .svg (default: loss.png in the first run folder)",
    )
    p.add_argument(
        "--bpc",
        action="store_true",
        help="losses in bits per character (from each run's evaluations), to compare runs whose tokenizers differ",
    )
    p.set_defaults(handler=_run_plot)


def _configure_attention(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="checkpoint to read the model from (default: best.npz in --out, else last.npz)",
    )
    p.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help="run folder used without --checkpoint (default: the newest run in runs/)"
    )
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument(
        "--prompt", default=None, help="the text whose attention is drawn (at most ctx tokens, or see --last)"
    )
    prompt.add_argument("--prompt_file", default=None, metavar="PATH", help="read the prompt from this UTF-8 file")
    p.add_argument(
        "--last",
        action="store_true",
        help="a prompt longer than ctx tokens: draw the attention over its last ctx tokens (without it, it is refused)",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="FILE",
        help="picture to write, .png or .svg (default: attention.png in the checkpoint's run folder)",
    )
    _add_layer_and_head(p)
    p.set_defaults(handler=_run_attention)


def _configure_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint to evaluate (best.npz or last.npz of a run)")
    p.add_argument("--data", required=True, metavar="FILE", help="UTF-8 text to score, all of it")
    p.add_argument(
        "--batch", type=positive_int, default=16, help="windows of ctx tokens per forward pass (default: %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text line")
    p.set_defaults(handler=_run_eval)


def _configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint to export")
    p.add_argument(
        "--to",
        required=True,
        metavar="FILE",
        help="weights file to write (model.safetensors, model.pt); the sidecar FILE.json (the extension "
        "replaced) holds the config and tokenizer",
    )
    p.add_argument(
        "--format",
        choices=("safetensors", "torch"),
        default="safetensors",
        help="safetensors (needs only NumPy) or torch (a state dict for torch.load; needs PyTorch) "
        "(default: %(default)s)",
    )
    p.set_defaults(handler=_run_export)


TRAIN_DESCRIPTION = (
    "Train a transformer on a text file, on characters or byte-level BPE tokens (--tokenizer). "
    "Prints progress every --log_every steps, "
    "train/val loss (and val bits per character) every --eval_every steps and samples every --sample_every steps; writes "
    "best.npz, last.npz and metrics.jsonl to --out (by default a new runs/run-NNN). Ctrl-C or SIGTERM saves "
    "last.npz; --resume continues exactly. Under mpiexec -n N (pip install 'bevialm[mpi]') N processes share "
    "each step, with the bits of one process with --shards N (docs/distributed.md)."
)
SAMPLE_DESCRIPTION = "Generate text from a checkpoint written by training."
PLOT_DESCRIPTION = (
    "Draw the train and validation loss of one or more runs against the step, with the learning rate on a "
    "second axis, from each run folder's metrics.jsonl. Several runs overlay, one colour each, the legend "
    "naming each run's tokenizer; --bpc draws bits per character, comparable across tokenizers."
)
ATTENTION_DESCRIPTION = (
    "Draw a model's attention over a prompt: a heat map per layer and head, the prompt's tokens (characters "
    "for a character-level model) as labels (space and newline as visible glyphs), future positions blank."
)
EVAL_DESCRIPTION = (
    "Score a whole text with a checkpoint: loss per token, bits per character and perplexity, in windows of "
    "ctx tokens, each token after the first scored once. A character-level model refuses characters it never saw."
)
EXPORT_DESCRIPTION = (
    "Write a checkpoint's weights under nanoGPT's parameter names and layouts (transformer.wte.weight, fused "
    "q|k|v c_attn, lm_head, ...) with a JSON sidecar holding the config and tokenizer (docs/export.md)."
)


def train_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The training parser alone (``python main.py``'s)."""
    p = OneLineParser(prog=prog, description=TRAIN_DESCRIPTION)
    _configure_train(p)
    return p


def build_parser(prog: str = "bevialm") -> argparse.ArgumentParser:
    """``bevialm`` with all its subcommands."""
    # Imported here, not at the top: ``python main.py`` (training only) need not load the grader.
    from bevialm.board.command import add_board_subcommand
    from bevialm.grading.cli import add_grading_subcommands

    parser = OneLineParser(prog=prog, description="BeviaLLM: a gradient-verified NumPy transformer language model.")
    parser.add_argument("--version", action="version", version=f"bevialm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _configure_train(sub.add_parser("train", help="train a model on a text file", description=TRAIN_DESCRIPTION))
    _configure_sample(sub.add_parser("sample", help="generate text from a checkpoint", description=SAMPLE_DESCRIPTION))
    _configure_plot(sub.add_parser("plot", help="draw the loss curves of runs", description=PLOT_DESCRIPTION))
    _configure_attention(
        sub.add_parser("attention", help="draw a model's attention over a prompt", description=ATTENTION_DESCRIPTION)
    )
    add_board_subcommand(sub)
    _configure_eval(sub.add_parser("eval", help="loss, bits per character and perplexity over a text", description=EVAL_DESCRIPTION))
    _configure_export(
        sub.add_parser("export", help="write a checkpoint as nanoGPT-named safetensors", description=EXPORT_DESCRIPTION)
    )
    add_grading_subcommands(sub)
    return parser


# --- handlers -----------------------------------------------------------------------------------


# The handlers import the trainer and the sampler when they run: after the BLAS settings
# above took effect, and so that the grading commands do not load them. Each first tunes
# the process's allocator (bevialm.runtime: entry points do it, library code never does).


def _run_train(args: argparse.Namespace) -> int:
    from bevialm import distributed, train

    tune_malloc()
    group = distributed.join()  # None outside mpiexec (docs/distributed.md); first: ranks > 0 go quiet
    fields = {k: v for k, v in vars(args).items() if k in train.TrainConfig.field_names()}
    cfg = train.TrainConfig(**fields)
    try:
        if group is None:
            with stop_signals_raise():
                train.train(cfg)
        else:
            with distributed.stop_signals(group):
                train.train(cfg, group=group)
    except train.TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_DIVERGED
    return EXIT_OK


def _checkpoint_to_sample(args: argparse.Namespace) -> str:
    """``--checkpoint``, else the best (or last) checkpoint of ``--out``, else of the newest run."""
    from bevialm import generate, runs
    from bevialm.checkpoint import CheckpointError

    if args.checkpoint is not None:
        return str(args.checkpoint)
    if args.out is not None:
        return generate.default_checkpoint(args.out)
    newest = runs.newest_with(("best.npz", "last.npz"))
    if newest is None:
        raise CheckpointError(
            f"no checkpoint to sample from: '{runs.RUNS}' holds no run with best.npz or last.npz; "
            "train one first (make train) or pass --checkpoint"
        )
    return newest


def _check_sampling_memory(args: argparse.Namespace, loaded: Any, prompt: str | None) -> None:
    """Refuse, in one line, samples that would not fit in memory (``--num_samples 1000000000``)."""
    from bevialm import memory

    m = loaded.cfg
    length = len(prompt or "\n") + args.sample_len  # characters: at least as many as tokens
    itemsize = next(iter(loaded.params.values())).dtype.itemsize
    need = memory.sampling_bytes(
        args.num_samples, length, m.ctx, m.dim, m.n_layers, m.n_heads, m.mlp_hidden, m.vocab_size, itemsize
    )
    what = "token ids and text, key/value cache, one window's forward pass"
    if args.attention is not None or args.show_attention:  # AttentionRecorder.weights
        need += args.num_samples * m.n_layers * m.n_heads * args.sample_len * length * itemsize
        what += ", the recorded attention"
    memory.require(
        need, f"sampling {args.num_samples} x {args.sample_len} tokens", what, "use a smaller --num_samples or --sample_len"
    )


def _run_sample(args: argparse.Namespace) -> int:
    from bevialm import generate, viz
    from bevialm.data import load_text

    tune_malloc()
    if args.attention is not None:  # before any work: say now what would fail after sampling
        viz.require_matplotlib()
        viz.check_output(args.attention)
        if args.sample_len == 0:
            raise ValueError("--attention draws the generated characters: --sample_len must be at least 1")
    with stop_signals_raise():
        path = _checkpoint_to_sample(args)
        loaded = generate.load_model(path)
        prompt = args.prompt
        if args.prompt_file is not None:
            prompt = load_text(args.prompt_file, "prompt file")
        _check_sampling_memory(args, loaded, prompt)
        if args.checkpoint is None and args.out is None:  # say which run was chosen (stderr: stdout is the text)
            print(f"sampling from {path} (step {loaded.step})", file=sys.stderr, flush=True)
        sampling = generate.SamplingConfig.from_flags(args.temperature, args.top_k, args.top_p)
        recorder = None
        if args.attention is not None or args.show_attention:
            recorder = generate.AttentionRecorder()
            viz.choose(loaded.cfg.n_layers, args.layer, "layer")  # checked now, not after sampling
            viz.choose(loaded.cfg.n_heads, args.head, "head")
        texts = generate.sample_text(
            loaded.params,
            loaded.cfg,
            loaded.tokenizer,
            prompt or "",
            args.sample_len,
            num_samples=args.num_samples,
            rng=generate.sampling_rng(args.seed),
            sampling=sampling,
            recorder=recorder,
            allowed=None if args.unseen_tokens else loaded.seen,
        )
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}/{len(texts)} ---", flush=True)
        print(text, flush=True)
        if args.show_attention and recorder is not None and args.sample_len > 0:
            shown = viz.attention_text(
                recorder.weights[i],
                viz.token_texts(loaded.tokenizer, recorder.tokens[i]),
                recorder.prompt_len,
                layer=args.layer,
                head=args.head,
                color=color,
            )
            print(shown, flush=True)
    if args.attention is not None and recorder is not None:
        fig = viz.generation_attention_figure(
            recorder.weights[0],
            viz.token_texts(loaded.tokenizer, recorder.tokens[0]),
            recorder.prompt_len,
            layer=args.layer,
            head=args.head,
        )
        _wrote(args.attention, viz.save_figure(fig, args.attention), "attention while generating sample 1")
    return EXIT_OK


def _wrote(path: str, size: tuple[int, int], what: str) -> None:
    dims = f", {size[0]} x {size[1]} pixels" if path.lower().endswith(".png") else ""
    print(f"wrote {what} to {path}{dims}", flush=True)


def _note(line: str | None) -> None:
    if line is not None:
        print(line, file=sys.stderr, flush=True)


def _run_plot(args: argparse.Namespace) -> int:
    from bevialm import metrics, viz

    viz.require_matplotlib()
    if not args.runs:
        from bevialm import runs as run_folders

        newest = run_folders.newest_with(("metrics.jsonl",))
        if newest is None:
            raise ValueError(f"no run to plot: '{run_folders.RUNS}' holds no run with metrics.jsonl; name a RUN folder")
        args.runs = [os.path.dirname(newest)]
    output = args.output or os.path.join(args.runs[0], "loss.png")
    runs = [viz.read_metrics(run) for run in args.runs]
    for run in runs:
        _note(metrics.skipped_note(os.path.join(run.name, viz.METRICS), run.skipped))
    if args.bpc:
        runs = [viz.in_bits_per_char(m, viz.bits_per_char_factor(run)) for m, run in zip(runs, args.runs, strict=True)]
    viz.check_output(output)
    fig = viz.loss_figure(runs, tokenizers=[viz.run_tokenizer(run) for run in args.runs], bpc=args.bpc)
    _wrote(output, viz.save_figure(fig, output), "loss curves" + (" in bits per character" if args.bpc else ""))
    return EXIT_OK


def _run_attention(args: argparse.Namespace) -> int:
    from bevialm import generate, model, viz
    from bevialm.data import DataError, Vocab, load_text

    viz.require_matplotlib()
    tune_malloc()
    path = _checkpoint_to_sample(args)
    loaded = generate.load_model(path)
    output = args.output or os.path.join(os.path.dirname(path), "attention.png")  # beside the run, as plot's
    viz.check_output(output)
    cfg = loaded.cfg
    viz.choose(cfg.n_layers, args.layer, "layer")
    viz.choose(cfg.n_heads, args.head, "head")
    prompt = args.prompt if args.prompt_file is None else load_text(args.prompt_file, "prompt file")
    ids = loaded.tokenizer.encode(prompt, what="prompt")
    unit = "character" if isinstance(loaded.tokenizer, Vocab) else "token"
    if ids.size > cfg.ctx and args.last:
        print(f"note: the prompt has {ids.size} {unit}s; drawing its last ctx = {cfg.ctx}", file=sys.stderr, flush=True)
        ids = ids[-cfg.ctx :]
    count = f"{ids.size} {unit}{'' if ids.size == 1 else 's'}"
    if not 0 < ids.size <= cfg.ctx:
        raise DataError(
            f"the prompt has {count}; the model reads 1 to ctx = {cfg.ctx}: "
            + ("give a prompt" if ids.size == 0 else "shorten it, or pass --last to draw its last ctx")
        )
    _, cache = model.forward(loaded.params, ids[None, :], cfg)
    fig = viz.prompt_attention_figure(
        model.attention_maps(cache),
        viz.token_texts(loaded.tokenizer, ids),
        layer=args.layer,
        head=args.head,
        title=f"attention over a prompt of {count}: {path} (step {loaded.step}); "
        "row: query, column: the position it reads",
    )
    _wrote(output, viz.save_figure(fig, output), "attention")
    return EXIT_OK


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from bevialm import evaluate, generate
    from bevialm.data import DataError, load_text

    tune_malloc()
    with stop_signals_raise():
        loaded = generate.load_model(args.checkpoint)
        text = load_text(args.data, "text")
        try:
            ids = loaded.tokenizer.encode(text, what=f"text '{args.data}'")
        except DataError as e:  # a character vocabulary: no guess for what the run never saw
            raise DataError(f"{e}; the run never saw them, so the model cannot score them") from None
        progress = evaluate.progress_printer(sys.stderr.write, sys.stderr.isatty())
        ev = evaluate.evaluate_ids(loaded.params, loaded.cfg, ids, loaded.tokenizer.count_chars, args.batch, progress)
    if args.json:
        print(json.dumps(evaluate.as_json(ev, args.checkpoint, loaded.step, args.data)), flush=True)
    else:
        print(f"{args.data} with {args.checkpoint} (step {loaded.step}): {evaluate.summary(ev)}", flush=True)
    return EXIT_OK


def _run_export(args: argparse.Namespace) -> int:
    from bevialm import export

    side, meta = export.export(args.checkpoint, args.to, args.format)
    c = meta["config"]
    print(
        f"wrote {args.to} ({args.format}, {meta['dtype']}; nanoGPT names, {c['n_layer']} layer(s) x {c['n_head']} "
        f"head(s), dim {c['n_embd']}) and {side} (config and tokenizer)",
        flush=True,
    )
    return EXIT_OK


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _training_parser(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]] | None:
    """The training parser ``argv`` is for (``main.py``'s, or ``bevialm train``'s) and its flags; None otherwise."""
    if parser.get_default("handler") is _run_train:
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
