# tokalign: `make demo` runs the default job on CPU; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TOKALIGN_TEST_CACHE ?= $(CURDIR)/.cache/test

.PHONY: install demo test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/tokalign train

test: install
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not distributed"

bench: install
	@for f in scripts/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf outputs multirun .cache
