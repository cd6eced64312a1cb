"""Every flag of ``bevialm train``, ``sample``, ``plot``, ``attention``, ``eval`` and ``export``,
each defined exactly once, in a group function that each subcommand calls where the flag applies
(``--seed``, ``--out``, ``--sample_len``, ``--temperature``, ``--top_k``, ``--top_p`` serve
training's periodic samples as well as ``sample``). ``configure_*`` fills one subcommand's
parser and sets its ``handler`` (:mod:`bevialm.cli_commands`).
"""

from __future__ import annotations

import argparse

from bevialm.cli_args import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    top_p_value,
)
from bevialm.cli_commands import run_attention, run_eval, run_export, run_plot, run_sample, run_train

DEFAULT_OUT = None  # training: a new numbered folder in runs/; --resume and sample: the newest one there


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
        help="compute each batch in up to N shards at once (worker processes), one BLAS thread each; the sum is the "
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


def configure_train(p: argparse.ArgumentParser) -> None:
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
    p.set_defaults(handler=run_train)


def configure_sample(p: argparse.ArgumentParser) -> None:
    _add_sample_only_flags(p)
    _add_seed_and_out(p, training=False)
    _add_sampling_flags(p, training=False)
    _add_sample_attention_flags(p.add_argument_group("attention while generating"))
    p.set_defaults(handler=run_sample)


def configure_plot(p: argparse.ArgumentParser) -> None:
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
    p.set_defaults(handler=run_plot)


def configure_attention(p: argparse.ArgumentParser) -> None:
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
    p.set_defaults(handler=run_attention)


def configure_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint to evaluate (best.npz or last.npz of a run)")
    p.add_argument("--data", required=True, metavar="FILE", help="UTF-8 text to score, all of it")
    p.add_argument(
        "--batch", type=positive_int, default=16, help="windows of ctx tokens per forward pass (default: %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text line")
    p.set_defaults(handler=run_eval)


def configure_export(p: argparse.ArgumentParser) -> None:
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
    p.set_defaults(handler=run_export)


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
