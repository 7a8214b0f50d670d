"""One decode step of the transformer over a per-layer KV cache, layers unrolled (the sampler's step).

Training and prefill run the scanned `Transformer` (one stacked [L, ...] array per weight). In a decode
step every weight is read for only N new tokens, and a scanned layer costs more than its matmuls:
each step XLA copies every layer's weights out of the stacked arrays (a dynamic slice) and
transposes each layer's cache slice for the attention dots. Profiled on CPU (SmolLM2-135M, 32 rows)
those copies took over a fifth of the op time of a decode step. Here:
- `decode_weights` lays the weights out once per sampling call, in the compute dtype: one entry
  per layer, with q/k/v (grouped by key/value head) and gate/up fused so each is one matmul, and,
  on a mesh, split over its tensor axis by `DECODE_SPECS`;
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
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from pmd_jax.model.config import ModelConfig, rope_inv_freq
from pmd_jax.model.transformer import NEG_INF, apply_rope, rms_norm
from pmd_jax.sharding import BATCH_AXES, constrain


class DecodeWeights(NamedTuple):
    """Weights laid out for decoding. embedding: [V, D]; layers: L dicts of per-layer arrays
    (qkv [D, K, G + 2, Dh]: for each key/value head its G query heads, then its key, then its
    value; o [K, G, Dh, D]; gate_up [D, 2, F]; down [F, D]; the norms' scales and the biases the
    config has, shaped like their kernels' outputs); final_norm: [D]. Grouping q/k/v by key/value
    head makes tensor parallelism a split of axis K (and gate_up/down of F) with no re-layout:
    `DECODE_SPECS`."""

    embedding: jax.Array
    layers: tuple[dict, ...]
    final_norm: jax.Array


# The sampling layout of each decode weight over the mesh's tensor axis (rows of the batch are
# split over (data, fsdp) instead; see sampling.py). An axis that does not divide its dimension is
# dropped (sharding.constrain). Column-parallel qkv / gate_up, row-parallel o / down: one
# all-reduce after attention and one after the MLP per layer, nothing gathered.
DECODE_SPECS = {
    "qkv": P(None, "tensor"),
    "qkv_bias": P("tensor"),
    "o": P("tensor"),
    "gate_up": P(None, None, "tensor"),
    "gate_up_bias": P(None, "tensor"),
    "down": P("tensor"),
}


class KVCache(NamedTuple):
    """keys: L arrays [N, K, Dh, S]; values: L arrays [N, K, S, Dh]; mask: [N, S] bool, True where
    a slot holds a token."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    mask: jax.Array


def decode_weights(params: dict, config: ModelConfig, mesh: Mesh | None = None) -> DecodeWeights:
    """Split the stacked layer weights per layer, group q/k/v by key/value head and fuse gate/up,
    and cast matmul weights and biases to the compute dtype (as nn.Dense does), once per call
    rather than per token. With a mesh, each array is constrained to its `DECODE_SPECS` layout."""
    dtype = jnp.dtype(config.dtype)
    stacked = params["layers"]
    d, kv, dh = config.hidden_size, config.num_kv_heads, config.head_dim
    g = config.num_heads // kv

    def grouped(kernels: list[jax.Array], heads: list[int], lead: tuple[int, ...]) -> jax.Array:
        """q/k/v kernels [..., heads * Dh] -> [..., K, G + 2, Dh] (query heads k-major)."""
        parts = [x.reshape(*lead, kv, n // kv, dh) for x, n in zip(kernels, heads, strict=True)]
        return jnp.concatenate(parts, axis=len(lead) + 1)

    def layer(i: int) -> dict:
        p = jax.tree_util.tree_map(lambda a: a[i], stacked)
        heads = [config.num_heads, kv, kv]
        names = ("q_proj", "k_proj", "v_proj")
        out = {
            "attn_norm": p["attn_norm"]["scale"],
            "qkv": grouped([p[n]["kernel"] for n in names], heads, (d,)),
            "o": p["o_proj"]["kernel"].reshape(kv, g, dh, d),
            "mlp_norm": p["mlp_norm"]["scale"],
            "gate_up": jnp.stack([p["gate_proj"]["kernel"], p["up_proj"]["kernel"]], 1),
            "down": p["down_proj"]["kernel"],
        }
        if config.qkv_bias:
            out["qkv_bias"] = grouped([p[n]["bias"] for n in names], heads, ())
        if config.o_bias:
            out["o_bias"] = p["o_proj"]["bias"]
        if config.mlp_bias:
            out["gate_up_bias"] = jnp.stack([p["gate_proj"]["bias"], p["up_proj"]["bias"]])
            out["down_bias"] = p["down_proj"]["bias"]
        if config.qk_norm:
            out["q_norm"], out["k_norm"] = p["q_norm"]["scale"], p["k_norm"]["scale"]
        return out

    def cast(name: str, array: jax.Array) -> jax.Array:
        array = array if name.endswith("norm") else array.astype(dtype)
        return constrain(array, mesh, DECODE_SPECS.get(name, P()))

    layers = tuple(
        {name: cast(name, array) for name, array in layer(i).items()}
        for i in range(config.num_layers)
    )
    embedding = constrain(params["embed"]["embedding"], mesh, P("tensor"))
    return DecodeWeights(embedding, layers, params["final_norm"]["scale"])


def cache_from_prefill(
    keys: jax.Array,
    values: jax.Array,
    prompt_mask: jax.Array,
    repeats: int,
    new_slots: int,
    mesh: Mesh | None = None,
) -> KVCache:
    """The decode cache from a prefill's keys/values [L, B, T, K, Dh] and prompt_mask [B, T].

    Each prompt's rows are repeated `repeats` times (row b * repeats + j; N = B * repeats) and
    `new_slots` empty slots follow the T prompt slots (S = T + new_slots). With a mesh, rows are
    split over (data, fsdp) and heads over tensor (a prompt's J rows stay on its device).
    """
    rows = keys.shape[1] * repeats

    def per_layer(stacked: jax.Array, layout: tuple[int, ...], slot_axis: int):
        pad = [(0, 0)] * 4
        pad[slot_axis] = (0, new_slots)
        return tuple(
            constrain(
                jnp.pad(
                    jnp.repeat(layer.transpose(layout), repeats, 0, total_repeat_length=rows), pad
                ),
                mesh,
                P(BATCH_AXES, "tensor"),
            )
            for layer in stacked  # [B, T, K, Dh]
        )

    mask = jnp.repeat(prompt_mask.astype(bool), repeats, 0, total_repeat_length=rows)
    return KVCache(
        keys=per_layer(keys, (0, 2, 3, 1), 3),  # [N, K, Dh, S]
        values=per_layer(values, (0, 2, 1, 3), 2),  # [N, K, S, Dh]
        mask=constrain(jnp.pad(mask, [(0, 0), (0, new_slots)]), mesh, P(BATCH_AXES)),
    )


def _dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, spec: str) -> jax.Array:
    """einsum(spec, x, kernel) (+ bias) in the kernel's dtype (the compute dtype), as flax's
    nn.Dense computes."""
    out = jnp.einsum(spec, x.astype(kernel.dtype), kernel)
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
    kv, dh = config.num_kv_heads, config.head_dim
    g = config.num_heads // kv
    normed = rms_norm(x, layer["attn_norm"], eps, dtype)
    qkv = _dense(normed, layer["qkv"], layer.get("qkv_bias"), "nd,dkjh->nkjh")  # [N, K, G+2, Dh]
    q, k, v = (
        qkv[:, :, :g],
        qkv[:, :, g : g + 1],
        qkv[:, :, g + 1],
    )  # [N,K,G,Dh] [N,K,1,Dh] [N,K,Dh]
    if config.qk_norm:
        q, k = rms_norm(q, layer["q_norm"], eps, dtype), rms_norm(k, layer["k_norm"], eps, dtype)
    head_positions = jnp.broadcast_to(positions[:, None], (n, kv))  # RoPE's [B, T] = [N, K]
    q = apply_rope(q, head_positions, inv_freq)
    k = apply_rope(k, head_positions, inv_freq)
    keys = jax.lax.dynamic_update_slice_in_dim(keys, k.reshape(n, kv, dh, 1), slot, axis=3)
    values = jax.lax.dynamic_update_slice_in_dim(values, v[:, :, None], slot, axis=2)

    q = q * jnp.asarray(dh**-0.5, q.dtype)
    scores = jnp.einsum("nkgd,nkds->nkgs", q, keys, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None, :], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    attn = jnp.einsum("nkgs,nksd->nkgd", probs, values)
    x = x + _dense(attn, layer["o"], layer.get("o_bias"), "nkgd,kgde->ne")

    normed = rms_norm(x, layer["mlp_norm"], eps, dtype)
    gate_up = _dense(normed, layer["gate_up"], layer.get("gate_up_bias"), "nd,dtf->ntf")
    hidden = nn.silu(gate_up[:, 0]) * gate_up[:, 1]
    x = x + _dense(hidden, layer["down"], layer.get("down_bias"), "nf,fd->nd")
    return x, keys, values


def _window(mask: jax.Array, slot: jax.Array, config: ModelConfig) -> jax.Array:
    """[N, S] bool: the slots within the sliding window of the token at `slot`, counted in real
    tokens as `transformer.window_mask` counts them (mask [N, S], the slot included)."""
    real_index = jnp.cumsum(mask.astype(jnp.int32), axis=-1)  # [N, S]
    query_index = jax.lax.dynamic_slice_in_dim(real_index, slot, 1, axis=1)  # [N, 1]
    return query_index - real_index < config.sliding_window


def decode_step(
    weights: DecodeWeights,
    config: ModelConfig,
    cache: KVCache,
    tokens: jax.Array,
    positions: jax.Array,
    slot: jax.Array,
) -> tuple[jax.Array, KVCache]:
    """Run tokens [N] at positions [N] through every layer, writing their keys/values into cache
    slot `slot` (scalar int). Returns (final-norm hidden states [N, D], the updated cache).
    Layers with a sliding window (ModelConfig.window_layers) attend to the cache slots within
    it; the cache itself stays full-length."""
    dtype = jnp.dtype(config.dtype)
    rows = tokens.shape[0]
    mask = jax.lax.dynamic_update_slice_in_dim(cache.mask, jnp.ones((rows, 1), bool), slot, axis=1)
    window = mask if config.sliding_window is None else mask & _window(mask, slot, config)
    x = jnp.take(weights.embedding, tokens, axis=0).astype(dtype)  # cast the rows, not [V, D]
    inv_freq = jnp.asarray(rope_inv_freq(config))
    new_keys, new_values = [], []
    layers = zip(weights.layers, cache.keys, cache.values, config.window_layers, strict=True)
    for layer, keys, values, windowed in layers:
        x, keys, values = _layer_step(
            layer, config, x, positions, keys, values, window if windowed else mask, slot, inv_freq
        )
        new_keys.append(keys)
        new_values.append(values)
    hidden = rms_norm(x, weights.final_norm, config.rms_norm_eps, dtype)
    return hidden, KVCache(tuple(new_keys), tuple(new_values), mask)
