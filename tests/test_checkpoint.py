"""Orbax checkpoints: exact round trip of every item, retention of last-K + best, params alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pmd_jax import checkpoint
from pmd_jax.memory import MemoryConfig, init_memory


def _trees(scale: float):
    params = {"w": jnp.arange(6.0).reshape(2, 3) * scale, "n": {"s": jnp.ones(3, jnp.bfloat16)}}
    train = {"step": jnp.asarray(int(scale), jnp.int32), "mu": (jnp.full(4, scale),)}
    return params, train


def test_round_trip_restores_every_item_exactly(tmp_path):
    memory_config = MemoryConfig(num_problems=3, embed_dim=4, behaviour_slots=5)
    memory = init_memory(memory_config)
    memory = memory.replace(frozen=jnp.asarray(True))
    params, train = _trees(3.0)
    meta = {"data": {"next_index": 12}, "rng": np.asarray([7, 9], np.uint32), "loss": np.float32(1)}
    manager = checkpoint.manager(tmp_path, checkpoint.CheckpointConfig(async_save=True))
    checkpoint.save(manager, 3, params=params, train=train, memory=memory, meta=meta)
    manager.wait_until_finished()
    zeros = jax.tree.map(jnp.zeros_like, (params, train, memory))
    got_params, got_train, got_memory, got_meta = checkpoint.restore(
        manager, None, params=zeros[0], train=zeros[1], memory=zeros[2]
    )
    for want, got in zip(
        jax.tree.leaves((params, train, memory)),
        jax.tree.leaves((got_params, got_train, got_memory)),
        strict=True,
    ):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert got_meta == {"data": {"next_index": 12}, "rng": [7, 9], "loss": 1.0}
    manager.close()


def test_keeps_the_last_k_and_the_best_by_eval_metric(tmp_path):
    config = checkpoint.CheckpointConfig(keep_last=2, keep_best=1, best_metric="eval/acc")
    manager = checkpoint.manager(tmp_path, config)
    evals = {1: 0.9, 3: 0.1}  # step 1 is the best; steps 2, 4, 5 were not evaluated
    for step in range(1, 6):
        params, train = _trees(float(step))
        metric = {"eval/acc": evals[step]} if step in evals else None
        checkpoint.save(
            manager, step, params=params, train=train, memory=None, meta={}, metrics=metric
        )
    manager.wait_until_finished()
    assert sorted(manager.all_steps()) == [1, 4, 5]
    manager.close()
    np.testing.assert_array_equal(checkpoint.restore_params(tmp_path)["w"], _trees(5.0)[0]["w"])
    np.testing.assert_array_equal(checkpoint.restore_params(tmp_path, 1)["w"], _trees(1.0)[0]["w"])
    np.testing.assert_array_equal(
        checkpoint.restore_params(tmp_path / "4")["w"], _trees(4.0)[0]["w"]
    )


def test_restore_params_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.restore_params(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no checkpoint steps"):
        checkpoint.restore_params(tmp_path)
    manager = checkpoint.manager(tmp_path / "run", checkpoint.CheckpointConfig(async_save=False))
    params, train = _trees(1.0)
    checkpoint.save(manager, 2, params=params, train=train, memory=None, meta={"a": 1})
    manager.close()
    with pytest.raises(FileNotFoundError, match=r"no step 7; have \[2\]"):
        checkpoint.restore_params(tmp_path / "run", 7)
    assert checkpoint.read_meta(tmp_path / "run") == {"a": 1}
