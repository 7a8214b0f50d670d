"""The sharded update: mesh parity (8 CPU devices, in a subprocess), accumulation, EMA, guard."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pmd_jax import sharding
from pmd_jax.losses import LossConfig
from pmd_jax.model.transformer import init_params
from pmd_jax.optimizer import OptimizerConfig, clip_by_global_norm, make_optimizer
from pmd_jax.train_step import (
    StepConfig,
    accumulated_grads,
    init_train_state,
    loss_spike,
    make_train_step,
)

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


# The step is Adam's first at lr 1e-3, whose update is ~lr * g / |g| per entry: where a gradient
# entry is near zero, the summation order of a sharded reduction can move it by a good part of
# lr. 2e-5 (2% of lr) still catches any real difference (a wrong shard or a missing term moves
# the loss and most entries by far more); measured worst case 1.1e-5 (SDPO on the 2,4,1 mesh).
PARITY_TOLERANCE = 2e-5


def _check_parity(tmp_path, specs, reference):
    results = _run_on_8_devices(tmp_path, [reference, *specs])
    for spec in specs:
        assert abs(results[f"{spec}/loss"] - results[f"{reference}/loss"]) <= 1e-6, spec
        assert _max_diff(results, spec, reference) <= PARITY_TOLERANCE, spec


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


@pytest.mark.parametrize("scale", [1e-3, 10.0])  # below and above the clip threshold
def test_clip_with_a_given_norm_equals_optax_clip(scale):
    grads = jax.tree.map(lambda x: x * scale, init_params(MODEL, jax.random.PRNGKey(1)))
    expected, expected_state = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    ours = clip_by_global_norm(1.0)
    state = ours.init(grads)
    assert jax.tree.structure(state) == jax.tree.structure(expected_state)
    norm = optax.tree.norm(grads)
    assert (float(norm) < 1.0) == (scale < 1.0)
    for got in (ours.update(grads, state)[0], ours.update(grads, state, grad_norm=norm)[0]):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(a, b)


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


def test_loss_spike_needs_a_full_window_and_compares_magnitudes():
    window = jnp.asarray([1.0, -1.0, 1.0, np.nan])
    assert not loss_spike(jnp.asarray(100.0), window, 2.0)  # 3 of 4 losses seen: guard waits
    full = jnp.asarray([1.0, -1.0, 1.0, -1.0])  # mean |loss| = 1
    assert loss_spike(jnp.asarray(-2.5), full, 2.0)
    assert not loss_spike(jnp.asarray(1.9), full, 2.0)
    assert not loss_spike(jnp.asarray(100.0), full, 0.0)  # factor 0 = off


def _guarded_run():
    """One compiled PMD step with the spike guard (factor 2, window 3) and NaN gradients at
    step 2, and a fresh state whose window can be set: `(step, fresh(window), batch)`."""
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), jax.devices()[:1])
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=0), 10)
    config = StepConfig(
        algorithm="pmd",
        loss=LossConfig(top_k=5),
        group_size=4,
        loss_chunk=4,
        loss_spike_factor=2.0,
        loss_spike_window=3,
        nan_grad_at_step=2,
    )

    def fresh(window):
        params = init_params(MODEL, jax.random.PRNGKey(0))
        state = init_train_state(params, optimizer, "pmd", config.loss_spike_window)
        return state.replace(recent_losses=jnp.asarray(window, jnp.float32))

    batch = random_batch(6)
    step = make_train_step(MODEL, config, optimizer, mesh, fresh([np.nan] * 3), batch)
    return step, fresh, batch


def _call(step, state, batch):
    """(state before as numpy, state after as numpy, metrics as floats); `state` is donated."""
    old = jax.tree.map(np.asarray, state)
    new, metrics = step(state, batch)
    return old, new, jax.tree.map(float, metrics)


def _same(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in pairs)


def test_spike_guard_skips_a_spike_and_nan_drill_poisons_only_its_step():
    step, fresh, batch = _guarded_run()
    # Window not full yet: no guard; step 1 is not the NaN step. The update applies.
    old, first, metrics = _call(step, fresh([np.nan] * 3), batch)
    loss = metrics["train/loss"]
    assert loss > 0 and metrics["train/update_skipped"] == 0.0
    assert not _same(old.params, first.params)
    np.testing.assert_array_equal(first.recent_losses, np.float32([loss, np.nan, np.nan]))
    # The same loss against a window of loss / 4: a spike (loss > 2 x mean), skipped.
    old, new, metrics = _call(step, fresh([loss / 4] * 3), batch)
    assert metrics["train/loss_spike"] == 1.0 and metrics["train/update_skipped"] == 1.0
    assert int(new.skipped_updates) == 1
    assert _same(old.params, new.params) and _same(old.opt_state, new.opt_state)
    np.testing.assert_array_equal(new.recent_losses, np.float32([loss, loss / 4, loss / 4]))
    # Against a window of `loss` itself: no spike, the update applies.
    old, new, metrics = _call(step, fresh([loss] * 3), batch)
    assert metrics["train/loss_spike"] == 0.0 and int(new.skipped_updates) == 0
    assert not _same(old.params, new.params)
    # Step 2 of the first run is the NaN drill's: finite loss, NaN gradients, update dropped.
    old, new, metrics = _call(step, first, batch)
    assert int(new.step) == 2 and metrics["train/update_skipped"] == 1.0
    assert np.isfinite(metrics["train/loss"]) and np.isnan(metrics["train/grad_norm"])
    assert metrics["train/loss_spike"] == 0.0 and int(new.skipped_updates) == 1
    assert _same(old.params, new.params) and _same(old.opt_state, new.opt_state)


@pytest.mark.parametrize("algorithm", ["grpo", "pmd"])
def test_accumulated_metrics_equal_the_one_batch_metrics(algorithm):
    """Token means, counts and row means: 4 micro-batches report what one batch does. A group
    without signal tokens must not drop out of distill/signal_fraction (it did: token-weighted,
    the metric read 0.75 on steps where 3 of 16 rows had signal)."""
    params = init_params(MODEL, jax.random.PRNGKey(0))
    teacher = jax.tree.map(lambda x: x * 1.1, params)
    batch = random_batch(3)
    # The second group has no signal at all: its micro-batch adds no distillation tokens.
    sample_mask = batch.sample_mask.copy()
    sample_mask[4:8] = False
    batch = jax.tree.map(jnp.asarray, batch._replace(sample_mask=sample_mask))
    results = {}
    for micro in (1, 4):
        config = StepConfig(
            algorithm=algorithm, loss=LossConfig(top_k=5), group_size=4, micro_batches=micro
        )
        _, metrics, _ = accumulated_grads(params, teacher, batch, MODEL, config)
        results[micro] = {key: float(value) for key, value in metrics.items()}
    assert results[1].keys() == results[4].keys()
    for key, value in results[1].items():
        assert results[4][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    if algorithm == "pmd":
        assert results[4]["distill/signal_fraction"] == float(np.mean(sample_mask))
        expected_tokens = np.sum(np.asarray(batch.response_mask) & sample_mask[:, None])
        assert results[4]["distill/token_count"] == expected_tokens


@pytest.mark.parametrize("policy", ["dots", "full"])
def test_remat_policies_give_the_gradients_of_no_remat(policy):
    """Rematerialisation changes what the backward pass stores, never what it computes (up to
    float32 reassociation: the recomputed forward may fuse differently)."""
    params = init_params(MODEL, jax.random.PRNGKey(0))
    teacher = jax.tree.map(lambda x: x * 1.1, params)
    batch = jax.tree.map(jnp.asarray, random_batch(4))
    grads = {}
    for remat in ("none", policy):
        config = StepConfig(algorithm="pmd", loss=LossConfig(top_k=5), group_size=4, remat=remat)
        _, _, grads[remat] = accumulated_grads(params, teacher, batch, MODEL, config)
    for path, reference in jax.tree_util.tree_leaves_with_path(grads["none"]):
        other = _leaf(grads[policy], path)
        scale = float(np.max(np.abs(reference)))
        np.testing.assert_allclose(
            other, reference, rtol=1e-4, atol=1e-5 * scale, err_msg=str(path)
        )


def _leaf(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def _two_steps(param_dtype: str, dtype: str, micro_batches: int):
    """Two PMD updates from the same float32 init; params cast to `param_dtype`."""
    model = MODEL.replace(param_dtype=param_dtype, dtype=dtype)
    params = jax.tree.map(
        lambda x: x.astype(param_dtype), init_params(MODEL, jax.random.PRNGKey(0))
    )
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=0), 10)
    config = StepConfig(
        algorithm="pmd", loss=LossConfig(top_k=5), group_size=4, micro_batches=micro_batches
    )
    state = init_train_state(params, optimizer, "pmd")
    params = jax.tree.map(np.asarray, params)  # the step donates the state's buffers
    batches = [random_batch(seed) for seed in (5, 6)]
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), jax.devices()[:1])
    step = make_train_step(model, config, optimizer, mesh, state, batches[0])
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["train/loss"]))
    return params, state, losses


@pytest.mark.parametrize(
    "param_dtype, dtype", [("bfloat16", "bfloat16"), ("float32", "bfloat16")], ids=["bf16", "mixed"]
)
def test_bf16_with_micro_batches_tracks_float32(param_dtype, dtype):
    """bfloat16 parameters (float32 Adam moments) or float32 masters with bfloat16 compute, with
    gradient accumulation over 2 micro-batches: 2 steps agree with float32 on one batch.
    Tolerances: the losses within 2% (bfloat16 logits carry ~3 significant digits), and each
    weight matrix's update within 0.9 cosine of float32's (Adam's first steps are nearly
    lr x sign(grad): only entries whose gradient is near zero may flip). Norm scales are left
    out: at 1.0 a bfloat16 step is 2^-7, so a 1e-3 update rounds away there (float32 masters
    keep it: that is what param_dtype=float32 with dtype=bfloat16 is for)."""
    init, state, losses = _two_steps(param_dtype, dtype, micro_batches=2)
    _, reference, reference_losses = _two_steps("float32", "float32", micro_batches=1)
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(param_dtype)}
    adam = state.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
    assert {x.dtype for x in jax.tree.leaves((adam.mu, adam.nu))} == {jnp.dtype("float32")}
    np.testing.assert_allclose(losses, reference_losses, rtol=2e-2)
    start = jax.tree_util.tree_leaves_with_path(init)
    for (path, first), new, ref in zip(
        start, jax.tree.leaves(state.params), jax.tree.leaves(reference.params), strict=True
    ):
        if not jax.tree_util.keystr(path).endswith(("['kernel']", "['embedding']")):
            continue
        update = (np.asarray(new, np.float32) - np.asarray(first, np.float32)).ravel()
        ref_update = (np.asarray(ref) - np.asarray(first, np.float32)).ravel()
        cosine = update @ ref_update / (np.linalg.norm(update) * np.linalg.norm(ref_update))
        assert cosine > 0.9, (jax.tree_util.keystr(path), cosine)


def _state_bytes(config: OptimizerConfig, params) -> int:
    """Bytes of the optimizer state's arrays (scalar step counters left out)."""
    state = jax.eval_shape(make_optimizer(config, 10).init, params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if x.ndim)


def test_optimizer_state_sizes_of_the_memory_options():
    """AdamW: two float32 moments (8 bytes/param, bfloat16 params too); bfloat16 moments: 4;
    Adafactor: row + column factors of each matrix (shapes >= 128 factor)."""
    model = MODEL.replace(hidden_size=256, intermediate_size=512, head_dim=64, vocab_size=1024)
    params = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
    count = sum(x.size for x in jax.tree.leaves(params))
    bf16_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), params)
    assert _state_bytes(OptimizerConfig(), params) == 8 * count
    assert _state_bytes(OptimizerConfig(), bf16_params) == 8 * count
    assert _state_bytes(OptimizerConfig(moment_dtype="bfloat16"), params) == 4 * count
    assert _state_bytes(OptimizerConfig(name="adafactor"), params) < 0.05 * 4 * count


def test_adafactor_equals_optax_adafactor_without_weight_decay():
    params = init_params(
        MODEL.replace(hidden_size=128, intermediate_size=256), jax.random.PRNGKey(1)
    )
    grads = jax.tree.map(lambda x: jnp.cos(x * 7.0), params)
    ours = make_optimizer(
        OptimizerConfig(
            name="adafactor", learning_rate=1e-2, warmup_steps=0, weight_decay=0.0, grad_clip=0.0
        ),
        10,
    )
    reference = optax.adafactor(1e-2, multiply_by_parameter_scale=False, clipping_threshold=None)
    state, ref_state = ours.init(params), reference.init(params)
    for _ in range(2):
        updates, state = ours.update(grads, state, params)
        ref_updates, ref_state = reference.update(grads, ref_state, params)
        for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_optimizer_options_are_refused_by_name():
    with pytest.raises(ValueError, match="OptimizerConfig.name='sgd'"):
        OptimizerConfig(name="sgd")
    with pytest.raises(ValueError, match="moment_dtype applies to adamw"):
        OptimizerConfig(name="adafactor", moment_dtype="bfloat16")
    with pytest.raises(ValueError, match="StepConfig.remat='yes'"):
        StepConfig(remat="yes")
