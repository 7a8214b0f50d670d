"""Attention implementations (ModelConfig.attention_impl) against the naive reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pmd_jax.model.config import ModelConfig
from pmd_jax.model.transformer import attention, forward, init_params, splash_attention

CPU_IMPLS = ["xla"]  # cudnn needs a GPU, splash a TPU


def _inputs(batch, length, heads, kv_heads, head_dim, seed=0):
    """Random q, k, v and a causal mask with each row left-padded by a different amount."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(batch, length, kv_heads, head_dim)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(batch, length, kv_heads, head_dim)), jnp.float32)
    pads = np.arange(batch) * (length // (2 * batch))  # row 0 unpadded
    token_mask = jnp.asarray(np.arange(length)[None, :] >= pads[:, None])
    causal = jnp.tril(jnp.ones((length, length), bool))
    return q, k, v, causal[None] & token_mask[:, None, :]


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize(
    "batch,length,heads,kv_heads",
    [(3, 17, 4, 2), (2, 64, 9, 3)],  # prefill-like (odd T), training-like (SmolLM2 heads)
)
def test_attention_impl_matches_naive_with_padding_and_gqa(impl, batch, length, heads, kv_heads):
    q, k, v, mask = _inputs(batch, length, heads, kv_heads, head_dim=16)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

    def value_and_grads(impl):
        fn = lambda q, k, v: attention(q, k, v, mask, impl=impl)
        out, vjp = jax.vjp(jax.jit(fn), q, k, v)
        return out, vjp(cotangent)

    out, grads = value_and_grads(impl)
    ref_out, ref_grads = value_and_grads("naive")
    # Padded query rows see no key; both give them a uniform average, so compare every row.
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_transformer_forward_with_impl_matches_naive_logits(impl):
    config = ModelConfig(
        architecture="qwen3", vocab_size=97, hidden_size=64, intermediate_size=128,
        num_layers=2, num_heads=6, num_kv_heads=2, head_dim=16, qk_norm=True,
        attention_impl="naive",
    )  # fmt: skip
    params = init_params(config, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 97, size=(3, 12)), jnp.int32)
    token_mask = jnp.asarray(np.arange(12)[None, :] >= np.array([0, 3, 7])[:, None])
    logits = forward(params, config.replace(attention_impl=impl), tokens, token_mask)
    ref_logits = forward(params, config, tokens, token_mask)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl,backend", [("cudnn", "GPU"), ("splash", "TPU")])
def test_accelerator_impls_raise_clearly_elsewhere(impl, backend):
    if jax.default_backend() == backend.lower():
        pytest.skip(f"running on {backend}")
    q, k, v, mask = _inputs(1, 4, 2, 1, head_dim=8)
    with pytest.raises(ValueError, match=f"attention_impl='{impl}' needs a {backend}"):
        attention(q, k, v, mask, impl=impl)


def test_model_config_rejects_unknown_attention_impl():
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        ModelConfig(
            architecture="llama", vocab_size=8, hidden_size=8, intermediate_size=8,
            num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8, attention_impl="flash",
        )  # fmt: skip


def test_splash_kernel_in_interpret_mode_matches_naive_on_real_rows():
    pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention")
    q, k, v, mask = _inputs(2, 128, 6, 2, head_dim=64)
    out = jax.jit(splash_attention, static_argnames="interpret")(q, k, v, mask, interpret=True)
    ref_out = attention(q, k, v, mask)
    # Padded queries see only padded keys under segment ids (naive: a uniform average); unused.
    real_rows = np.asarray(mask[:, -1, :])
    assert (~real_rows).any()
    np.testing.assert_allclose(
        np.asarray(out)[real_rows], np.asarray(ref_out)[real_rows], atol=1e-5
    )


_SPLASH_ON_MESH = """
import jax, numpy as np
from pmd_jax import sharding
from pmd_jax.model.transformer import attention, splash_attention
from pmd_jax.platform import on_mesh
from test_attention import _inputs

q, k, v, mask = _inputs(4, 128, 4, 2, head_dim=64)
mesh = sharding.make_mesh(sharding.MeshConfig(2, 1, 2))

def run(q, k, v, mask):
    with on_mesh(mesh):
        return splash_attention(q, k, v, mask, interpret=True)

heads = sharding.NamedSharding(mesh, sharding.P(("data", "fsdp"), None, "tensor", None))
out = jax.jit(run, out_shardings=heads)(q, k, v, mask)
assert len(out.sharding.device_set) == 4, out.sharding
real = np.asarray(mask[:, -1, :])
diff = np.abs(np.asarray(out) - np.asarray(attention(q, k, v, mask)))[real].max()
print("max diff", diff)
assert diff < 1e-5, diff
"""


def test_splash_on_a_mesh_runs_one_kernel_per_device_and_matches_naive():
    """Rows over data, heads over tensor (2 x 2 CPU devices, interpret mode): XLA cannot
    partition the Mosaic kernel, so it runs under shard_map and must equal the reference."""
    import os
    import pathlib
    import subprocess
    import sys

    pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(__file__).parent), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", _SPLASH_ON_MESH], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max diff" in result.stdout
