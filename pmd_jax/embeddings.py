"""Text embeddings for memory keys: L2-normalised mean-pooled final hidden states of the policy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from pmd_jax import sharding
from pmd_jax.model.config import ModelConfig
from pmd_jax.model.transformer import Transformer, positions_from_mask
from pmd_jax.platform import on_mesh


def embed_tokens(
    params: dict,
    config: ModelConfig,
    tokens: jax.Array,
    token_mask: jax.Array,
    mesh: Mesh | None = None,
) -> jax.Array:
    """tokens, token_mask: [B, T] (left-padded) -> unit-norm embeddings [B, D] float32.

    Mean over the real tokens of the final-norm hidden states; an all-padding row gives zeros.
    mesh: rows split over (data, fsdp) (padded to a multiple, dropped), weights as given (e.g. the
    training layout); the result is gathered whole to every host (numpy). Without: one device.
    """
    if mesh is None:
        return embed_program(params, config, tokens, token_mask, None)
    tokens, token_mask = np.asarray(tokens), np.asarray(token_mask)
    rows = tokens.shape[0]
    padded = -(-rows // sharding.batch_divisor(mesh)) * sharding.batch_divisor(mesh)
    fill = [(0, padded - rows), (0, 0)]
    tokens, token_mask = np.pad(tokens, fill), np.pad(token_mask, fill)
    placed = sharding.put_rows((tokens, token_mask), mesh)
    return sharding.to_host(embed_program(params, config, *placed, mesh))[:rows]


@functools.partial(jax.jit, static_argnames=("config", "mesh"))
def embed_program(
    params: dict, config: ModelConfig, tokens: jax.Array, token_mask: jax.Array, mesh=None
) -> jax.Array:
    """The jit'd `embed_tokens` (rows already a multiple of data x fsdp on a mesh)."""
    tokens = sharding.constrain(tokens, mesh, sharding.rows_spec(2))
    token_mask = sharding.constrain(token_mask.astype(bool), mesh, sharding.rows_spec(2))
    with on_mesh(mesh):
        hidden, _ = Transformer(config).apply(
            {"params": params}, tokens, positions_from_mask(token_mask), token_mask
        )
    weights = token_mask.astype(jnp.float32)[..., None]
    pooled = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
    pooled = pooled / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    return sharding.constrain(pooled / jnp.maximum(norm, 1e-12), mesh, sharding.rows_spec(2))


def embed_texts(
    params: dict,
    config: ModelConfig,
    tokenizer,
    texts: list[str],
    *,
    batch_size: int = 32,
    max_tokens: int = 256,
    bucket: int = 64,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """Embed plain texts (truncated to `max_tokens`) in fixed-size batches -> [len(texts), D]
    float32 numpy (on the host)."""
    from pmd_jax.sampling import left_pad

    chunks = []
    for start in range(0, len(texts), batch_size):
        ids = [tokenizer.encode(text)[:max_tokens] for text in texts[start : start + batch_size]]
        ids += [[]] * (batch_size - len(ids))  # constant batch shape: one compile
        tokens, mask = left_pad(ids, tokenizer.pad_id, bucket=bucket)
        # Cut on the host: an on-device slice would compile once per short-batch size.
        embedded = embed_tokens(params, config, tokens, mask, mesh)
        chunks.append(np.asarray(embedded)[: len(texts) - start])
    if not chunks:
        return np.zeros((0, config.hidden_size), np.float32)
    # Host array: a device copy of each new row count would be one more compiled program.
    return np.concatenate(chunks, axis=0)
