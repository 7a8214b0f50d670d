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


def test_an_old_checkpoint_with_the_frozen_memory_leaf_restores_without_it(tmp_path):
    """Before the RunPlan, MemoryState had a scalar `frozen` leaf; such checkpoints restore."""
    import flax.serialization

    memory_config = MemoryConfig(num_problems=3, embed_dim=4, behaviour_slots=5)
    memory = init_memory(memory_config)
    memory = memory.replace(behaviours=memory.behaviours.replace(alive=jnp.ones(5, bool)))
    old = {**flax.serialization.to_state_dict(memory), "frozen": jnp.asarray(True)}
    params, train = _trees(2.0)
    manager = checkpoint.manager(tmp_path, checkpoint.CheckpointConfig(async_save=False))
    checkpoint.save(manager, 2, params=params, train=train, memory=old, meta={"step": 2})
    manager.wait_until_finished()
    zeros = jax.tree.map(jnp.zeros_like, (params, train, init_memory(memory_config)))
    _, _, got, meta = checkpoint.restore(
        manager, None, params=zeros[0], train=zeros[1], memory=zeros[2]
    )
    assert type(got) is type(memory) and meta["step"] == 2
    for want, leaf in zip(jax.tree.leaves(memory), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(want))
    assert not (tmp_path / "2.corrupt").exists()
    manager.close()


def test_round_trip_restores_every_item_exactly(tmp_path):
    memory_config = MemoryConfig(num_problems=3, embed_dim=4, behaviour_slots=5)
    memory = init_memory(memory_config)
    memory = memory.replace(behaviours=memory.behaviours.replace(alive=jnp.ones(5, bool)))
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


def _two_steps(directory, make_trees=_trees):
    manager = checkpoint.manager(directory, checkpoint.CheckpointConfig(async_save=False))
    for step in (1, 2):
        params, train = make_trees(float(step))
        checkpoint.save(manager, step, params=params, train=train, memory=None, meta={"s": step})
    manager.close()


def _truncate_largest(directory):
    victim = max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])


def _big_trees(scale: float):
    """Random arrays large enough that their data file is the largest file of the item."""
    params = {"w": jax.random.normal(jax.random.PRNGKey(int(scale)), (64, 64)) * scale}
    return params, {"step": jnp.asarray(int(scale), jnp.int32)}


def test_a_truncated_newest_step_warns_is_kept_aside_and_the_previous_restores(tmp_path, caplog):
    _two_steps(tmp_path, _big_trees)
    _truncate_largest(tmp_path / "2" / "params")
    with pytest.raises(checkpoint.CheckpointError, match=f"{tmp_path}/2/params"):
        checkpoint.restore_params(tmp_path)
    manager = checkpoint.manager(tmp_path, checkpoint.CheckpointConfig(async_save=False))
    zeros = jax.tree.map(jnp.zeros_like, _big_trees(0.0))
    with caplog.at_level("WARNING"):
        params, _, _, meta = checkpoint.restore(
            manager, None, params=zeros[0], train=zeros[1], memory=None
        )
    assert meta == {"s": 1}
    np.testing.assert_array_equal(params["w"], _big_trees(1.0)[0]["w"])
    assert f"{tmp_path}/2 cannot be restored" in caplog.text
    assert "resuming from step 1" in caplog.text
    assert (tmp_path / "2.corrupt" / "params").is_dir()  # moved aside, not deleted
    assert manager.all_steps() == [1]  # so step 2 can be saved again
    params, train = _big_trees(2.0)
    checkpoint.save(manager, 2, params=params, train=train, memory=None, meta={"s": 2})
    manager.close()
    np.testing.assert_array_equal(checkpoint.restore_params(tmp_path)["w"], params["w"])


def test_a_deleted_file_in_the_newest_step_also_falls_back(tmp_path):
    _two_steps(tmp_path)
    (tmp_path / "2" / "train" / "manifest.ocdbt").unlink()
    manager = checkpoint.manager(tmp_path, checkpoint.CheckpointConfig(async_save=False))
    zeros = jax.tree.map(jnp.zeros_like, _trees(0.0))
    *_, meta = checkpoint.restore(manager, None, params=zeros[0], train=zeros[1], memory=None)
    assert meta == {"s": 1} and (tmp_path / "2.corrupt").is_dir()
    manager.close()


def test_when_no_step_restores_nothing_is_moved_and_every_step_is_named(tmp_path):
    _two_steps(tmp_path)
    manager = checkpoint.manager(tmp_path, checkpoint.CheckpointConfig(async_save=False))
    wrong = {"w": jnp.zeros((5, 5)), "extra": jnp.zeros(2)}  # a changed model, not damage
    with pytest.raises(checkpoint.CheckpointError, match=r"(?s)step 2: .*step 1: "):
        checkpoint.restore(manager, None, params=wrong, train=_trees(0.0)[1], memory=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]
    manager.close()
