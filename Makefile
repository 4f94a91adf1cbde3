# tokalign: `make demo` runs the default job on CPU; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TOKALIGN_TEST_CACHE ?= $(CURDIR)/.cache/test

.PHONY: install lint demo test test-fast bench toy-tables gpu-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/tokalign train

# Lint and format (ruff), types (mypy on the losses, the config schema and the method contract), layers.
lint: install
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: lint
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not distributed"

bench: install
	@for f in scripts/bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# Every paper's toy table (scripts/reproduce/reproduce_<paper>.sh --toy), timed and written into its docs page.
toy-tables: install
	$(PY) scripts/toy/toy_table.py --all

# On one GPU (H100/H200, a few minutes, offline): DPO/TGDPO steps, HF vs vLLM rollouts, a PPO
# iteration at Llama-3.2-1B shape; results in scripts/results/gpu_check.* and docs/gpu.md.
gpu-check: install
	$(PY) scripts/gpu_check.py

clean:
	rm -rf outputs multirun .cache
