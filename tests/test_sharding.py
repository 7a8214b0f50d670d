"""Mesh shapes and partition rules."""

from __future__ import annotations

import jax
import pytest
from jax.sharding import PartitionSpec as P

from pmd_jax import sharding
from pmd_jax.model.config import ModelConfig
from pmd_jax.model.transformer import init_params
from pmd_jax.optimizer import OptimizerConfig, decay_mask, learning_rate_schedule


def test_mesh_config_fills_one_axis_and_names_bad_shapes():
    assert sharding.MeshConfig().shape(8) == (8, 1, 1)
    assert sharding.MeshConfig(data=2, fsdp=-1, tensor=2).shape(8) == (2, 2, 2)
    with pytest.raises(ValueError, match="needs 4 devices, have 8"):
        sharding.MeshConfig(2, 2, 1).shape(8)
    with pytest.raises(ValueError, match="at most one axis"):
        sharding.MeshConfig(-1, -1, 1).shape(8)
    with pytest.raises(ValueError, match="not divisible"):
        sharding.MeshConfig(3, -1, 1).shape(8)


_CONFIG = ModelConfig(
    architecture="llama",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    tie_embeddings=False,
)


class _FakeMesh:
    """Only `.shape` is read by the rules."""

    shape = {"data": 2, "fsdp": 2, "tensor": 2}


def test_partition_rules_by_parameter_path():
    mesh = _FakeMesh()
    assert sharding.param_spec("embed/embedding", (64, 32), mesh) == P("tensor", "fsdp")
    assert sharding.param_spec("layers/q_proj/kernel", (2, 32, 32), mesh) == P(
        None, "fsdp", "tensor"
    )
    assert sharding.param_spec("layers/down_proj/kernel", (2, 64, 32), mesh) == P(
        None, "tensor", "fsdp"
    )
    assert sharding.param_spec("layers/q_proj/bias", (2, 32), mesh) == P(None, "tensor")
    assert sharding.param_spec("layers/attn_norm/scale", (2, 32), mesh) == P()
    # Optimizer moments follow their parameter's rule (path suffix).
    assert sharding.param_spec("opt_state/0/mu/lm_head/kernel", (32, 64), mesh) == P(
        "fsdp", "tensor"
    )
    # An axis that does not divide its dimension is dropped (that dimension is replicated).
    assert sharding.param_spec("layers/k_proj/kernel", (2, 32, 3), mesh) == P(None, "fsdp")


def test_partition_report_lists_replicated_dimensions():
    config = _CONFIG.replace(vocab_size=63)
    params = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    notes = sharding.partition_report(params, _FakeMesh())
    assert notes == [
        "embed/embedding (63, 32): wanted P('tensor', 'fsdp'), using P(None, 'fsdp')",
        "lm_head/kernel (32, 63): wanted P('fsdp', 'tensor'), using P('fsdp',)",
    ]


def test_schedule_warms_up_linearly_then_holds_or_decays():
    constant = learning_rate_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=4), 20)
    assert [float(constant(s)) for s in (0, 2, 4, 10)] == [0.0, 0.5, 1.0, 1.0]
    cosine = learning_rate_schedule(
        OptimizerConfig(learning_rate=1.0, warmup_steps=4, schedule="cosine"), 14
    )
    assert float(cosine(4)) == 1.0 and abs(float(cosine(9)) - 0.5) < 1e-6
    assert float(cosine(14)) == 0.0


def test_weight_decay_applies_to_matrices_only():
    config = ModelConfig(
        architecture="llama",
        vocab_size=16,
        hidden_size=8,
        intermediate_size=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=4,
        tie_embeddings=False,
    )
    params = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    mask = decay_mask(params)
    assert mask["embed"]["embedding"] and mask["lm_head"]["kernel"]
    assert mask["layers"]["q_proj"]["kernel"]
    assert not mask["final_norm"]["scale"] and not mask["layers"]["attn_norm"]["scale"]


def test_sampling_layout_drops_fsdp_and_bytes_per_device_count_the_splits():
    params = jax.eval_shape(lambda: init_params(_CONFIG, jax.random.PRNGKey(0)))
    mesh = _FakeMesh()  # data 2, fsdp 2, tensor 2
    assert sharding.sampling_param_spec("layers/q_proj/kernel", (2, 32, 32), mesh) == P(
        None, None, "tensor"
    )
    assert sharding.sampling_param_spec("embed/embedding", (64, 32), mesh) == P("tensor")
    total = sum(x.size * 4 for x in jax.tree.leaves(params))
    norms = sum(
        x.size * 4
        for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
        if "norm" in sharding._path_name(path)
    )
    # Every matrix divides by fsdp x tensor = 4 in training and by tensor = 2 in sampling.
    assert sharding.bytes_per_device(params, mesh) == norms + (total - norms) // 4
    sampled = sharding.bytes_per_device(params, mesh, sharding.sampling_param_spec)
    assert sampled == norms + (total - norms) // 2
