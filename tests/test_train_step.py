"""The sharded update: mesh parity (8 CPU devices, in a subprocess), accumulation, EMA, guard."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from pmd_jax import sharding
from pmd_jax.losses import LossConfig
from pmd_jax.model.transformer import init_params
from pmd_jax.optimizer import OptimizerConfig, make_optimizer
from pmd_jax.train_step import StepConfig, init_train_state, make_train_step

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from train_step_parity import MODEL, random_batch  # noqa: E402

SCRIPT = pathlib.Path(__file__).parent / "train_step_parity.py"


def _run_on_8_devices(tmp_path, specs):
    out = tmp_path / "parity.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *specs],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out)


def _max_diff(results, spec, reference):
    keys = [k.split("/", 1)[1] for k in results.files if k.startswith(reference + "/")]
    assert keys
    return max(
        float(np.max(np.abs(results[f"{spec}/{k}"] - results[f"{reference}/{k}"]))) for k in keys
    )


def _check_parity(tmp_path, specs, reference):
    results = _run_on_8_devices(tmp_path, [reference, *specs])
    for spec in specs:
        assert _max_diff(results, spec, reference) <= 1e-5, spec


def test_pmd_step_on_a_2x2x2_mesh_and_with_accumulation_equals_one_device(tmp_path):
    _check_parity(tmp_path, ["pmd:2,2,2", "pmd:1,1,1:2"], "pmd:1,1,1")


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "sdpo", "pmd"])
def test_step_on_every_mesh_equals_one_device(tmp_path, algorithm):
    specs = [f"{algorithm}:{mesh}" for mesh in ("8,1,1", "2,4,1", "2,2,2")]
    # Meshes only: accumulation is checked on one device by the fast test. (Accumulation on a
    # mesh for GRPO measured 1.6e-5: Adam's first step turns summation-order noise in near-zero
    # gradients into parameter differences of up to ~lr.)
    _check_parity(tmp_path, specs, f"{algorithm}:1,1,1")


def _one_device_step(algorithm, batch, tau=0.05, learning_rate=1e-3):
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), jax.devices()[:1])
    params = init_params(MODEL, jax.random.PRNGKey(0))
    optimizer = make_optimizer(OptimizerConfig(learning_rate=learning_rate, warmup_steps=0), 10)
    config = StepConfig(
        algorithm=algorithm, loss=LossConfig(top_k=5), group_size=4, teacher_tau=tau, loss_chunk=4
    )
    state = init_train_state(params, optimizer, algorithm)
    old = jax.tree.map(np.asarray, state)
    step = make_train_step(MODEL, config, optimizer, mesh, state, batch)
    new_state, metrics = step(state, batch)
    return old, jax.tree.map(np.asarray, new_state), jax.tree.map(np.asarray, metrics)


def test_ema_teacher_is_the_exact_mix_of_old_teacher_and_new_student():
    tau = 0.05
    old, new, _ = _one_device_step("pmd", random_batch(2), tau=tau)
    assert not np.array_equal(new.params["embed"]["embedding"], old.params["embed"]["embedding"])
    for teacher_old, student_new, teacher_new in zip(
        jax.tree.leaves(old.teacher_params),
        jax.tree.leaves(new.params),
        jax.tree.leaves(new.teacher_params),
        strict=True,
    ):
        expected = np.float32(1 - tau) * teacher_old + np.float32(tau) * student_new
        # One fused multiply-add may round once instead of twice: allow 1 ulp, no more.
        assert np.all(np.abs(teacher_new - expected) <= np.spacing(np.abs(expected)))


def test_zero_tau_keeps_the_teacher_bit_identical():
    old, new, _ = _one_device_step("sdpo", random_batch(3), tau=0.0)
    for before, after in zip(
        jax.tree.leaves(old.teacher_params), jax.tree.leaves(new.teacher_params), strict=True
    ):
        np.testing.assert_array_equal(before, after)


def test_non_finite_loss_skips_the_update_and_counts_it():
    batch = random_batch(4)
    sampler = batch.sampler_logprobs.copy()
    sampler[0, 0] = np.nan
    old, new, metrics = _one_device_step("grpo", batch._replace(sampler_logprobs=sampler))
    assert int(new.skipped_updates) == 1 and int(new.step) == 1
    assert metrics["train/update_skipped"] == 1.0
    for before, after in zip(jax.tree.leaves(old.params), jax.tree.leaves(new.params), strict=True):
        np.testing.assert_array_equal(before, after)
    for before, after in zip(
        jax.tree.leaves(old.opt_state), jax.tree.leaves(new.opt_state), strict=True
    ):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("algorithm", ["grpo", "pmd"])
def test_all_masked_batch_gives_zero_loss_and_zero_grads(algorithm):
    batch = random_batch(5)
    batch = batch._replace(response_mask=np.zeros_like(batch.response_mask))
    old, new, metrics = _one_device_step(algorithm, batch)
    assert metrics["train/loss"] == 0.0 and metrics["train/grad_norm"] == 0.0
    # Zero grads: Adam's step is 0, so only AdamW's decoupled decay (lr * 0.01) moves the
    # matrices, and the norm scales (not decayed) stay put.
    kernel_old = old.params["layers"]["q_proj"]["kernel"]
    np.testing.assert_allclose(
        new.params["layers"]["q_proj"]["kernel"], kernel_old * (1 - 1e-3 * 0.01), rtol=1e-6
    )
    np.testing.assert_array_equal(
        new.params["final_norm"]["scale"], old.params["final_norm"]["scale"]
    )
