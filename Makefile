# Two commands on a fresh machine: `make run` (pipeline end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# CPU build from this machine's disk by default; a GPU user sets e.g. TORCH_SPEC="torch==2.13.0" with a CUDA index.
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
PRESET ?= tiny
PYTEST_ARGS ?=

.PHONY: setup run test lint clean-runs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/plm run --preset $(PRESET)

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-runs:
	rm -rf runs
