# tradeplane — every developer and CI entry point.
#   make run     the whole exchange on this machine, with demo traders (Ctrl-C stops it)
#   make test    create the virtualenv, install, lint, and run the whole test suite
#   make bench   print the benchmark figures
#   make lint    ruff, mypy --strict, import-linter contracts, hadolint

SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist workers for `make pytest` (much of the suite waits on servers and
# processes); PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2

.PHONY: run test lint pytest bench native crd clean

$(INSTALLED): pyproject.toml scripts/find-python
	@python=$$(sh scripts/find-python) || exit 1; \
	echo "using $$python ($$($$python --version))"; \
	$$python -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# The engine core's hot modules compiled to C with mypyc, in place beside their
# sources (the same code; rebuilt whenever a core module changed or a build is missing).
native: $(INSTALLED)
	@$(PY) scripts/build_native.py --if-stale

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

pytest: native
	$(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test: lint pytest

bench: native
	$(PY) bench/run.py
	$(PY) bench/service_path.py
	$(PY) bench/persistence.py
	$(PY) bench/failover.py
	$(PY) bench/nats_cluster.py
	$(PY) bench/ledger.py
	$(PY) bench/e2e.py --balances
	$(PY) bench/scaling.py --balances
	$(PY) bench/tracing.py
	$(PY) bench/operator_bench.py

run: native
	$(BIN)/tradeplane up --demo

# The Market CRD is generated from its model (a test fails when they disagree).
crd: $(INSTALLED)
	$(PY) -m tradeplane_operator.crd > charts/tradeplane/crds/markets.tradeplane.dev.yaml

clean:
	$(PY) scripts/build_native.py --clean 2>/dev/null || true
	rm -rf $(VENV) build .mypy_cache .pytest_cache .ruff_cache .hypothesis
