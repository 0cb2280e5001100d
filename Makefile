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

.PHONY: help install proto run test test-fast lint format check-generated clean

help:
	@echo "make run               set up, then start store + bot on the embedded SQLite default"
	@echo "make test              set up, then run the whole test suite"
	@echo "make lint              ruff check + format check"
	@echo "make proto             regenerate gen/ from proto/"
	@echo "make check-generated   fail when gen/ is stale"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Generated code is committed (users need no protoc) and never edited by hand.
proto: $(STAMP)
	$(BIN)/python tools/protogen.py $(GEN_DIR)

check-generated: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_generated.py

run: $(STAMP)
	mkdir -p data
	$(BIN)/python tools/run_local.py --store-listen $(STORE_LISTEN) --bot-listen $(BOT_LISTEN)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
