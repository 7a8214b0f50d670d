"""Spherical (cosine) k-means in JAX, for clustering training-question embeddings.

Points are unit vectors (normalised on entry); a centroid is the normalised sum of its members,
a point goes to the centroid of highest cosine similarity (ties to the lower cluster index).

Init, k-means++ on the cosine distance 1 - cos (for unit vectors half the squared Euclidean
distance, so this is ordinary k-means++): draw u [K] uniform from `rng`; the first centroid is
point floor(u_0 * N); centroid k is the point where the cumulative sum of the weights
w_i = max(0, 1 - max_j cos(x_i, c_j)) first exceeds u_k * sum(w). When every weight is zero
(fewer distinct points than K) the weights become uniform, so the init never fails; the
duplicate centroids then leave clusters empty.

Empty clusters keep their previous centroid (deterministic, no re-seeding), so cluster ids stay
stable over iterations; an empty cluster has no member in the returned assignment.

`kmeans` runs exactly `num_iters` Lloyd steps (no early exit: the same work for every input) and
returns the assignment to the final centroids. Pure and deterministic for a given rng. Passing
`init_centroids` skips k-means++ (a warm start that keeps cluster ids stable across calls).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pmd_jax.memory.state import unit


def _cos(points_ND: jax.Array, centroids_KD: jax.Array) -> jax.Array:
    # Full float32 precision: assignments compare near-equal similarities.
    return jnp.matmul(points_ND, centroids_KD.T, precision=lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=("num_clusters",))
def kmeans_plus_plus(points: jax.Array, num_clusters: int, rng: jax.Array) -> jax.Array:
    """k-means++ seeds (rule in the module doc). points: [N, D] unit -> centroid indices [K] int32."""
    points = jnp.asarray(points, jnp.float32)
    num_points = points.shape[0]
    uniforms = jax.random.uniform(rng, (num_clusters,), jnp.float32)
    first = jnp.minimum(jnp.floor(uniforms[0] * num_points), num_points - 1).astype(jnp.int32)
    indices = jnp.zeros((num_clusters,), jnp.int32).at[0].set(first)
    best_cos = _cos(points, points[first][None])[:, 0]

    def pick(k, carry):
        indices, best_cos = carry
        weights = jnp.maximum(1.0 - best_cos, 0.0)
        weights = jnp.where(jnp.sum(weights) > 0, weights, jnp.ones_like(weights))
        cumulative = jnp.cumsum(weights)
        chosen = jnp.sum(cumulative <= uniforms[k] * cumulative[-1]).astype(jnp.int32)
        chosen = jnp.minimum(chosen, num_points - 1)
        best_cos = jnp.maximum(best_cos, _cos(points, points[chosen][None])[:, 0])
        return indices.at[k].set(chosen), best_cos

    indices, _ = lax.fori_loop(1, num_clusters, pick, (indices, best_cos))
    return indices


@functools.partial(jax.jit, static_argnames=("num_clusters",))
def seed_centroids(points: jax.Array, num_clusters: int, rng: jax.Array) -> jax.Array:
    """k-means++ initial centroids [K, D] (unit) of points [N, D]: what `kmeans` starts from when
    given no init_centroids. Passing them explicitly keeps every round one compiled program."""
    points = unit(jnp.asarray(points, jnp.float32))
    return points[kmeans_plus_plus(points, num_clusters, rng)]


def assign(points: jax.Array, centroids: jax.Array) -> jax.Array:
    """points [N, D], centroids [K, D] -> cluster of highest cosine per point [N] int32."""
    return jnp.argmax(_cos(points, centroids), axis=1).astype(jnp.int32)


def update_centroids(points: jax.Array, assignment: jax.Array, centroids: jax.Array) -> jax.Array:
    """Normalised member sums [K, D]; a cluster with no member (or a zero sum) keeps its centroid."""
    num_clusters = centroids.shape[0]
    one_hot = jax.nn.one_hot(assignment, num_clusters, dtype=jnp.float32)  # [N, K]
    sums = jnp.matmul(one_hot.T, points, precision=lax.Precision.HIGHEST)  # [K, D]
    norms = jnp.linalg.norm(sums, axis=1, keepdims=True)
    keep = (jnp.sum(one_hot, axis=0)[:, None] == 0) | (norms <= 1e-12)
    return jnp.where(keep, centroids, sums / jnp.maximum(norms, 1e-12))


@functools.partial(jax.jit, static_argnames=("num_clusters", "num_iters"))
def kmeans(
    points: jax.Array,
    num_clusters: int,
    rng: jax.Array,
    num_iters: int = 20,
    init_centroids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Spherical k-means. points: [N, D] (normalised here), N >= K; init_centroids: [K, D] or
    None for k-means++ from `rng` -> (centroids [K, D] unit float32, assignment [N] int32)."""
    num_points = points.shape[0]
    if num_points < num_clusters:
        raise ValueError(f"kmeans: {num_points} points < num_clusters={num_clusters}")
    points = unit(points)
    if init_centroids is None:
        centroids = points[kmeans_plus_plus(points, num_clusters, rng)]
    else:
        if init_centroids.shape != (num_clusters, points.shape[1]):
            raise ValueError(
                f"kmeans: init_centroids shape {init_centroids.shape} != "
                f"{(num_clusters, points.shape[1])}"
            )
        centroids = unit(init_centroids)

    def step(_, centroids):
        return update_centroids(points, assign(points, centroids), centroids)

    centroids = lax.fori_loop(0, num_iters, step, centroids)
    return centroids, assign(points, centroids)
