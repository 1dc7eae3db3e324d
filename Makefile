# The two commands of the README: `make demo` (main job) and `make test` (test suite).
# Both set everything up on a fresh machine first (scripts/setup.sh, idempotent).
VENV ?= .venv
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup demo test test-slow bench lint

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/medhall demo

test: setup
	$(VENV)/bin/python -m pytest

test-slow: setup
	$(VENV)/bin/python -m pytest -m slow

bench: setup
	$(VENV)/bin/python benchmarks/run_all.py

lint: setup
	$(VENV)/bin/ruff check .
