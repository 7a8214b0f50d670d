"""Memory-key embeddings: mean pooling over real tokens, unit norm, padding invariance."""

import jax
import numpy as np

from pmd_jax.embeddings import embed_tokens
from pmd_jax.model.config import ModelConfig
from pmd_jax.model.transformer import forward, init_params
from pmd_jax.sampling import left_pad

CONFIG = ModelConfig(
    architecture="llama",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
)


def test_embedding_is_normalised_mean_of_hidden_states_and_ignores_padding():
    params = init_params(CONFIG, jax.random.PRNGKey(0))
    texts = [[5, 9, 2, 33], [7, 1], [12, 40, 41, 42, 43, 3]]
    padded = embed_tokens(params, CONFIG, *left_pad(texts, pad_id=0, length=8))
    wider = embed_tokens(params, CONFIG, *left_pad(texts, pad_id=0, length=16))
    np.testing.assert_allclose(padded, wider, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(padded), axis=-1), 1.0, rtol=1e-5)
    for row, ids in enumerate(texts):
        _, hidden = forward(
            params, CONFIG, np.asarray([ids]), np.ones((1, len(ids)), bool), return_hidden=True
        )
        mean = np.asarray(hidden[0], np.float64).mean(axis=0)
        np.testing.assert_allclose(padded[row], mean / np.linalg.norm(mean), atol=1e-5)


def test_all_padding_row_embeds_to_zeros():
    params = init_params(CONFIG, jax.random.PRNGKey(0))
    out = embed_tokens(params, CONFIG, *left_pad([[3, 4], []], pad_id=0, length=4))
    assert np.all(np.asarray(out[1]) == 0) and np.isfinite(np.asarray(out)).all()
