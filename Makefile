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
FUZZ_BUILD := engine/build-fuzz
FUZZ_SECONDS ?= 600
FUZZ_TARGETS := $(patsubst engine/fuzz/fuzz_%.cpp,%,$(wildcard engine/fuzz/fuzz_*.cpp))
PYTEST_ARGS ?=
FUZZ_SERVER_COMMANDS ?= 100000
FUZZ_SERVER_SEED ?= 20261125

.PHONY: all setup venv redis chromium engine engine-asan test test-asan fuzz fuzz-build fuzz-server demo demo-cluster bench soak lint clean

all: setup

setup: venv redis chromium engine

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip >/dev/null
	$(BIN)/python -m pip install -q -e '.[dev,bench,onnx]'
	$(BIN)/python -m pip install -q --no-deps 'onnx2torch==1.5.15'
	@touch $@

redis:
	@./scripts/ensure-redis.sh

chromium:
	@./scripts/ensure-chromium.sh

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

# libFuzzer on the engine's pure parts (engine/fuzz/; clang is installed with apt when missing and
# run as root). Each target runs FUZZ_SECONDS from its kept corpus; new inputs go to a scratch
# corpus, and the kept corpus becomes the smallest set covering both (plus the hand-written seed-*
# inputs). A crash is saved there too (crash-*), so both stay as regression inputs that
# `make test` replays (tests/engine/test_libfuzzer.py).
fuzz-build:
	@./scripts/ensure-clang.sh
	@JOBS=$(JOBS) engine/fuzz/build.sh $(FUZZ_BUILD)

fuzz: fuzz-build
	@set -euo pipefail; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/scratch/$$t; \
	  echo "fuzz_$$t: $(FUZZ_SECONDS) s (log: $(FUZZ_BUILD)/fuzz_$$t.log)"; \
	  $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -rss_limit_mb=2048 \
	    -print_final_stats=1 -artifact_prefix=engine/fuzz/corpus/$$t/crash- \
	    $(FUZZ_BUILD)/scratch/$$t engine/fuzz/corpus/$$t > $(FUZZ_BUILD)/fuzz_$$t.log 2>&1 \
	    || { tail -40 $(FUZZ_BUILD)/fuzz_$$t.log; exit 1; }; \
	  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' $(FUZZ_BUILD)/fuzz_$$t.log; \
	  rm -rf $(FUZZ_BUILD)/min/$$t && mkdir -p $(FUZZ_BUILD)/min/$$t; \
	  $(FUZZ_BUILD)/fuzz_$$t -merge=1 -max_len=4096 $(FUZZ_BUILD)/min/$$t engine/fuzz/corpus/$$t \
	    $(FUZZ_BUILD)/scratch/$$t > $(FUZZ_BUILD)/merge_$$t.log 2>&1; \
	  find engine/fuzz/corpus/$$t -type f ! -name 'seed-*' ! -name 'crash-*' -delete; \
	  cp $(FUZZ_BUILD)/min/$$t/* engine/fuzz/corpus/$$t/; \
	  echo "corpus kept: $$(ls engine/fuzz/corpus/$$t | wc -l) files"; \
	done

# The protocol fuzz campaign (tests/engine/test_fuzz.py) at length, against the ASan build:
# FUZZ_SERVER_COMMANDS commands (commands, RESTORE payloads, scripts), then DEBUG RELOAD and
# restarts from RDB, AOF and a rewritten AOF must bring back every key unchanged, with no
# sanitizer report. The figures land in $(ASAN_BUILD)/fuzz-server.json.
fuzz-server: engine-asan redis
	GW_TEST_LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" \
	  GW_FUZZ_COMMANDS=$(FUZZ_SERVER_COMMANDS) GW_FUZZ_SEED=$(FUZZ_SERVER_SEED) \
	  GW_FUZZ_REPORT=$(ASAN_BUILD)/fuzz-server.json \
	  $(BIN)/python -m pytest -s -q tests/engine/test_fuzz.py -k campaign --engine $(ASAN_BUILD)/engine.so
	@cat $(ASAN_BUILD)/fuzz-server.json

demo: setup
	$(BIN)/groundwatch demo

demo-cluster: setup
	$(BIN)/groundwatch demo --cluster 3

# Every row in a fresh process, BENCH_ROUNDS interleaved rounds (bench/harness.py); about 10-15
# minutes on 2 idle cores. The table: bench/results/results.md.
BENCH_ROUNDS ?= 3
bench: setup
	$(BIN)/groundwatch bench --rounds $(BENCH_ROUNDS) $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy groundwatch ingest loaders consumers models monitor web demo bench tests

clean:
	rm -rf $(ENGINE_BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) .groundwatch .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info

# The pipeline under churn (bench/soak.py): 2 producers, 3 consumers, a model switch every 10
# minutes, a consumer SIGKILLed every 15; checks one result per frame and the resident memory of
# redis-server and the consumers (within 5 % after warm-up), reports memory over time.
SOAK_MINUTES ?= 60
soak: setup
	PYTHONPATH=$(CURDIR) $(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)
