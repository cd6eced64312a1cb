"""What each ``bevialm`` subcommand does with its parsed flags: ``run_*`` returns the exit code.

The handlers import the trainer and the sampler when they run, so that the grading commands do
not load them. Each first tunes the process's
allocator (bevialm.runtime: entry points do it, library code never does).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from bevialm.runtime import stop_signals_raise, tune_malloc

EXIT_OK, EXIT_DIVERGED = 0, 3  # bevialm.cli lists every exit code


# --- handlers -----------------------------------------------------------------------------------


def run_train(args: argparse.Namespace) -> int:
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
    need = memory.sampling_bytes(m, args.num_samples, length, itemsize)
    what = "token ids and text, key/value cache, one window's forward pass"
    if args.attention is not None or args.show_attention:  # AttentionRecorder.weights
        need += args.num_samples * m.n_layers * m.n_heads * args.sample_len * length * itemsize
        what += ", the recorded attention"
    memory.require(
        need, f"sampling {args.num_samples} x {args.sample_len} tokens", what, "use a smaller --num_samples or --sample_len"
    )


def run_sample(args: argparse.Namespace) -> int:
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
    _print_samples(args, texts, recorder, loaded.tokenizer)
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


def _print_samples(args: argparse.Namespace, texts: list[str], recorder: Any, tokenizer: Any) -> None:
    """Each sample's text, and with ``--show_attention`` what each generated token attended to."""
    from bevialm import viz

    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}/{len(texts)} ---", flush=True)
        print(text, flush=True)
        if args.show_attention and recorder is not None and args.sample_len > 0:
            shown = viz.attention_text(
                recorder.weights[i],
                viz.token_texts(tokenizer, recorder.tokens[i]),
                recorder.prompt_len,
                layer=args.layer,
                head=args.head,
                color=color,
            )
            print(shown, flush=True)


def _wrote(path: str, size: tuple[int, int], what: str) -> None:
    dims = f", {size[0]} x {size[1]} pixels" if path.lower().endswith(".png") else ""
    print(f"wrote {what} to {path}{dims}", flush=True)


def _note(line: str | None) -> None:
    if line is not None:
        print(line, file=sys.stderr, flush=True)


def run_plot(args: argparse.Namespace) -> int:
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


def run_attention(args: argparse.Namespace) -> int:
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


def run_eval(args: argparse.Namespace) -> int:
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


def run_export(args: argparse.Namespace) -> int:
    from bevialm import export

    side, meta = export.export(args.checkpoint, args.to, args.format)
    c = meta["config"]
    print(
        f"wrote {args.to} ({args.format}, {meta['dtype']}; nanoGPT names, {c['n_layer']} layer(s) x {c['n_head']} "
        f"head(s), dim {c['n_embd']}) and {side} (config and tokenizer)",
        flush=True,
    )
    return EXIT_OK
