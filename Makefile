# BeviaLLM: every target installs what it needs first, so each works from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help install test test-lowest test-py310 typecheck lint train sample plot board bench bench-mpi bench-tokenizer clean clean-runs

help:  ## list the targets
	@awk -F ':.*## ' '/^[a-z-]+:.*## / { printf "  make %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e '.[mpi]' || echo "the mpi extra could not be installed: tests/test_mpi.py will skip, saying why"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install bevialm with its dev tools and the mpi extra (mpiexec in .venv/bin)

test: $(STAMP)  ## the whole suite, gradient checks included, with line coverage
	$(BIN)/python -m pytest --cov=bevialm --cov-report=term --cov-fail-under=95

# The lowest NumPy pyproject.toml allows ("numpy>=1.24" -> 1.24, that is 1.24.0), in its own venv.
LOWEST_NUMPY := $(shell sed -n 's/.*"numpy>=\([0-9.]*\).*/\1/p' pyproject.toml)
LOWEST       := .venv-lowest

$(LOWEST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --upgrade pip
	$(LOWEST)/bin/python -m pip install --quiet -e '.[dev]' 'numpy==$(LOWEST_NUMPY)'
	$(LOWEST)/bin/python -m pip install --quiet -e '.[mpi]' 'numpy==$(LOWEST_NUMPY)' || echo "the mpi extra could not be installed: tests/test_mpi.py will skip, saying why"
	touch $@

test-lowest: $(LOWEST)/.installed  ## the whole suite again on the lowest NumPy pyproject.toml allows (CI's second leg)
	$(LOWEST)/bin/python -c 'import numpy; print("NumPy", numpy.__version__)'
	$(LOWEST)/bin/python -m pytest -q

# Python 3.10, the oldest pyproject.toml allows: Debian 12 has none, the machine's pyenv has one
# (PYTHON310=... to name another). mypy --python-version 3.10 (run from .venv, so with the same
# NumPy stubs as make typecheck) and a fast part of the suite on 3.10 (the whole suite would
# double CI's time); where no 3.10 is found, one line says the tests were skipped.
PYTHON310 ?= $(firstword $(wildcard /usr/bin/python3.10 /usr/local/bin/python3.10 $(HOME)/.pyenv/versions/3.10*/bin/python3.10))
PY310      := .venv-py310
PY310_TESTS := tests/test_config_file.py tests/test_model.py tests/test_train.py tests/test_checkpoint.py \
	tests/test_tokenizer.py tests/test_eval.py tests/test_grading.py

$(PY310)/.installed: pyproject.toml
	$(PYTHON310) -m venv $(PY310)
	$(PY310)/bin/python -m pip install --quiet --upgrade pip
	$(PY310)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

test-py310: $(STAMP)  ## mypy --python-version 3.10, and a fast part of the suite on Python 3.10 (.venv-py310)
	$(BIN)/python -m mypy --strict --python-version 3.10 --disable-error-code no-any-return bevialm tests  # NumPy types a few returns as Any for 3.10 only
ifeq ($(PYTHON310),)
	@echo "test-py310: tests skipped, no Python 3.10 found (make test-py310 PYTHON310=/path/to/python3.10)"
else
	$(MAKE) $(PY310)/.installed
	$(PY310)/bin/python --version
	$(PY310)/bin/python -m pytest -q $(PY310_TESTS)
endif

typecheck: $(STAMP)  ## mypy --strict over the package and the tests
	$(BIN)/python -m mypy --strict bevialm tests

lint: $(STAMP)  ## ruff over the package and the tests
	$(BIN)/python -m ruff check bevialm tests

PROMPT ?= MARA:

# ARGS: more training flags, after the quick start's (later flags win): make train ARGS="--steps 500".
# An interrupted run's hint names the make command that continues it (BEVIALM_MAKE*).
ARGS ?=

train: $(STAMP)  ## the playbook's quick start on data.txt (about 10 s of training on 2 cores) into a new runs/run-NNN (ARGS="..." adds flags)
	BEVIALM_MAKE="make train" BEVIALM_MAKE_ARGS='$(ARGS)' \
	$(BIN)/python main.py --data data.txt --ctx 64 --dim 64 --layers 1 --batch 8 --steps 2000 $(ARGS)

sample: $(STAMP)  ## two samples from the newest run's best checkpoint (PROMPT="..." to change the prompt)
	$(BIN)/python -m bevialm sample --prompt "$(PROMPT)" --num_samples 2

plot: $(STAMP)  ## draw the loss curves of the newest run (loss.png in it)
	$(BIN)/python -m bevialm plot

board: $(STAMP)  ## serve the page that watches the runs in runs/ train and explores their attention (http://127.0.0.1:8000/)
	$(BIN)/python -m bevialm board

bench: $(STAMP)  ## training-step race against PyTorch eager (torch is optional); writes bench-results.json
	$(BIN)/python -m pip install --quiet -e '.[bench]' || echo "PyTorch could not be installed: benchmarking NumPy alone"
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/bench_viz.py

bench-mpi: $(STAMP)  ## 2 MPI ranks against 2 shards (one in a worker process) on configs b and c, ms/step; the bytes each step exchanges
	$(BIN)/python benchmarks/bench_mpi.py

bench-tokenizer: $(STAMP)  ## byte-level BPE on Tiny Shakespeare: training 512 / 4,096 tokens, encoding MB/s, next to Hugging Face tokenizers when it installs
	$(BIN)/python -m pip install --quiet -e '.[bench]' || echo "the bench extra could not be installed: benchmarking BeviaLLM alone"
	$(BIN)/python benchmarks/tokenizer_bench.py

clean:  ## remove .venv, .venv-lowest, .venv-py310 and caches (runs/ and its checkpoints stay: make clean-runs)
	rm -rf $(VENV) $(LOWEST) $(PY310) .pytest_cache .mypy_cache .coverage htmlcov

clean-runs:  ## remove runs/: every training run and its checkpoints
	rm -rf runs
