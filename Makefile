# Two entry points: `make quickstart` and `make test`. Each builds its venv from scratch on a fresh clone.
PYTHON ?= python3
# CI sets TORCH_SPEC=torch==2.13.0 (a CPU build); a plain `torch>=2.4` may pull a multi-GB CUDA build.
TORCH_SPEC ?= torch>=2.4
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# Where quickstart looks for ml-100k first (then it downloads it, then it uses synthetic data).
QUICKSTART_DATA ?= $(firstword $(wildcard ../shared/datasets) data)

.PHONY: quickstart test lint fmt bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.base-installed
	$(PIP) install -q -e ".[dev]"
	touch $@

quickstart: $(VENV)/.base-installed
	$(BIN)/mlconnect quickstart --data-path "$(QUICKSTART_DATA)"

test: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests benchmarks train_sequential_model.py
	$(BIN)/python -m pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests benchmarks train_sequential_model.py

fmt: $(VENV)/.dev-installed
	$(BIN)/ruff format src tests benchmarks train_sequential_model.py

bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/train_bench.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
