"""CPU time of self-attention implementations on training-shaped inputs (SmolLM2-135M heads).

q [B, T, H, Dh], k/v [B, T, K, Dh] float32, a causal + left-padding mask; times the jit'd forward
and forward+backward of `transformer.attention` for each implementation that runs on this backend.
Writes benchmarks/results/attention.json.  Run: `python -m benchmarks.attention`.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import best_time, machine_description, write_result
from pmd_jax.model.transformer import attention


def make_inputs(batch: int, length: int, heads: int, kv_heads: int, head_dim: int, seed: int = 0):
    """(q, k, v, self_mask): random activations; rows left-padded by 0..length/4 tokens."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.float32)
    k, v = (
        jnp.asarray(rng.normal(size=(batch, length, kv_heads, head_dim)), jnp.float32)
        for _ in range(2)
    )
    pads = rng.integers(0, length // 4 + 1, size=batch)
    token_mask = jnp.asarray(np.arange(length)[None, :] >= pads[:, None])
    causal = jnp.tril(jnp.ones((length, length), bool))
    return q, k, v, causal[None] & token_mask[:, None, :]


def time_attention(impl: str, q, k, v, mask, repeats: int) -> dict:
    """Best seconds of the jit'd forward and forward+backward of `attention(impl=impl)`."""
    forward = jax.jit(lambda q, k, v, m: attention(q, k, v, m, impl=impl))
    train = jax.jit(
        jax.grad(
            lambda q, k, v, m: jnp.sum(attention(q, k, v, m, impl=impl).astype(jnp.float32) ** 2),
            argnums=(0, 1, 2),
        )
    )
    row = {}
    for name, fn in (("forward", forward), ("forward_backward", train)):
        jax.block_until_ready(fn(q, k, v, mask))  # compile + warm-up
        seconds, all_seconds = best_time(
            lambda fn=fn: jax.block_until_ready(fn(q, k, v, mask)), repeats
        )
        row[name] = {"seconds": seconds, "all_seconds": all_seconds}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impls", nargs="+", default=["naive", "xla"])
    args = parser.parse_args()
    q, k, v, mask = make_inputs(args.batch, args.length, heads=9, kv_heads=3, head_dim=64)
    results = {}
    for impl in args.impls:
        row = results[impl] = time_attention(impl, q, k, v, mask, args.repeats)
        print(
            f"[attention] {impl}: forward {row['forward']['seconds'] * 1e3:.1f} ms, "
            f"forward+backward {row['forward_backward']['seconds'] * 1e3:.1f} ms"
        )
    result = {
        "benchmark": "attention",
        "shape": {"batch": args.batch, "length": args.length, "heads": 9, "kv_heads": 3,
                  "head_dim": 64, "dtype": "float32"},
        "machine": machine_description(),
        "results": results,
    }  # fmt: skip
    print(f"[attention] wrote {write_result('attention', result)}")


if __name__ == "__main__":
    main()
