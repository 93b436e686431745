# One home for set-up: `make setup` (idempotent), `make demo` (the main job), `make test` (the suite).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tickray-installed

.PHONY: setup demo test bench lint down system-deps kernels

setup: system-deps $(STAMP) kernels

# redis-server comes from Debian's packages; installed only when missing.
system-deps:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server from Debian's packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# Reinstalled only when pyproject.toml changes. torch==2.13.0 is the CPU build on this machine's disk.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The numba kernels compiled into their cache once: the book kernels (12 s and 8 s on a first Tardis.dev or
# DBN MBO read otherwise) and the features' grid and window sums (4 s); about a second when they already are.
kernels: $(STAMP)
	$(BIN)/python -c "from tickray import features, sources; sources.compile_kernels(); features.compile_kernels()"

demo: setup
	$(BIN)/tickray up
	$(BIN)/tickray demo

# Two pytest-xdist workers, each with its own Ray cluster and redis-server; tests/conftest.py groups them.
# A third measured 12 min 22 s on a warm checkout but 14 min on a fresh clone, with restart and shutdown
# waits running out of time: on 2 cores two workers keep both CPUs busy.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=10

bench: setup
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_ohlcv.py
	$(BIN)/python benchmarks/bench_formats.py
	$(BIN)/python benchmarks/bench_book_days.py
	$(BIN)/python benchmarks/bench_features.py
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python benchmarks/bench_bars.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_stream.py
	$(BIN)/python benchmarks/bench_symbols.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_backtest.py

lint: setup
	$(BIN)/ruff check platform jobs tests benchmarks

down:
	$(BIN)/tickray down
