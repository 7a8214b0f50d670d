"""The shipped experiments: the gsm8k config takes one real step on CPU via `make train`
(slow), and every experiment file is a valid config with the settings its docstring promises."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import pytest

from pmd_jax.config import apply_overrides, load_experiment

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gsm8k_config_has_the_paper_settings():
    config = load_experiment("gsm8k")
    assert (config.data.batch_size, config.rollout.num_samples) == (32, 8)
    assert (config.optimizer.learning_rate, config.optimizer.warmup_steps) == (1e-5, 10)
    assert (config.loss.alpha, config.loss.top_k, config.teacher_tau) == (0.5, 100, 0.05)
    schedule = config.eval
    assert (schedule.num_samples, schedule.temperature, schedule.top_p) == (16, 0.6, 0.95)
    assert schedule.every_steps == 5
    assert config.optimizer.micro_batches == 1  # one gradient step per batch
    assert config.total_steps == 20 * 234  # 20 epochs of 7473 problems in batches of 32


def test_model_shorthand_selects_the_model_by_name_or_path():
    config = load_experiment("gsm8k")
    assert config.model.name == "smollm2-135m-instruct"
    for name in ("Qwen/Qwen2.5-1.5B-Instruct", "/models/hf_dir", "/models/m.gguf"):
        assert apply_overrides(config, [f"model={name}"]).model.name == name


def test_default_experiment_evaluates_before_and_after_training():
    config = load_experiment("arith")
    assert config.eval.initial and config.eval.final
    assert config.model.name == "smollm2-135m-instruct" and config.algorithm == "pmd"
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "EXP ?= arith" in makefile


@pytest.mark.slow
def test_gsm8k_takes_one_step_on_cpu_via_make(gsm8k_dir, smollm2_gguf_path, tmp_path):
    """`make train EXP=gsm8k` with a tiny batch: one real step on GSM8K with SmolLM2-135M."""
    workdir = tmp_path / "run"
    sets = [
        "progress=false",
        "total_steps=1",
        "data.batch_size=2",
        "data.subset=8",  # setup embeds every train question: 7473 of them take ~1 h on 2 cores
        "rollout.num_samples=2",
        "rollout.max_new_tokens=24",
        "memory.response_len=24",
        "reflect.max_new_tokens=24",
        "teacher.max_prompt_tokens=512",
        "eval.initial=false",
        "eval.every_steps=0",
        "eval.num_problems=2",
        "eval.num_samples=1",
        "eval.max_new_tokens=16",
        "eval.batch_size=2",
    ]
    env = dict(
        os.environ,
        PMD_GSM8K_DIR=str(gsm8k_dir),
        PMD_TFDS_DIR=str(tmp_path / "tfds"),
        JAX_PLATFORMS="cpu",
    )
    command = [
        "make",
        "--no-print-directory",
        "train",
        "EXP=gsm8k",
        f"WORKDIR={workdir}",
        "ARGS=" + " ".join(f"--set={item}" for item in sets),
    ]
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    assert "On this CPU expect roughly" in done.stdout  # the run says how slow it will be
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]
    step = records[0]
    assert step["memory/experience"] >= 1  # the step's rollouts went into memory
    assert 0.0 <= step["reward/mean"] <= 1.0 and step["train/grad_norm"] >= 0.0
    assert step["eval/num_problems"] == 2
    assert (workdir / "checkpoints" / "1").is_dir()
    assert (workdir / "memory" / "memory_step_1.json").is_file()
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["task"] == "gsm8k" and config["rollout"]["num_samples"] == 2
