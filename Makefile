# The two commands of README.md. Each sets up .venv itself on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench setup

setup:
	./scripts/bootstrap.sh

demo: setup
	$(VENV)/bin/ltemlive run --config config/default.yaml

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/bench_tie_forward.py
	$(PY) bench/bench_ad.py
	$(PY) bench/bench_service.py
