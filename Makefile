.DEFAULT_GOAL := help
.PHONY: help setup test fuzz lint demo bench chaos cluster image k8s-generate clean

VENV := .venv
PYTEST_ARGS ?=

help:
	@echo "make setup   install services and the .venv (scripts/setup.sh)"
	@echo "make test    run the test suite (PYTEST_ARGS='...' to pass options)"
	@echo "make fuzz    Schemathesis against a local edge, 10,000+ cases (FUZZ_MAX_EXAMPLES, FUZZ_SEED)"
	@echo "make lint    ruff check, ruff format --check, mypy"
	@echo "make demo    run the end-to-end demo"
	@echo "make bench   run the benchmarks (output in results/)"
	@echo "make chaos   faults on a local cluster during a wave, audited (benchmarks/chaos.py)"
	@echo "make cluster start the local cluster and the app on it (intake cluster up)"
	@echo "make image   build the container image (Containerfile, scripts/image.sh)"
	@echo "make k8s-generate  write k8s/'s rules and dashboards from monitoring/ (monitoring/k8s.py)"
	@echo "make clean   remove .venv, .venv-tools, caches and results/"

setup:
	@bash scripts/setup.sh

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The same test as in `make test` (tests/intake/test_fuzz.py), with more cases per operation
# and phase: about 11 cases per unit of FUZZ_MAX_EXAMPLES over the edge's 12 operations.
# FUZZ_SEED empty: new cases at each run (the seed is printed).
FUZZ_MAX_EXAMPLES ?= 1000
FUZZ_SEED ?=
fuzz: setup
	FUZZ_MAX_EXAMPLES=$(FUZZ_MAX_EXAMPLES) FUZZ_SEED=$(FUZZ_SEED) FUZZ_MIN_CASES=10000 $(VENV)/bin/python -m pytest -s -q tests/intake/test_fuzz.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: setup
	$(VENV)/bin/intake demo

bench: setup
	$(VENV)/bin/python -m benchmarks.run

chaos: setup
	$(VENV)/bin/python -m benchmarks.chaos

cluster: setup
	$(VENV)/bin/intake cluster up

image: setup
	@bash scripts/image.sh

k8s-generate: setup
	$(VENV)/bin/python -m monitoring.k8s

clean:
	rm -rf $(VENV) .venv-tools/ results/ build/ dist/ .pytest_cache/ .mypy_cache/ .ruff_cache/ .hypothesis/
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -prune -exec rm -rf {} +
