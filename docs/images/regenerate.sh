#!/usr/bin/env bash
# Regenerates the pictures of docs/visualization.md and docs/board.md from a clone (after
# `make install`; the board's screenshots need Debian's chromium: apt-get install chromium).
# Trains the model they show (4 layers x 4 heads on data.txt, 800 steps: 4 min 53 s on the
# project's 2-core machine while other work shared it) and the same model on byte-level BPE
# tokens, then draws the loss curves (in bits per character, the two tokenizers side by side),
# the attention over a 30-character prompt, one layer per picture, and while the model
# generates, and photographs `bevialm board` over both runs. Run from the repository's root:
#   bash docs/images/regenerate.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
RUN=runs/visualization
MODEL="--ctx 64 --dim 64 --layers 4 --heads 4 --mlp_hidden 256 --activation gelu --batch 16 \
  --steps 800 --lr 2e-3 --warmup 50 --eval_every 100 --eval_iters 10 --log_every 25 --sample_every 0"
# shellcheck disable=SC2086  # MODEL is a list of flags
$BIN/python main.py --data data.txt --out $RUN --overwrite $MODEL
# shellcheck disable=SC2086
$BIN/python main.py --data data.txt --out $RUN-bpe --overwrite --tokenizer bpe --vocab_size 512 $MODEL
$BIN/bevialm plot $RUN -o docs/images/loss.png
$BIN/bevialm plot $RUN $RUN-bpe --bpc -o docs/images/loss-bpc.png
$BIN/bevialm attention --checkpoint $RUN/best.npz --prompt_file docs/images/prompt-short.txt \
  --layer 1 -o docs/images/attention-layer1.png
$BIN/bevialm attention --checkpoint $RUN/best.npz --prompt_file docs/images/prompt-short.txt \
  --layer 2 -o docs/images/attention-layer2.png
$BIN/bevialm attention --checkpoint $RUN/best.npz --prompt_file docs/images/prompt-short.txt \
  --layer 4 -o docs/images/attention-layer4.png
$BIN/bevialm sample --checkpoint $RUN/best.npz --prompt_file docs/images/generation-prompt.txt \
  --sample_len 22 --temperature 0.8 --layer 4 --attention docs/images/attention-generation.png --show-attention
$BIN/python docs/images/board_screenshots.py runs
