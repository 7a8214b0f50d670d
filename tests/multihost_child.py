"""A child of pmd_jax.launch for tests/test_multihost.py: `python -m multihost_child MODE DIR`.

Modes:
  sample DIR    join the run (2 processes x 2 devices), sample 8 prompts x 4 on the 4-device
                mesh (2, 2, 1), check the rollouts' fingerprints agree, and write
                DIR/sample_p<i>.npy (the tokens, whole on every host).
  planted DIR   every process holds the same memory-like pytree except process 1, whose
                experience tokens differ in one entry; `check_consistent` at step 3 must raise.
                Each process writes the error text to DIR/planted_p<i>.txt.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from pmd_jax import multihost, sharding
from pmd_jax.sampling import SampleConfig, left_pad, sample


def tiny_model():
    from pmd_jax.model.config import ModelConfig
    from pmd_jax.model.transformer import init_params

    config = ModelConfig(
        architecture="qwen3",
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        qk_norm=True,
    )
    return config, init_params(config, jax.random.PRNGKey(0))


def prompts():
    rng = np.random.default_rng(0)
    ids = [rng.integers(3, 128, size=int(rng.integers(3, 12))).tolist() for _ in range(8)]
    return left_pad(ids, 0, bucket=16)


SAMPLE_CONFIG = SampleConfig(max_new_tokens=10, temperature=1.0, num_samples=4, prefill_bucket=0)


def run_sample(out: pathlib.Path) -> None:
    config, params = tiny_model()
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2))
    tokens, mask = prompts()
    output = sample(
        sharding.shard_params(params, mesh),
        config,
        tokens,
        mask,
        jax.random.PRNGKey(7),
        SAMPLE_CONFIG,
        mesh=mesh,
    )
    host = sharding.to_host(output.tokens)
    multihost.check_consistent(1, {"rollouts": {"tokens": host}})
    np.save(out / f"sample_p{jax.process_index()}.npy", host)


def run_planted(out: pathlib.Path) -> None:
    memory = {
        "experience": {"tokens": np.arange(24, dtype=np.int32).reshape(4, 6)},
        "insight": {"tokens": np.ones((2, 3), np.int32)},
    }
    if jax.process_index() == 1:
        memory["experience"]["tokens"][2, 3] += 1
    try:
        multihost.check_consistent(3, {"memory": memory})
        message = "no error"
    except multihost.InconsistentHostsError as err:
        message = str(err)
    (out / f"planted_p{jax.process_index()}.txt").write_text(message)


def main() -> None:
    mode, out = sys.argv[1], pathlib.Path(sys.argv[2])
    multihost.initialize(sharding.MeshConfig())
    assert jax.process_count() == 2 and jax.device_count() == 4, (
        jax.process_count(),
        jax.device_count(),
    )
    {"sample": run_sample, "planted": run_planted}[mode](out)
    jnp.zeros(()).block_until_ready()


if __name__ == "__main__":
    main()
