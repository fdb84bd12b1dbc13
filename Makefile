# The README's two commands: `make demo` and `make test`. Each sets everything up first and
# reuses what is already built, so a second run costs seconds.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
JOBS ?= $(shell nproc)
ENGINE_BUILD := engine/build
ENGINE_SO := $(ENGINE_BUILD)/engine.so
ASAN_BUILD := engine/build-asan
PYTEST_ARGS ?=

.PHONY: all setup venv redis engine engine-asan test test-asan demo bench lint clean

all: setup

setup: venv redis engine

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip >/dev/null
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@touch $@

redis:
	@./scripts/ensure-redis.sh

# cmake decides what is stale; with nothing changed this is a second or two.
engine: $(STAMP)
	@cmake -S engine -B $(ENGINE_BUILD) -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(BIN)/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" >/dev/null
	@cmake --build $(ENGINE_BUILD) -j $(JOBS)

engine-asan: $(STAMP)
	@cmake -S engine -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DGW_ASAN=ON \
	  -DCMAKE_PREFIX_PATH="$$($(BIN)/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The engine's tests against the AddressSanitizer build (redis-server gets the ASan runtime preloaded).
test-asan: engine-asan redis
	GW_TEST_LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" \
	  $(BIN)/python -m pytest tests/engine --engine $(ASAN_BUILD)/engine.so $(PYTEST_ARGS)

demo: setup
	$(BIN)/groundwatch demo

bench: setup
	$(BIN)/groundwatch bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy groundwatch ingest loaders consumers models demo bench tests

clean:
	rm -rf $(ENGINE_BUILD) $(ASAN_BUILD) .groundwatch .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
