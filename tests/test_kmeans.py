"""Spherical k-means: parity with a numpy reference from the same k-means++ draws, blob recovery,
empty clusters keep their centroid."""

import jax
import numpy as np
import pytest

from pmd_jax.memory.kmeans import kmeans, kmeans_plus_plus


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _reference_seeds(points, num_clusters, uniforms):
    """k-means++ on 1 - cos with the given uniforms (module doc of kmeans.py), numpy float32."""
    num_points = len(points)
    indices = [min(int(np.floor(uniforms[0] * num_points)), num_points - 1)]
    best = points @ points[indices[0]]
    for k in range(1, num_clusters):
        weights = np.maximum(1.0 - best, 0.0).astype(np.float32)
        if weights.sum() <= 0:
            weights = np.ones_like(weights)
        cumulative = np.cumsum(weights, dtype=np.float32)
        chosen = min(int(np.sum(cumulative <= uniforms[k] * cumulative[-1])), num_points - 1)
        indices.append(chosen)
        best = np.maximum(best, points @ points[chosen])
    return np.array(indices)


def _reference_kmeans(points, centroids, num_iters):
    """Plain Lloyd steps on cosine: argmax assignment, normalised sums, empty keeps old."""
    centroids = centroids.copy()
    for _ in range(num_iters):
        assignment = np.argmax(points @ centroids.T, axis=1)
        for k in range(len(centroids)):
            members = points[assignment == k]
            if len(members):
                total = members.astype(np.float64).sum(axis=0)
                centroids[k] = total / np.linalg.norm(total)
    return centroids, np.argmax(points @ centroids.T, axis=1)


@pytest.mark.parametrize("seed", range(4))
def test_kmeans_matches_numpy_reference_with_same_init(seed):
    data = np.random.default_rng(seed)
    points = _unit(data.normal(size=(60, 8)).astype(np.float32))
    rng = jax.random.PRNGKey(seed)
    uniforms = np.asarray(jax.random.uniform(rng, (5,)))
    seeds = _reference_seeds(points, 5, uniforms)
    np.testing.assert_array_equal(np.asarray(kmeans_plus_plus(points, 5, rng)), seeds)
    assert len(set(seeds.tolist())) == 5

    centroids, assignment = kmeans(points, 5, rng, num_iters=10)
    ref_centroids, ref_assignment = _reference_kmeans(points, points[seeds], 10)
    np.testing.assert_array_equal(np.asarray(assignment), ref_assignment)
    np.testing.assert_allclose(np.asarray(centroids), ref_centroids, atol=1e-5)


def test_kmeans_is_deterministic_and_rng_dependent():
    points = _unit(np.random.default_rng(9).normal(size=(60, 8)).astype(np.float32))
    first = kmeans(points, 5, jax.random.PRNGKey(1), num_iters=10)  # shapes as above: no compile
    again = kmeans(points, 5, jax.random.PRNGKey(1), num_iters=10)
    np.testing.assert_array_equal(np.asarray(first[1]), np.asarray(again[1]))
    np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(again[0]))
    seeds = [
        tuple(np.asarray(kmeans_plus_plus(points, 5, jax.random.PRNGKey(s)))) for s in range(5)
    ]
    assert len(set(seeds)) > 1


def test_kmeans_recovers_separable_blobs():
    data = np.random.default_rng(3)
    directions = np.eye(16, dtype=np.float32)[:4]
    labels = np.repeat(np.arange(4), 25)
    points = _unit(directions[labels] + 0.05 * data.normal(size=(100, 16)).astype(np.float32))
    _, assignment = kmeans(points, 4, jax.random.PRNGKey(0))
    assignment = np.asarray(assignment)
    mapping = {label: set(assignment[labels == label].tolist()) for label in range(4)}
    assert all(len(clusters) == 1 for clusters in mapping.values())
    assert len({next(iter(c)) for c in mapping.values()}) == 4


def test_empty_cluster_keeps_its_centroid():
    points = _unit(np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32) + [3, 0, 0, 0])
    init = np.stack([_unit(points.mean(0)), np.array([-1.0, 0, 0, 0], np.float32)])
    centroids, assignment = kmeans(points, 2, jax.random.PRNGKey(0), init_centroids=init)
    assert np.all(np.asarray(assignment) == 0)
    np.testing.assert_array_equal(np.asarray(centroids)[1], init[1])


def test_duplicate_points_fewer_than_clusters_do_not_fail():
    points = np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (5, 1))
    centroids, assignment = kmeans(points, 3, jax.random.PRNGKey(0))
    assert np.all(np.isfinite(np.asarray(centroids)))
    assert np.all(np.asarray(assignment) == 0)


def test_kmeans_rejects_fewer_points_than_clusters():
    with pytest.raises(ValueError, match="3 points < num_clusters=4"):
        kmeans(np.eye(3, dtype=np.float32), 4, jax.random.PRNGKey(0))
