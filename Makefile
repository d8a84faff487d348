# The single source of truth for setting up, running and testing task-queue:
# the README and CI call these targets and nothing else.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# Peers (Celery, RQ, ...) get their own venv so they never enter .venv or `make test`.
PEERS_VENV  ?= .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed
PEERS_ARGS  ?=

.PHONY: run test check lint format typecheck bench bench-peers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

run: $(STAMP)
	exec $(BIN)/task-queue serve

test: check
	$(BIN)/pytest

check: lint typecheck

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

format: $(DEV_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

$(PEERS_STAMP): benchmarks/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/pip install --quiet -r benchmarks/peers/requirements.txt
	touch $@

# e.g. make bench-peers PEERS_ARGS="--tasks 2000 --only celery,rq"
# everything (drain with 1 and 2 worker processes, latency at 200/s in three
# rounds of alternating order, pooled):
#      make bench-peers PEERS_ARGS="--latency --workers 1,2 --rounds 3"
bench-peers: $(STAMP) $(PEERS_STAMP)
	$(PEERS_VENV)/bin/python benchmarks/peers/run.py --task-queue $(BIN)/task-queue $(PEERS_ARGS)

clean:
	rm -rf $(VENV) $(PEERS_VENV) .mypy_cache .pytest_cache .ruff_cache
