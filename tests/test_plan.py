"""pmd_jax.plan on this machine: presets, counted figures against XLA's, memory parts against the
compiled memory analysis, collectives parsing and the fit suggestions. TPU compiles:
tests/test_tpu_compile.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pmd_jax import plan as planner
from pmd_jax.config import apply_overrides, load_experiment
from pmd_jax.model import registry

# Parameter counts the model cards state (billions).
PUBLISHED = {"qwen3-0.6b": 0.6, "qwen3-8b": 8.2, "llama-3.2-1b": 1.24, "llama-3.1-8b": 8.03,
             "qwen2.5-7b": 7.62, "qwen2.5-0.5b": 0.49}  # fmt: skip

TINY = [
    "--set", "model.name=scratch", "--set", "model.num_layers=1", "--set", "model.hidden_size=64",
    "--set", "model.intermediate_size=128", "--set", "model.num_heads=4",
    "--set", "model.num_kv_heads=2", "--set", "model.head_dim=16", "--set", "model.vocab_size=256",
    "--set", "data.batch_size=2", "--set", "rollout.num_samples=2",
    "--set", "rollout.max_new_tokens=16", "--set", "teacher.max_prompt_tokens=24",
    "--set", "loss.top_k=4", "--set", "mesh.data=1",
]  # fmt: skip


def _tiny_config(*extra: str):
    overrides = [value for flag, value in zip(TINY[::2], TINY[1::2], strict=True)]
    return apply_overrides(load_experiment("tiny"), overrides + list(extra))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_have_the_published_parameter_counts(name):
    config = registry.model_shape(name)
    assert config.num_params / 1e9 == pytest.approx(PUBLISHED[name], rel=0.02)
    assert registry.model_shape(json.loads((registry.PRESETS_DIR / f"{name}.json").read_text())[
        "hub_id"]) == config  # fmt: skip


def test_model_shape_reads_an_hf_directory_without_weights(tmp_path):
    from pmd_jax.model.config import config_to_hf_dict

    reference = registry.model_shape("qwen3-0.6b")
    (tmp_path / "config.json").write_text(json.dumps(config_to_hf_dict(reference)))
    assert registry.model_shape(tmp_path) == reference


def test_smollm2_preset_is_the_gguf_header(smollm2_gguf_path):
    from pmd_jax.model.gguf import read_gguf_config

    preset = registry.model_shape("smollm2-135m-instruct")
    header = read_gguf_config(smollm2_gguf_path)
    assert preset.rms_norm_eps == pytest.approx(header.rms_norm_eps)  # GGUF stores float32
    assert preset == header.replace(rms_norm_eps=preset.rms_norm_eps)


def test_unknown_model_lists_the_presets():
    with pytest.raises(ValueError, match="qwen3-8b"):
        registry.model_shape("no-such-model")


def test_local_plan_parts_equal_the_compiled_arguments_and_flops_the_hand_count():
    """One layer, one micro-batch, one loss chunk: no loop runs twice, so XLA's flop count is
    the whole step's and must agree with the count from shapes (XLA adds the elementwise work:
    softmax over V, norms, the optimizer, the tied embedding's scatter-add gradient; at these
    small widths that is up to a fifth of the step)."""
    config = _tiny_config()
    target = planner.local_target()
    target = dataclasses.replace(target, devices=target.devices[:1], num_devices=1)
    shapes = planner.run_shapes(config, prompt_len=8)
    plans = {p.name: p for p in planner.plan_run(config, target, shapes)}
    assert set(plans) == {"train step", "teacher forward", "rollout sampler", "reflection sampler"}
    train = plans["train step"]
    assert train.compiled and not train.error
    # Every byte of the state is an argument (jit drops batch fields the loss never reads: PMD's
    # rewards); the donated state is aliased.
    unread = sum(train.parts.values()) - train.argument
    assert 0 <= unread <= train.parts["batch"]
    state = train.parts["weights"] + train.parts["optimizer"] + train.parts["teacher"]
    assert train.alias >= state
    assert train.total == train.argument + train.output - train.alias + train.temp
    assert train.xla_flops == pytest.approx(train.flops_per_chip, rel=0.2)
    teacher = plans["teacher forward"]
    assert teacher.xla_flops == pytest.approx(teacher.flops_per_chip, rel=0.2)


def test_collectives_are_counted_from_hlo_text():
    hlo = """
  %all-gather.1 = bf16[8,128]{1,0} all-gather(bf16[1,128]{1,0} %p), dimensions={0}
  %ar = f32[] all-reduce(f32[] %x), to_apply=%add
  %ar-start = (f32[4]{0}, f32[2]{0}) all-reduce-start(f32[4]{0} %a, f32[2]{0} %b)
  %cp = s32[16]{0} collective-permute(s32[16]{0} %y), source_target_pairs={{0,1}}
  %not = f32[4] add(f32[4] %a, f32[4] %b)
"""
    found = planner.collectives(hlo)
    assert found == {
        "all-gather": {"count": 1, "bytes": 8 * 128 * 2},
        "all-reduce": {"count": 2, "bytes": 4 + 4 * 4 + 2 * 4},
        "collective-permute": {"count": 1, "bytes": 16 * 4},
    }


def test_suggestions_start_with_what_a_large_step_needs():
    config = apply_overrides(load_experiment("gsm8k"), ["model=qwen3-8b"])
    target = planner.Target("v5e:2x4", planner.CHIPS["v5e"], 8, None, "tpu")
    changes = planner.candidate_changes(config, target)
    assert changes[0] == ["model.attention_impl=splash"]
    assert changes[1] == ["mesh.data=1", "mesh.fsdp=8"]
    # f32 weights + Adam + teacher of 8B over 8 chips take 15.3 GiB of 16: leaner state next.
    assert changes[2] == ["optimizer.moment_dtype=bfloat16"]
    flat = [c for change in changes for c in change]
    assert "model.remat=full" in flat and "optimizer.micro_batches=32" in flat
    micro = [c for c in flat if c.startswith("optimizer.micro_batches")]
    assert micro == ["optimizer.micro_batches=4", "optimizer.micro_batches=16",
                     "optimizer.micro_batches=32"]  # fmt: skip
    assert flat.index("model.remat=full") < flat.index(micro[0])


def test_a_step_that_fits_gets_no_leaner_state():
    config = apply_overrides(load_experiment("gsm8k"), ["model=qwen3-0.6b"])
    target = planner.Target("v5p", planner.CHIPS["v5p"], 4, None, "tpu")
    flat = [c for change in planner.candidate_changes(config, target) for c in change]
    assert not any(c.startswith("optimizer.name") or "param_dtype" in c for c in flat)


def test_gpu_target_gives_shapes_only(capsys, tmp_path):
    out = tmp_path / "plan.json"
    argv = [
        "--exp",
        "tiny",
        *TINY,
        "--set",
        "mesh.data=-1",
        "--gpus",
        "2",
        "--max-tries",
        "0",
        "--json",
        str(out),
    ]
    planner.main(argv)
    record = json.loads(out.read_text())
    assert {p["compiled"] for p in record["programs"]} == {False}
    train = record["programs"][0]
    assert train["total"] == sum(train["parts"].values())
    text = capsys.readouterr().out
    assert "not compiled: shapes only" in text and "2 x NVIDIA H100" in text


def test_kv_cache_and_flops_scale_with_their_shapes():
    m = registry.model_shape("qwen3-8b")
    # 36 layers x 8 kv heads x 128 x (k, v) x 2 bytes = 147456 bytes per token (bf16).
    assert planner.kv_cache_bytes(m.replace(dtype="bfloat16"), 1, 1) == 36 * 8 * 128 * 2 * 2
    shapes = planner.Shapes(32, 8, 512, 1024, 1024, 32, 1536, 384)
    grpo = planner.train_step_flops(m, shapes, "grpo", "none")
    # ~6 N per token for the student: within 25% (attention and the head on top).
    tokens = shapes.rows * (shapes.prompt_len + shapes.response_len)
    assert grpo == pytest.approx(6 * m.num_params * tokens, rel=0.25)
    assert planner.train_step_flops(m, shapes, "grpo", "full") == pytest.approx(grpo * 4 / 3)
    assert np.isfinite(grpo)


def test_importing_pmd_jax_on_a_host_without_accelerators_picks_the_cpu():
    import os
    import subprocess
    import sys

    from pmd_jax import _no_accelerator_devices

    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    code = "import pmd_jax, os, jax; print(os.environ.get('JAX_PLATFORMS'), jax.default_backend())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()  # fmt: skip
    if _no_accelerator_devices():
        assert out == ["cpu", "cpu"]
    env["JAX_PLATFORMS"] = "tpu"  # the user's choice is kept
    code = "import pmd_jax, os; print(os.environ['JAX_PLATFORMS'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()  # fmt: skip
    assert out == ["tpu"]
