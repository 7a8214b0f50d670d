"""Run one train step of a tiny model on a given mesh and save the loss and new params (npz).

Used by tests/test_train_step.py in a subprocess, because the host device count must be set
(XLA_FLAGS=--xla_force_host_platform_device_count=8) before JAX starts.

    python tests/train_step_parity.py OUT.npz ALGORITHM:DATA,FSDP,TENSOR[:MICRO] ...

Each run is saved under keys prefixed "<ALGORITHM>:<mesh>/".
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from pmd_jax import sharding
from pmd_jax.losses import LossConfig
from pmd_jax.model.config import ModelConfig
from pmd_jax.model.transformer import init_params
from pmd_jax.optimizer import OptimizerConfig, make_optimizer
from pmd_jax.train_step import (
    RolloutBatch,
    StepConfig,
    init_train_state,
    make_train_step,
    state_shardings,
)

MODEL = ModelConfig(
    architecture="llama",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
)


def random_batch(
    seed: int, prompts: int = 4, group: int = 4, tp: int = 8, g: int = 6, tt: int = 12
):
    """A RolloutBatch with left-padded prompts, ragged responses and some samples without signal."""
    rng = np.random.default_rng(seed)
    n = prompts * group

    def left_padded(width):
        lengths = rng.integers(2, width + 1, size=n)
        mask = np.arange(width)[None, :] >= (width - lengths)[:, None]
        return np.where(mask, rng.integers(3, 64, size=(n, width)), 0).astype(np.int32), mask

    prompt_tokens, prompt_mask = left_padded(tp)
    teacher_tokens, teacher_mask = left_padded(tt)
    lengths = rng.integers(1, g + 1, size=n)
    response_mask = np.arange(g)[None, :] < lengths[:, None]
    response_tokens = np.where(response_mask, rng.integers(3, 64, size=(n, g)), 0).astype(np.int32)
    return RolloutBatch(
        prompt_tokens=prompt_tokens,
        prompt_mask=prompt_mask,
        response_tokens=response_tokens,
        response_mask=response_mask,
        sampler_logprobs=np.where(response_mask, -rng.uniform(0.5, 4.0, size=(n, g)), 0.0).astype(
            np.float32
        ),
        rewards=rng.integers(0, 2, size=n).astype(np.float32),
        teacher_tokens=teacher_tokens,
        teacher_mask=teacher_mask,
        sample_mask=rng.uniform(size=n) < 0.75,
    )


def run(algorithm: str, mesh_shape: tuple[int, int, int], micro_batches: int = 1):
    """One step on a mesh of the first data*fsdp*tensor devices -> {leaf path: array, "loss"}."""
    devices = jax.devices()[: int(np.prod(mesh_shape))]
    mesh = sharding.make_mesh(sharding.MeshConfig(*mesh_shape), devices)
    params = init_params(MODEL, jax.random.PRNGKey(0))
    # A teacher that differs from the student, so the distillation loss is not ~0.
    teacher = jax.tree.map(lambda x: x * 1.1, params)
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=0), 10)
    config = StepConfig(
        algorithm=algorithm,
        loss=LossConfig(top_k=5),
        group_size=4,
        micro_batches=micro_batches,
        teacher_tau=0.05,
        loss_chunk=4,
    )
    state = init_train_state(params, optimizer, algorithm)
    if state.teacher_params is not None:
        state = state.replace(teacher_params=teacher)
    batch = random_batch(1)
    step = make_train_step(MODEL, config, optimizer, mesh, state, batch)
    state = jax.device_put(state, state_shardings(state, mesh))
    new_state, metrics = step(state, sharding.shard_batch(batch, mesh))
    flat = {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(
            (new_state.params, new_state.teacher_params)
        )[0]
    }
    flat["loss"] = np.asarray(metrics["train/loss"])
    return flat


def main(out: str, specs: list[str]) -> None:
    saved = {}
    for spec in specs:
        algorithm, mesh_text, *micro = spec.split(":")
        mesh_shape = tuple(int(x) for x in mesh_text.split(","))
        result = run(algorithm, mesh_shape, int(micro[0]) if micro else 1)
        print(spec, "loss", float(result["loss"]), flush=True)
        saved.update({f"{spec}/{key}": value for key, value in result.items()})
    np.savez(out, **saved)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
