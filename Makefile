# hagw: two commands on a fresh machine. `make run` starts the demo, `make test` runs everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench chaos soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,speed]'
	touch $(STAMP)

## run: set up .venv and start the demo (3 demo nodes, the gateway, the admin API)
run: $(STAMP)
	$(BIN)/hagw demo

## test: set up .venv and run the whole suite (lint, type checks, tests)
test: $(STAMP)
	$(BIN)/ruff check gateway monitor tests bench
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check gateway monitor tests bench
	$(BIN)/mypy

## bench: the performance suite (gateway vs direct, nginx and haproxy)
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache
