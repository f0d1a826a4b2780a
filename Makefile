# Quell: two commands get you going.
#   make demo   create .venv, install, initialize the embedded database, run the demo
#   make test   install the dev dependencies, run lint, type check and the whole test suite

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint format typecheck pytest bench clean help

help:
	@echo "make demo    - run Quell on the embedded database (SQLite, no servers)"
	@echo "make test    - lint, type check and run the whole test suite"
	@echo "make lint    - ruff and mypy only"
	@echo "make format  - reformat the code"
	@echo "make bench   - list the benchmarks (python -m bench NAME runs one)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Quell needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/quell db upgrade
	$(BIN)/quell demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

pytest: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench --list

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
