#!/usr/bin/env bash
# Regenerates the pictures of docs/visualization.md from a clone (after `make install`):
# trains the model they show (4 layers x 4 heads on data.txt, 800 steps: 4 min 53 s on the
# project's 2-core machine while other work shared it), then draws its loss curves, its
# attention over a 64-character prompt, and its attention while it generates. Run from the repository's root:
#   bash docs/images/regenerate.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
RUN=runs/visualization
$BIN/python main.py --data data.txt --out $RUN --overwrite \
  --ctx 64 --dim 64 --layers 4 --heads 4 --mlp_hidden 256 --activation gelu --batch 16 \
  --steps 800 --lr 2e-3 --warmup 50 --eval_every 100 --eval_iters 10 --log_every 25 --sample_every 0
$BIN/bevialm plot $RUN -o docs/images/loss.png
$BIN/bevialm attention --checkpoint $RUN/best.npz --prompt_file docs/images/prompt.txt \
  -o docs/images/attention-prompt.png
$BIN/bevialm sample --checkpoint $RUN/best.npz --prompt_file docs/images/generation-prompt.txt \
  --sample_len 22 --temperature 0.8 --layer 4 --attention docs/images/attention-generation.png --show-attention
