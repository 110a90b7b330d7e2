# Every target installs what it needs into .venv first; a fresh machine needs only Python 3.11+.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
IMAGE ?= texflow-websocket
USER ?= alice
PROJECT ?= demo

.PHONY: install run run-cluster token test lint format docker-build clean bench

$(STAMP): pyproject.toml config/constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python 3.11+ is required, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c config/constraints.txt -e '.[dev]'
	@touch $@

install: $(STAMP)

## run: serve in development: in-memory broadcaster, generated secret, printed sample URL; builds the collaborative /demo first when Node.js and npm are there (else /demo is the classic page)
run: $(STAMP)
	@$(BIN)/python config/build_demo.py --fallback
	$(BIN)/python -m app

## run-cluster: Redis, a PostgreSQL document store (the machine's, else a temporary one) and two instances on 8082 and 8083, printing URLs for two tabs
run-cluster: $(STAMP)
	PYTHON=$(BIN)/python bash config/run-cluster.sh

## token: mint a development token, e.g. make token USER=bob PROJECT=demo
token: $(STAMP)
	@$(BIN)/python -m app token --user "$(USER)" --project "$(PROJECT)"

## test: lint, then the whole suite (integration tests start their own servers)
test: lint
	$(BIN)/python -m pytest

## bench: the performance benchmark against a reference relay and the y-websocket server (about 16 minutes; needs Node.js 20 and npm for E, PostgreSQL's server programs and redis-server for F; docs/performance.md)
bench: $(STAMP)
	$(BIN)/python -m bench

## lint: ruff and mypy --strict
lint: $(STAMP)
	$(BIN)/ruff check app tests config
	$(BIN)/ruff format --check app tests config
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix app tests config
	$(BIN)/ruff format app tests config

docker-build:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache app/static/yjs/node_modules app/static/build
