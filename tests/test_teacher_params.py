"""Teacher parameters: exact EMA, frozen teacher at tau = 0, dtypes, trust-region logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pmd_jax.teacher_params import _ema, ema_update, trust_region_logits


def _tree(seed: int, dtype=jnp.float32) -> dict:
    rng = np.random.default_rng(seed)
    leaf = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
    return {"embed": {"embedding": leaf(11, 4)}, "layers": [leaf(4, 4), leaf(4)], "norm": leaf(4)}


def _numpy(tree) -> dict:
    return jax.tree.map(np.array, tree)  # a copy: np.asarray would pin the buffer (no donation)


def _float32_lerp_roundings(teacher: np.ndarray, student: np.ndarray, tau: float):
    """(1 - tau) t + tau s in float32: plain (three roundings) and both FMA contractions.

    XLA contracts a * t + b * s into fma(a, t, b * s) on CPU (one rounding fewer); the float64
    emulation is exact up to a double rounding that does not occur for the fixed seeds here.
    """
    b = np.float32(tau)
    a = np.float32(1) - b
    plain = a * teacher + b * student
    fma_teacher = (np.float64(a) * teacher + np.float64(b * student)).astype(np.float32)
    fma_student = (np.float64(a * teacher) + np.float64(b) * student).astype(np.float32)
    return plain, fma_teacher, fma_student


def test_ema_update_is_the_exact_float32_lerp():
    teacher, student, tau = _tree(0), _tree(1), 0.05
    teacher_before, student_np = _numpy(teacher), _numpy(student)
    updated = ema_update(teacher, student, tau)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(teacher))  # donated, not copied
    for got, t, s in zip(
        jax.tree.leaves(updated),
        jax.tree.leaves(teacher_before),
        jax.tree.leaves(student_np),
        strict=True,
    ):
        assert got.dtype == jnp.float32
        got = np.asarray(got)
        plain, fma_teacher, fma_student = _float32_lerp_roundings(t, s, tau)
        # bitwise: each element is the formula under one of the legal float32 evaluations
        assert np.all((got == plain) | (got == fma_teacher) | (got == fma_student))
        np.testing.assert_array_max_ulp(got, plain, maxulp=1)


def test_tau_zero_leaves_the_teacher_bit_identical():
    teacher = _tree(0)
    teacher["norm"] = teacher["norm"].at[0].set(-0.0)  # (1 - 0) * -0.0 + 0 * s would give +0.0
    before = _numpy(teacher)
    updated = ema_update(teacher, _tree(1), 0.0)
    for got, want in zip(jax.tree.leaves(updated), jax.tree.leaves(before), strict=True):
        assert np.asarray(got).tobytes() == want.tobytes()


def test_tau_one_copies_the_student_and_tau_is_not_a_recompile():
    student = _tree(1)
    updated = ema_update(_tree(0), student, 1.0)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), updated, student)
    compiles = _ema._cache_size()
    for tau in (0.01, 0.2, jnp.float32(0.3)):
        ema_update(_tree(0), student, tau)
    assert _ema._cache_size() == compiles


def test_bfloat16_teacher_stays_bfloat16_with_float32_arithmetic():
    teacher, student = _tree(0, jnp.bfloat16), _tree(1, jnp.float32)
    teacher_f32 = jax.tree.map(lambda x: np.asarray(x, np.float32), teacher)
    updated = ema_update(teacher, student, 0.05)
    for got, t, s in zip(
        jax.tree.leaves(updated),
        jax.tree.leaves(teacher_f32),
        jax.tree.leaves(_numpy(student)),
        strict=True,
    ):
        assert got.dtype == jnp.bfloat16
        candidates = [
            np.asarray(jnp.asarray(x).astype(jnp.bfloat16))
            for x in _float32_lerp_roundings(t, s, 0.05)
        ]
        assert np.all(np.logical_or.reduce([np.asarray(got) == c for c in candidates]))


def test_mismatched_trees_or_bad_tau_are_rejected_with_a_clear_error():
    teacher, student = _tree(0), _tree(1)
    with pytest.raises(ValueError, match="trees differ"):
        ema_update(teacher, {"embed": student["embed"]}, 0.1)
    student["norm"] = jnp.zeros(5)
    with pytest.raises(ValueError, match=r"\['norm'\].*\(4,\).*\(5,\)"):
        ema_update(teacher, student, 0.1)
    with pytest.raises(ValueError, match="tau"):
        ema_update(teacher, _tree(1), 1.5)


def test_trust_region_logits_lerp_and_pass_no_gradient():
    rng = np.random.default_rng(0)
    reference = jnp.asarray(rng.standard_normal((3, 7)), jnp.bfloat16)
    student = jnp.asarray(rng.standard_normal((3, 7)), jnp.float32)
    reference_f32 = np.asarray(reference, np.float32)
    np.testing.assert_array_equal(trust_region_logits(reference, student, 0.0), reference_f32)
    np.testing.assert_allclose(trust_region_logits(reference, student, 1.0), student, rtol=1e-6)
    np.testing.assert_allclose(
        trust_region_logits(reference, student, 0.25),
        0.75 * reference_f32 + 0.25 * np.asarray(student),
        rtol=1e-5,
        atol=1e-6,
    )
    grad = jax.grad(lambda s: jnp.sum(trust_region_logits(reference, s, 0.5)))(student)
    assert np.all(np.asarray(grad) == 0.0)
