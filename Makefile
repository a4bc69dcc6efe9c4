# pht-airflow: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
LINT_PATHS := $(wildcard pht_airflow tests benchmarks dags plugins)

.PHONY: help bootstrap demo test lint format unit bench constraints clean screenshots

help:
	@echo "make demo        set everything up and run a train across three stations"
	@echo "make test        set everything up, lint, and run the whole test suite"
	@echo "make lint        ruff + mypy + import-linter contracts (the package map)"
	@echo "make bench       run the benchmarks in benchmarks/ (slow; prints figures)"
	@echo "make screenshots regenerate docs/screenshots/*.png with the browser tests"
	@echo "make constraints regenerate constraints.txt from a fresh resolve"

bootstrap:
	scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m pht_airflow.dev.demo

lint: bootstrap
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy pht_airflow
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest --durations=25 $(PYTEST_ARGS)

format:
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

bench: bootstrap
	$(PY) benchmarks/bench_blobs.py
	$(PY) benchmarks/bench_seal.py

# The README's screenshots, taken by the real-browser tests (Debian's chromium, Playwright).
screenshots: bootstrap
	PHT_SCREENSHOTS=1 $(VENV)/bin/pytest -m browser -p no:cacheprovider $(PYTEST_ARGS)

constraints:
	rm -rf .pht/resolve && python3 -m venv .pht/resolve
	.pht/resolve/bin/pip install -q -e ".[station,central,dev,test]"
	{ head -4 constraints.txt; .pht/resolve/bin/pip freeze --exclude-editable | grep -v '^pht-airflow'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .pht/resolve

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
