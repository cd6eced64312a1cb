# BeviaLLM: every target installs what it needs first, so each works from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test typecheck lint train sample plot bench bench-tokenizer clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install bevialm with its dev tools

test: $(STAMP)  ## the whole suite, gradient checks included, with line coverage
	$(BIN)/python -m pytest --cov=bevialm --cov-report=term --cov-fail-under=95

typecheck: $(STAMP)  ## mypy --strict over the package and the tests
	$(BIN)/python -m mypy --strict bevialm tests

lint: $(STAMP)
	$(BIN)/python -m ruff check bevialm tests

TRAIN_OUT ?= runs/quickstart
PROMPT    ?= MARA:

train: $(STAMP)  ## the playbook's quick start on data.txt (a few minutes on 2 cores): progress, samples, checkpoints in $(TRAIN_OUT)
	$(BIN)/python main.py --data data.txt --ctx 64 --dim 64 --layers 1 --batch 8 --steps 2000 --out $(TRAIN_OUT) --overwrite

sample: $(STAMP)  ## two samples from the checkpoint `make train` wrote (PROMPT="..." to change the prompt)
	$(BIN)/bevialm sample --out $(TRAIN_OUT) --prompt "$(PROMPT)" --num_samples 2

plot: $(STAMP)  ## draw the loss curves of the run `make train` wrote (loss.png in it)
	$(BIN)/bevialm plot $(TRAIN_OUT)

bench: $(STAMP)  ## training-step race against PyTorch eager (torch is optional); writes bench-results.json
	$(BIN)/python -m pip install --quiet -e '.[bench]' || echo "PyTorch could not be installed: benchmarking NumPy alone"
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/bench_viz.py

bench-tokenizer: $(STAMP)  ## byte-level BPE on Tiny Shakespeare: training 512 / 4,096 tokens, encoding MB/s, next to Hugging Face tokenizers when it installs
	$(BIN)/python -m pip install --quiet -e '.[bench]' || echo "the bench extra could not be installed: benchmarking BeviaLLM alone"
	$(BIN)/python benchmarks/tokenizer_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .coverage htmlcov runs
