# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make run` serves with these; change any on the command line, e.g.
#   make run LISTEN=127.0.0.1:7171 KINESIS_LISTEN=127.0.0.1:4568 DATA_DIR=/tmp/streamd-2
# (KINESIS_LISTEN=off turns the Kinesis API off, CONSOLE_LISTEN=off the console in the browser;
# SERVE_ARGS adds any other serve flag). The server prints the console's URL when it is ready.
DATA_DIR ?= ./streamd-data
LISTEN ?= 127.0.0.1:7070
KINESIS_LISTEN ?= 127.0.0.1:4567
CONSOLE_LISTEN ?= 127.0.0.1:8080
SERVE_ARGS ?=
# `make cluster` runs a local etcd and NODES nodes (`streamd dev cluster`, until Ctrl-C): data
# under CLUSTER_DIR, native ports 7071.., Kinesis 4571.., etcd 2379 (CLUSTER_ARGS changes those,
# e.g. CLUSTER_ARGS="--base-port 7171 --etcd-port 2479").
NODES ?= 3
CLUSTER_DIR ?= ./streamd-cluster
CLUSTER_ARGS ?=

.PHONY: run cluster test test-slow lint fmt bench clean etcd browser

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/streamd serve --data-dir $(DATA_DIR) --listen $(LISTEN) \
		--kinesis-listen $(KINESIS_LISTEN) --console-listen $(CONSOLE_LISTEN) $(SERVE_ARGS)

cluster: $(STAMP) etcd
	$(BIN)/streamd dev cluster --nodes $(NODES) --dir $(CLUSTER_DIR) $(CLUSTER_ARGS)

# The metadata-store tests need a real etcd (Debian package etcd-server): installed here when
# missing and we are root; otherwise say how, and those tests fail with the same hint.
etcd:
	@command -v etcd >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing etcd-server (apt-get)"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null && \
	    { systemctl disable --now etcd.service >/dev/null 2>&1 || true; }; \
	  else \
	    echo "etcd not found: run 'sudo apt-get install etcd-server' (the etcd tests will fail)"; \
	  fi; }

# The console's browser tests drive Chromium (Debian packages chromium, chromium-driver):
# installed here when missing and we are root; otherwise say how (those tests fail with it).
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver (apt-get)"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "chromium not found: run 'sudo apt-get install chromium chromium-driver'"; \
	  fi; }

test: $(STAMP) etcd browser
	$(BIN)/pytest -q

test-slow: $(STAMP) etcd
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
