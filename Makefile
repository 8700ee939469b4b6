# hagw: two commands on a fresh machine. `make run` starts the demo, `make test` runs everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench chaos soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,speed,otlp]'
	touch $(STAMP)

## run: set up .venv and start the demo (3 demo nodes, the gateway, the admin API)
run: $(STAMP)
	$(BIN)/hagw demo

## test: set up .venv and run the whole suite (lint, type checks, layer contracts, tests)
test: lint
	$(BIN)/pytest

## lint: ruff, strict mypy, and the import-linter layer contracts (.importlinter)
lint: $(STAMP)
	$(BIN)/ruff check gateway monitor tests bench chaos
	$(BIN)/mypy
	$(BIN)/lint-imports

## bench: the performance suite (gateway vs direct, nginx and haproxy)
bench: $(STAMP)
	$(BIN)/python -m bench

## chaos: fault injection under load (node crash, hang, latency, errors, resets, deploys,
## gateway SIGKILL mid-window and mid-replay, and three instances on Redis: one SIGKILLed,
## the leader mid-replay, Redis itself); prints the table and writes chaos/results/
chaos: $(STAMP)
	$(BIN)/python -m chaos

## soak: 10 minutes of load with periodic faults; RSS must stay flat, no write lost
soak: $(STAMP)
	$(BIN)/python -m chaos --soak --minutes 10

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache
