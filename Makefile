# One entry point for people and CI. `make test` and `make demo` each set themselves up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test lint typecheck bench demo params docs clean

# Idempotent: (re)installs only when pyproject.toml changed since the last install.
setup: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m benchmarks.run

params: setup
	$(BIN)/python -m training.param_table --write README.md

docs: params
	$(BIN)/python -m service.settings_table --write README.md
	$(BIN)/python -m training.recipe_table --write docs/training.md

demo: setup
	$(BIN)/python -m examples.demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
