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

# The numba book kernels compiled into their cache once (12 s and 8 s on a first Tardis.dev or DBN MBO read
# otherwise); about a second when they already are.
kernels: $(STAMP)
	$(BIN)/python -c "from tickray.sources import compile_kernels; compile_kernels()"

demo: setup
	$(BIN)/tickray up
	$(BIN)/tickray demo

# Three pytest-xdist workers, each with its own Ray cluster and redis-server; tests/conftest.py groups them.
# Three on 2 cores: much of the suite waits (paced replays, Serve and Ray start-ups), and a third worker
# fills that time (12 min 22 s against 14 min 6 s with two, 2026-12-07).
TEST_WORKERS ?= 3
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
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_backtest.py

lint: setup
	$(BIN)/ruff check platform jobs tests benchmarks

down:
	$(BIN)/tickray down
