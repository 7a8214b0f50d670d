"""benchmarks/accelerator_check.py: the CPU dry run writes one JSON with every section measured
or skipped with its reason; the MFU arithmetic and the peak table."""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks.accelerator_check import (
    DRY,
    QWEN3_0_6B,
    SECTIONS,
    SMOLLM2_135M,
    peak_bf16_flops,
    train_flops_per_step,
)
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("accel") / "check.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.accelerator_check", "--dry-run", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[accel_check +" in done.stdout  # progress lines with the elapsed time
    return json.loads(out.read_text())


def test_dry_run_writes_every_section_with_its_time(dry_run):
    assert dry_run["dry_run"] is True and "aborted" not in dry_run
    for name in SECTIONS:
        assert "status" not in dry_run[name], name  # every section ran to its end
        assert dry_run[name]["seconds"] >= 0
    assert dry_run["total_seconds"] < DRY.hard_limit_s
    device = dry_run["device"]
    assert device["backend"] == "cpu" and device["device_kind"] and device["jax"]
    assert device["peak_bf16_flops"] is None


def test_dry_run_sampler_makes_the_requested_tokens(dry_run):
    sampler = dry_run["sampler"]
    assert "error" not in sampler
    for name, _ in DRY.models:
        ours = sampler["models"][name]["ours"]
        assert ours["tokens_per_s"] > 0 and ours["compile_seconds"] > 0
        assert ours["tokens_shape"] == [DRY.sample_batch, DRY.sample_new]
        assert ours["generated_per_row"] == {"min": DRY.sample_new, "max": DRY.sample_new}
    hf = sampler["transformers"]
    if "skipped" in hf:  # torch or transformers not installed
        assert hf["skipped"]
        return
    for name, _ in DRY.models:
        row = sampler["models"][name]
        assert row["transformers"]["tokens_shape"] == [DRY.sample_batch, DRY.sample_new]
        assert row["transformers"]["tokens_per_s"] > 0
        ratio = row["ours"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
        assert row["ours_over_transformers"] == pytest.approx(ratio)


def test_dry_run_train_step_has_tokens_per_s_and_no_mfu_on_cpu(dry_run):
    train = dry_run["train_step"]
    for name, _ in DRY.models:
        row = train["models"][name]
        assert "error" not in row, row
        assert row["tokens_per_s"] > 0 and math.isfinite(row["first_loss"])
        assert row["model_flops_per_step"] > 0
        assert row["mfu"] is None and "cpu" in row["mfu_reason"]


def test_dry_run_attention_skips_cudnn_with_a_reason(dry_run):
    attention = dry_run["attention"]
    assert "needs GPU" in attention["skipped"]
    for name, _ in DRY.models:
        row = attention["shapes"][name]
        assert "cudnn" not in row["max_abs_diff"] and "needs GPU" in row["cudnn"]
        assert row["within_tolerance"]["xla"]  # the stand-in on CPU: xla against naive
        assert row["seconds"]["xla"]["forward"] > 0


def test_dry_run_kernel_has_a_ratio_or_the_lowering_error(dry_run):
    kernel = dry_run["kernel"]
    assert kernel["interpret"] is False
    for case in kernel["dtypes"].values():
        assert case["reference"]["temp_bytes"] > 0
        assert ("temp_ratio" in case) != ("error" in case)
    # On CPU Pallas has no compiled lowering, only interpret mode.
    assert "Pallas could not lower the kernel for cpu" in kernel["error"]
    assert "interpret" in kernel["error"]


def test_peak_table_matches_device_kinds():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("NVIDIA L40S") == 362e12
    assert peak_bf16_flops("cpu") is None


@pytest.mark.parametrize("config", [SMOLLM2_135M, QWEN3_0_6B])
def test_train_flops_are_eight_n_per_response_token_for_short_sequences(config):
    # The published sizes (tied embeddings counted once).
    assert config.num_params == pytest.approx(
        {"llama": 134.5e6, "qwen3": 596e6}[config.architecture], rel=1e-3
    )
    # Responses alone: the student's forward + backward (6 N, LM head included) and the teacher's
    # forward (2 N) on the same 8 tokens; at this length attention adds under 1%.
    flops = train_flops_per_step(config, rows=2, prompt=0, teacher=0, response=8)
    assert flops == pytest.approx(2 * 8 * 8 * config.num_params, rel=1e-2)
