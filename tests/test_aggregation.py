"""LossConfig.aggregation in the train step: every mode equals its formula, with 1 and 4
micro-batches, on 1 device and on a 2x2x2 mesh of 8 CPU devices (this file run as a script in
a subprocess, because the device count must be set before JAX starts).

The reference is written here from the formulas, independent of `losses.aggregate` and of the
accumulation weights: per-token terms x[n, t] of the on-policy step (importance ratio 1), and
numpy float64 coefficients c[n, t] of the mode, loss = sum c x (in float64) and gradient =
vjp(x)(c). Rows without signal and ragged rows make the token and row weights of the
micro-batches differ, and `test_the_batch_tells_token_weights_from_row_weights` checks that
they differ by far more than the tolerances.

    python tests/test_aggregation.py OUT.npz        # the 8-device runs (used by the test)
"""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from train_step_parity import MODEL, random_batch  # noqa: E402

from pmd_jax import sharding  # noqa: E402
from pmd_jax.losses import AGGREGATIONS, LossConfig, sampled_logprobs, topk_divergence  # noqa: E402
from pmd_jax.model.transformer import init_params  # noqa: E402
from pmd_jax.platform import on_mesh  # noqa: E402
from pmd_jax.sampling import lm_head_matrix  # noqa: E402
from pmd_jax.train_step import StepConfig, accumulated_grads, response_hidden  # noqa: E402

GROUP = 4
MICRO = (1, 4)
ALGORITHMS = ("pmd", "grpo")
ROW_MODES = tuple(mode for mode in AGGREGATIONS if mode != "token_mean")
MESH = (2, 2, 2)
# The loss: float32 sums of <= 96 terms against the float64 sum of the same float32 terms,
# relative to sum |c x| (GRPO's terms cancel: advantages sum to 0 in each group).
LOSS_RTOL = 1e-6
# Gradients: max |g - reference| over a leaf, relative to the leaf's largest entry. The step
# computes logits in time chunks under remat and, on the mesh, sharded: float32 reassociation,
# measured <= 2e-6 (every mode, 1 or 4 micro-batches, 1 or 8 devices). A token-weighted row
# mode is off by > 0.05 (`test_the_batch_tells_token_weights_from_row_weights`).
GRAD_TOL = 1e-5


def _config(algorithm: str, aggregation: str, micro: int) -> StepConfig:
    return StepConfig(
        algorithm=algorithm,
        loss=LossConfig(top_k=5, alpha=0.5, aggregation=aggregation),
        group_size=GROUP,
        micro_batches=micro,
        loss_chunk=4,
    )


def _inputs():
    """Params, a teacher that differs, and a batch: ragged responses, one group of 4 rows
    without signal (its micro-batch adds no distillation tokens), one row with signal and a
    one-token response, one row with an empty response."""
    params = init_params(MODEL, jax.random.PRNGKey(0))
    teacher = jax.tree.map(lambda x: x * 1.1, params)
    batch = random_batch(3)
    sample_mask = batch.sample_mask.copy()
    sample_mask[4:8] = False
    sample_mask[[0, 9, 13]] = True
    response_mask = batch.response_mask.copy()
    response_mask[9] = False
    response_mask[9, 0] = True
    response_mask[13] = False
    batch = batch._replace(sample_mask=sample_mask, response_mask=response_mask)
    return params, teacher, batch


# ---------------------------------------------------------------- the reference


def _loss_mask(batch, algorithm: str) -> np.ndarray:
    mask = np.asarray(batch.response_mask, bool)
    if algorithm != "grpo":
        mask = mask & np.asarray(batch.sample_mask, bool)[:, None]
    return mask


def _coefficients(mask: np.ndarray, aggregation: str) -> np.ndarray:
    """float64 c[n, t] with loss = sum_nt c x over all N rows of `mask` [N, T]."""
    mask = mask.astype(np.float64)
    rows = mask.shape[0]
    if aggregation == "token_mean":
        return mask / max(mask.sum(), 1.0)
    if aggregation == "seq_mean_token_mean":
        return mask / np.maximum(mask.sum(1, keepdims=True), 1.0) / rows
    assert aggregation == "seq_mean_token_sum"
    return mask / rows


def _terms_fn(teacher, batch, algorithm: str):
    """params -> per-token terms x [N, T] (float32; 0 outside the loss mask), on-policy."""
    mask = jnp.asarray(_loss_mask(batch, algorithm))
    tokens = jnp.asarray(batch.response_tokens)
    sampler = jnp.asarray(batch.sampler_logprobs)
    args = (batch.response_tokens, batch.response_mask)

    def logits_of(p, prompt_tokens, prompt_mask):
        hidden = response_hidden(p, MODEL, prompt_tokens, prompt_mask, *args)
        return jnp.dot(hidden, lm_head_matrix(p, MODEL), preferred_element_type=jnp.float32)

    rewards = np.asarray(batch.rewards, np.float64).reshape(-1, GROUP)
    advantages = jnp.asarray((rewards - rewards.mean(1, keepdims=True)).reshape(-1, 1), jnp.float32)

    def terms(p):
        logits = logits_of(p, batch.prompt_tokens, batch.prompt_mask)
        logprobs = sampled_logprobs(logits, tokens)
        now = lax.stop_gradient(logprobs)
        # rollout correction min(exp(logp_old - logp_sampler), 2), old = now (on-policy)
        # (the importance weight min(exp(logp - logp_old), is_clip) is 1)
        weight = jnp.minimum(jnp.exp(jnp.where(mask, now - sampler, 0.0)), 2.0)
        if algorithm == "grpo":  # ratio exp(logp - logp_old) = 1 sits inside every clip
            per_token = -advantages * jnp.exp(logprobs - now)
        else:
            teacher_logits = lax.stop_gradient(
                logits_of(teacher, batch.teacher_tokens, batch.teacher_mask)
            )
            n, t, v = logits.shape
            per_token = topk_divergence(
                logits.reshape(n * t, v), teacher_logits.reshape(n * t, v), alpha=0.5, top_k=5
            ).reshape(n, t)
        return jnp.where(mask, weight * per_token, 0.0)

    return terms


@functools.cache
def _references(algorithm: str):
    """For `_inputs()`: {mode: (loss float64, its scale sum |c x|, grads)}, the per-token terms
    x (float64) and the vjp of the terms (cotangent [N, T] -> (grads,))."""
    params, teacher, batch = _inputs()
    terms, vjp = jax.vjp(jax.jit(_terms_fn(teacher, batch, algorithm)), params)
    x = np.asarray(terms, np.float64)
    mask = _loss_mask(batch, algorithm)
    out = {}
    for mode in AGGREGATIONS:
        c = _coefficients(mask, mode)
        (grads,) = jax.tree.map(np.asarray, vjp(jnp.asarray(c, jnp.float32)))
        out[mode] = (float(np.sum(c * x)), float(np.sum(np.abs(c * x))), grads)
    return out, x, vjp


def _assert_loss_close(got, reference, label):
    ref_loss, scale, _ = reference
    assert abs(got - ref_loss) <= LOSS_RTOL * scale, (label, got, ref_loss, scale)


def _assert_grads_close(got, reference, label):
    for (path, ref), leaf in zip(
        jax.tree_util.tree_leaves_with_path(reference), jax.tree.leaves(got), strict=True
    ):
        scale = float(np.max(np.abs(ref)))
        diff = float(np.max(np.abs(np.asarray(leaf, np.float64) - ref)))
        assert diff <= GRAD_TOL * scale, (label, jax.tree_util.keystr(path), diff / scale)


# ---------------------------------------------------------------- runs


def _run(params, teacher, batch, algorithm, mode, micro, mesh=None):
    config = _config(algorithm, mode, micro)

    def fn(p, t, b):
        with on_mesh(mesh):
            return accumulated_grads(p, t, b, MODEL, config)

    if mesh is None:
        loss, metrics, grads = jax.jit(fn)(params, teacher, jax.tree.map(jnp.asarray, batch))
    else:
        param_sh = sharding.param_shardings(params, mesh)
        batch_sh = jax.tree.map(lambda x: sharding.batch_sharding(mesh, x.ndim), batch)
        jitted = jax.jit(
            fn,
            in_shardings=(param_sh, param_sh, batch_sh),
            out_shardings=sharding.replicated(mesh),
        )
        loss, metrics, grads = jitted(
            sharding.shard_params(params, mesh),
            sharding.shard_params(teacher, mesh),
            sharding.shard_batch(batch, mesh),
        )
    return float(loss), jax.tree.map(float, metrics), jax.tree.map(np.asarray, grads)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_mode_equals_its_formula_with_and_without_micro_batches(algorithm):
    params, teacher, batch = _inputs()
    references, _, _ = _references(algorithm)
    for mode in AGGREGATIONS:
        ref_grads = references[mode][2]
        metrics = {}
        for micro in MICRO:
            loss, metrics[micro], grads = _run(params, teacher, batch, algorithm, mode, micro)
            label = f"{algorithm}/{mode}/micro={micro}"
            _assert_loss_close(loss, references[mode], label)
            _assert_grads_close(grads, ref_grads, label)
        # Token-mean metrics, counts and row means: 4 micro-batches report what one batch does.
        for key, value in metrics[1].items():
            assert metrics[4][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (mode, key)
        loss_key = "grpo/loss" if algorithm == "grpo" else "distill/loss"
        _assert_loss_close(metrics[4][loss_key], references[mode], f"{mode} metric")


def _mesh_results(tmp_path, micros: tuple[int, ...]):
    out = tmp_path / "mesh.npz"
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8"
    )
    done = subprocess.run(
        [sys.executable, __file__, str(out), ",".join(map(str, micros))],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out)


def test_every_mode_on_8_devices_with_micro_batches_equals_its_formula(tmp_path):
    """The mesh and the accumulation together (4 micro-batches, mesh 2 x 2 x 2)."""
    _check_mesh_results(_mesh_results(tmp_path, (4,)), (4,))


@pytest.mark.slow
def test_every_mode_on_8_devices_equals_its_formula_without_micro_batches(tmp_path):
    _check_mesh_results(_mesh_results(tmp_path, (1,)), (1,))


def _check_mesh_results(results, micros):
    for algorithm in ALGORITHMS:
        references, _, _ = _references(algorithm)
        for mode in AGGREGATIONS:
            ref_grads = references[mode][2]
            for micro in micros:
                label = f"{algorithm}/{mode}/{micro}"
                _assert_loss_close(float(results[f"{label}/loss"]), references[mode], label)
                keys = [
                    jax.tree_util.keystr(p)
                    for p, _ in jax.tree_util.tree_leaves_with_path(ref_grads)
                ]
                got = jax.tree.unflatten(
                    jax.tree.structure(ref_grads), [results[f"{label}/{k}"] for k in keys]
                )
                _assert_grads_close(got, ref_grads, f"8 devices {label}")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_batch_tells_token_weights_from_row_weights(algorithm):
    """What a row mode would give if accumulation weighed micro-batches by their tokens: far
    from the formula (loss and gradients), so the tests above would catch it; and the modes
    themselves differ on this batch."""
    _, _, batch = _inputs()
    references, x, vjp = _references(algorithm)
    mask = _loss_mask(batch, algorithm)
    parts = np.split(np.arange(mask.shape[0]), 4)
    token_share = np.array([mask[rows].sum() for rows in parts]) / mask.sum()
    assert token_share.max() > 1.5 * token_share.min()
    for mode in ROW_MODES:
        ref_loss, scale, ref_grads = references[mode]
        part_losses = [np.sum(_coefficients(mask[rows], mode) * x[rows]) for rows in parts]
        wrong_loss = float(np.dot(token_share, part_losses))
        assert abs(wrong_loss - ref_loss) > 1e3 * LOSS_RTOL * scale, mode
        # Part k's loss has coefficients 4 c[rows of k]; token weights scale them by share_k.
        wrong_c = _coefficients(mask, mode) * np.repeat(4 * token_share, len(parts[0]))[:, None]
        (wrong_grads,) = vjp(jnp.asarray(wrong_c, jnp.float32))
        worst = max(
            float(np.max(np.abs(np.asarray(w) - r)) / np.max(np.abs(r)))
            for w, r in zip(jax.tree.leaves(wrong_grads), jax.tree.leaves(ref_grads), strict=True)
        )
        assert worst > 0.05, (mode, worst)
    losses = [references[mode][0] for mode in AGGREGATIONS]
    tolerance = LOSS_RTOL * max(references[mode][1] for mode in AGGREGATIONS)
    assert min(abs(a - b) for i, a in enumerate(losses) for b in losses[i + 1 :]) > 1e3 * tolerance


def main(out: str, micros: tuple[int, ...]) -> None:
    """The 8-device runs: {algorithm/mode/micro/(loss | leaf path)} -> array, saved to `out`."""
    assert jax.device_count() >= 8, jax.devices()
    mesh = sharding.make_mesh(sharding.MeshConfig(*MESH), jax.devices()[:8])
    params, teacher, batch = _inputs()
    saved = {}
    for algorithm in ALGORITHMS:
        for mode in AGGREGATIONS:
            for micro in micros:
                loss, _, grads = _run(params, teacher, batch, algorithm, mode, micro, mesh)
                label = f"{algorithm}/{mode}/{micro}"
                saved[f"{label}/loss"] = np.asarray(loss)
                for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
                    saved[f"{label}/{jax.tree_util.keystr(path)}"] = leaf
                print(label, loss, flush=True)
    np.savez(out, **saved)


if __name__ == "__main__":
    main(sys.argv[1], tuple(int(m) for m in sys.argv[2].split(",")))
