"""One decode step of the transformer over a per-layer KV cache, layers unrolled (the sampler's step).

Training and prefill run the scanned `Transformer` (one stacked [L, ...] array per weight). In a decode
step every weight is read for only N new tokens, and a scanned layer costs more than its matmuls:
each step XLA copies every layer's weights out of the stacked arrays (a dynamic slice) and
transposes each layer's cache slice for the attention dots. Profiled on CPU (SmolLM2-135M, 32 rows)
those copies took over a fifth of the op time of a decode step. Here:
- `decode_weights` lays the weights out once per sampling call, in the compute dtype: one entry
  per layer, with q/k/v and gate/up concatenated so each is one matmul;
- the layers are a Python loop (unrolled; compile time grows with depth, run time does not pay
  for slicing);
- each layer's cache is laid out for its attention dot: keys [N, K, Dh, S] (q . k contracts Dh
  against the rows of a [Dh, S] matrix: faster on CPU than keys [N, K, S, Dh]; measured 2-4x with
  the CPU flag of 2026-11-25, 1.4-1.8x with XLA's defaults on 2026-12-07),
  values [N, K, S, Dh]; the new token's keys/values are written into slot `slot` in place before
  attending.
The arithmetic is the same as `Block` (tests/test_sampling.py checks greedy decoding against full
recomputation for every architecture option). Shapes: N rows, S cache slots, D width, H query heads,
K key/value heads, Dh head width, F MLP width, V vocabulary, L layers.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pmd_jax.model.config import ModelConfig, rope_inv_freq
from pmd_jax.model.transformer import NEG_INF, apply_rope, rms_norm


class DecodeWeights(NamedTuple):
    """Weights laid out for decoding. embedding: [V, D]; layers: L dicts of per-layer arrays
    (qkv [D, (H + 2K) Dh], o [H Dh, D], gate_up [D, 2F], down [F, D], the norms' scales and the
    biases the config has); final_norm: [D]."""

    embedding: jax.Array
    layers: tuple[dict, ...]
    final_norm: jax.Array


class KVCache(NamedTuple):
    """keys: L arrays [N, K, Dh, S]; values: L arrays [N, K, S, Dh]; mask: [N, S] bool, True where
    a slot holds a token."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    mask: jax.Array


def decode_weights(params: dict, config: ModelConfig) -> DecodeWeights:
    """Split the stacked layer weights per layer, fuse q/k/v and gate/up, and cast matmul weights
    and biases to the compute dtype (as nn.Dense does), once per call rather than per token."""
    dtype = jnp.dtype(config.dtype)
    stacked = params["layers"]

    def layer(i: int) -> dict:
        p = jax.tree_util.tree_map(lambda a: a[i], stacked)
        out = {
            "attn_norm": p["attn_norm"]["scale"],
            "qkv": jnp.concatenate([p[n]["kernel"] for n in ("q_proj", "k_proj", "v_proj")], 1),
            "o": p["o_proj"]["kernel"],
            "mlp_norm": p["mlp_norm"]["scale"],
            "gate_up": jnp.concatenate([p["gate_proj"]["kernel"], p["up_proj"]["kernel"]], 1),
            "down": p["down_proj"]["kernel"],
        }
        if config.qkv_bias:
            out["qkv_bias"] = jnp.concatenate(
                [p[n]["bias"] for n in ("q_proj", "k_proj", "v_proj")]
            )
        if config.o_bias:
            out["o_bias"] = p["o_proj"]["bias"]
        if config.mlp_bias:
            out["gate_up_bias"] = jnp.concatenate([p["gate_proj"]["bias"], p["up_proj"]["bias"]])
            out["down_bias"] = p["down_proj"]["bias"]
        if config.qk_norm:
            out["q_norm"], out["k_norm"] = p["q_norm"]["scale"], p["k_norm"]["scale"]
        return out

    def cast(name: str, array: jax.Array) -> jax.Array:
        return array if name.endswith("norm") else array.astype(dtype)

    layers = tuple(
        {name: cast(name, array) for name, array in layer(i).items()}
        for i in range(config.num_layers)
    )
    return DecodeWeights(params["embed"]["embedding"], layers, params["final_norm"]["scale"])


def cache_from_prefill(
    keys: jax.Array, values: jax.Array, prompt_mask: jax.Array, repeats: int, new_slots: int
) -> KVCache:
    """The decode cache from a prefill's keys/values [L, B, T, K, Dh] and prompt_mask [B, T].

    Each prompt's rows are repeated `repeats` times (row b * repeats + j; N = B * repeats) and
    `new_slots` empty slots follow the T prompt slots (S = T + new_slots).
    """
    rows = keys.shape[1] * repeats

    def per_layer(stacked: jax.Array, layout: tuple[int, ...], slot_axis: int):
        pad = [(0, 0)] * 4
        pad[slot_axis] = (0, new_slots)
        return tuple(
            jnp.pad(jnp.repeat(layer.transpose(layout), repeats, 0, total_repeat_length=rows), pad)
            for layer in stacked  # [B, T, K, Dh]
        )

    mask = jnp.repeat(prompt_mask.astype(bool), repeats, 0, total_repeat_length=rows)
    return KVCache(
        keys=per_layer(keys, (0, 2, 3, 1), 3),  # [N, K, Dh, S]
        values=per_layer(values, (0, 2, 1, 3), 2),  # [N, K, S, Dh]
        mask=jnp.pad(mask, [(0, 0), (0, new_slots)]),
    )


def _dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """x @ kernel (+ bias) in the kernel's dtype (the compute dtype), as flax's nn.Dense computes."""
    out = jnp.dot(x.astype(kernel.dtype), kernel)
    return out if bias is None else out + bias


def _layer_step(
    layer: dict,
    config: ModelConfig,
    x: jax.Array,
    positions: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    slot: jax.Array,
    inv_freq: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One layer for one new token per row. x: [N, D]; positions: [N]; keys: [N, K, Dh, S];
    values: [N, K, S, Dh]; mask: [N, S] (slot included); inv_freq: [Dh // 2] (RoPE).
    Returns (x' [N, D], keys, values with the token at `slot`)."""
    dtype, eps = jnp.dtype(config.dtype), config.rms_norm_eps
    n = x.shape[0]
    h, kv, dh = config.num_heads, config.num_kv_heads, config.head_dim
    qkv = _dense(rms_norm(x, layer["attn_norm"], eps, dtype), layer["qkv"], layer.get("qkv_bias"))
    q = qkv[:, : h * dh].reshape(n, 1, h, dh)
    k = qkv[:, h * dh : (h + kv) * dh].reshape(n, 1, kv, dh)
    v = qkv[:, (h + kv) * dh :].reshape(n, kv, 1, dh)
    if config.qk_norm:
        q, k = rms_norm(q, layer["q_norm"], eps, dtype), rms_norm(k, layer["k_norm"], eps, dtype)
    q = apply_rope(q, positions[:, None], inv_freq)
    k = apply_rope(k, positions[:, None], inv_freq)
    keys = jax.lax.dynamic_update_slice_in_dim(keys, k.reshape(n, kv, dh, 1), slot, axis=3)
    values = jax.lax.dynamic_update_slice_in_dim(values, v, slot, axis=2)

    q = q.reshape(n, kv, h // kv, dh) * jnp.asarray(dh**-0.5, q.dtype)
    scores = jnp.einsum("nkgd,nkds->nkgs", q, keys, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None, :], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    attn = jnp.einsum("nkgs,nksd->nkgd", probs, values).reshape(n, h * dh)
    x = x + _dense(attn, layer["o"], layer.get("o_bias"))

    gate_up = _dense(
        rms_norm(x, layer["mlp_norm"], eps, dtype),
        layer["gate_up"],
        layer.get("gate_up_bias"),
    )
    gate, up = jnp.split(gate_up, 2, axis=-1)
    x = x + _dense(nn.silu(gate) * up, layer["down"], layer.get("down_bias"))
    return x, keys, values


def decode_step(
    weights: DecodeWeights,
    config: ModelConfig,
    cache: KVCache,
    tokens: jax.Array,
    positions: jax.Array,
    slot: jax.Array,
) -> tuple[jax.Array, KVCache]:
    """Run tokens [N] at positions [N] through every layer, writing their keys/values into cache
    slot `slot` (scalar int). Returns (final-norm hidden states [N, D], the updated cache)."""
    dtype = jnp.dtype(config.dtype)
    rows = tokens.shape[0]
    mask = jax.lax.dynamic_update_slice_in_dim(cache.mask, jnp.ones((rows, 1), bool), slot, axis=1)
    x = jnp.take(weights.embedding, tokens, axis=0).astype(dtype)  # cast the rows, not [V, D]
    inv_freq = jnp.asarray(rope_inv_freq(config))
    new_keys, new_values = [], []
    for layer, keys, values in zip(weights.layers, cache.keys, cache.values, strict=True):
        x, keys, values = _layer_step(
            layer, config, x, positions, keys, values, mask, slot, inv_freq
        )
        new_keys.append(keys)
        new_values.append(values)
    hidden = rms_norm(x, weights.final_norm, config.rms_norm_eps, dtype)
    return hidden, KVCache(tuple(new_keys), tuple(new_values), mask)
