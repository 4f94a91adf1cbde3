# tokalign: `make demo` runs the default job on CPU; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TOKALIGN_TEST_CACHE ?= $(CURDIR)/.cache/test

.PHONY: install lint demo test test-fast bench toy-tables gpu-wheels gpu-check clean

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

# The wheelhouse for a GPU machine with no network (scripts/gpu/wheelhouse.txt: what its image lacks,
# pinned; CPython 3.12 manylinux x86-64), built into .whl and its total size printed (at most 60 MiB).
gpu-wheels: install
	$(PY) scripts/gpu/wheelhouse.py build --dest .whl

# On one GPU (H100/H200, at most 7 minutes of measuring, offline), with .whl sent along when the
# machine has no network: DPO/TGDPO/T-REG steps, generate, PPO/MA-PPO, GRPO/D3S, DeepSpeed's ZeRO
# estimate; results in $$OUT or scripts/results/gpu_check.{json,md} and docs/gpu.md. See docs/gpu.md.
gpu-check:
	scripts/gpu/gpu_check.sh

clean:
	rm -rf outputs multirun .cache
