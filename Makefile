# Two entry points for a fresh machine (see README): `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/kvledger: pyproject.toml ledger/_fastenc.c ledger/_fastfold.c
	$(PY) -m venv $(VENV)
	# torch==2.13.0 is the CPU build pip takes from this machine's disk (no CUDA download).
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: venv demo test lint
venv: $(BIN)/kvledger

demo: venv
	$(BIN)/kvledger demo --out kvledger-out/demo

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: venv
	$(BIN)/ruff check .
