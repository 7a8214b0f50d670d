"""Text embeddings for memory keys: L2-normalised mean-pooled final hidden states of the policy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pmd_jax.model.config import ModelConfig
from pmd_jax.model.transformer import Transformer, positions_from_mask


@functools.partial(jax.jit, static_argnames=("config",))
def embed_tokens(
    params: dict, config: ModelConfig, tokens: jax.Array, token_mask: jax.Array
) -> jax.Array:
    """tokens, token_mask: [B, T] (left-padded) -> unit-norm embeddings [B, D] float32.

    Mean over the real tokens of the final-norm hidden states; an all-padding row gives zeros.
    """
    token_mask = token_mask.astype(bool)
    hidden, _ = Transformer(config).apply(
        {"params": params}, tokens, positions_from_mask(token_mask), token_mask
    )
    weights = token_mask.astype(jnp.float32)[..., None]
    pooled = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
    pooled = pooled / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    return pooled / jnp.maximum(norm, 1e-12)


def embed_texts(
    params: dict,
    config: ModelConfig,
    tokenizer,
    texts: list[str],
    *,
    batch_size: int = 32,
    max_tokens: int = 256,
    bucket: int = 64,
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
        chunks.append(np.asarray(embed_tokens(params, config, tokens, mask))[: len(texts) - start])
    if not chunks:
        return np.zeros((0, config.hidden_size), np.float32)
    # Host array: a device copy of each new row count would be one more compiled program.
    return np.concatenate(chunks, axis=0)
