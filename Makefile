# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= ./streamd-data
LISTEN ?= 127.0.0.1:7070

.PHONY: run test test-slow lint fmt bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/streamd serve --data-dir $(DATA_DIR) --listen $(LISTEN)

test: $(STAMP)
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q --slow

lint: $(STAMP)
	$(BIN)/ruff check src tests scenarios
	$(BIN)/ruff format --check src tests scenarios
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format src tests scenarios
	$(BIN)/ruff check --fix src tests scenarios

bench: $(STAMP)
	$(BIN)/streamd bench produce
	$(BIN)/streamd bench consume

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
