"""The Pallas distillation-divergence kernel (interpret mode on CPU) against the pure-JAX reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pmd_jax.kernels.distill_divergence import pallas_topk_divergence

from pmd_jax.losses import LossConfig, self_distillation_loss_from_hidden, topk_divergence

# Logits ~ N(0, 2^2): the top-k mass stays well below 1. As the tail mass goes to 0, log(1 - p)
# amplifies 1-ulp differences of log Z in *both* implementations (the reference is no closer to
# float64 there), so a fixed 1e-5 would test float32 conditioning rather than the kernel.
LOGIT_SCALE = 2.0
BLOCK_ROWS, BLOCK_VOCAB = 16, 256

CASES = [
    # rows, vocab, top_k, alpha, temperature, dtype
    (37, 1000, 5, 0.5, 1.0, "float32"),  # rows and vocab not multiples of the blocks
    (64, 512, 1, 0.0, 0.7, "float32"),  # both multiples of the blocks
    (37, 1000, 20, 1.0, 1.0, "float32"),
    (37, 1000, 20, 0.5, 0.7, "bfloat16"),
    (64, 512, 5, 1.0, 1.0, "bfloat16"),
]


def _value_and_grads(fn, student, teacher, cotangent):
    """fn(student, teacher) -> [M]; returns (values [M], d<cotangent, fn>/d(student, teacher))."""
    values, vjp = jax.vjp(fn, student, teacher)
    return values, vjp(cotangent)


@pytest.mark.parametrize("rows,vocab,top_k,alpha,temperature,dtype", CASES)
def test_kernel_values_and_grads_match_reference(rows, vocab, top_k, alpha, temperature, dtype):
    rng = np.random.default_rng(rows + vocab + top_k)
    student = jnp.asarray(rng.normal(size=(rows, vocab)) * LOGIT_SCALE, dtype)
    teacher = jnp.asarray(rng.normal(size=(rows, vocab)) * LOGIT_SCALE, dtype)
    cotangent = jnp.asarray(rng.normal(size=(rows,)), jnp.float32)
    settings = dict(alpha=alpha, top_k=top_k, temperature=temperature, tail_epsilon=1e-6)

    def kernel(s, t):
        return pallas_topk_divergence(
            s, t, block_rows=BLOCK_ROWS, block_vocab=BLOCK_VOCAB, interpret=True, **settings
        )

    def reference(s, t):
        return topk_divergence(s, t, **settings)

    run = jax.jit(_value_and_grads, static_argnums=0)
    values, grads = run(kernel, student, teacher, cotangent)
    ref_values, ref_grads = run(reference, student, teacher, cotangent)

    assert values.dtype == jnp.float32 and values.shape == (rows,)
    # bf16 inputs upcast exactly, so the values keep the float32 tolerance.
    np.testing.assert_allclose(values, ref_values, rtol=1e-5, atol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert grad.dtype == jnp.dtype(dtype) and grad.shape == (rows, vocab)
        grad, ref_grad = np.asarray(grad, np.float32), np.asarray(ref_grad, np.float32)
        assert np.abs(ref_grad).max() > 0  # the teacher gradient is exercised too
        # float32: 1e-5. bfloat16: both round once to bf16 (8 mantissa bits), so allow one ulp
        # of the largest entry, 2^-7 relative.
        atol = 1e-5 if dtype == "float32" else 2.0**-7 * np.abs(ref_grad).max()
        np.testing.assert_allclose(
            grad, ref_grad, rtol=1e-5 if dtype == "float32" else 0, atol=atol
        )


def test_kernel_rejects_bad_shapes_and_top_k():
    logits = jnp.zeros((4, 10))
    with pytest.raises(ValueError, match="matching"):
        pallas_topk_divergence(logits, jnp.zeros((4, 11)), alpha=1.0, top_k=2)
    with pytest.raises(ValueError, match="top_k=10"):
        pallas_topk_divergence(logits, logits, alpha=1.0, top_k=10)


def test_loss_config_validates_divergence_impl():
    with pytest.raises(ValueError, match="divergence_impl='triton'"):
        LossConfig(divergence_impl="triton")
    with pytest.raises(ValueError, match="needs top_k"):
        LossConfig(divergence_impl="pallas", top_k=None)


def test_pallas_switch_matches_default_through_train_step_loss():
    """self_distillation_loss_from_hidden (the train step's entry) gives the same loss and grads."""
    n, t, d, v = 3, 10, 16, 300
    rng = np.random.default_rng(0)
    student_hidden = jnp.asarray(rng.normal(size=(n, t, d)), jnp.float32)
    teacher_hidden = jnp.asarray(rng.normal(size=(n, t, d)), jnp.float32)
    student_head = jnp.asarray(rng.normal(size=(d, v)) * 0.5, jnp.float32)
    teacher_head = jnp.asarray(rng.normal(size=(d, v)) * 0.5, jnp.float32)
    tokens = jnp.asarray(rng.integers(0, v, size=(n, t)), jnp.int32)
    response_mask = jnp.asarray(rng.random((n, t)) < 0.8)
    sample_mask = jnp.array([True, True, False])

    def loss_and_grads(config):
        def loss(s_hidden, s_head):
            return self_distillation_loss_from_hidden(
                s_hidden, teacher_hidden, s_head, teacher_head, tokens, response_mask,
                sample_mask, None, None, config, chunk=4,
            )  # fmt: skip

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
            student_hidden, student_head
        )

    base = LossConfig(top_k=7, alpha=0.5, temperature=0.9)
    (loss, metrics), grads = loss_and_grads(base)
    (kernel_loss, kernel_metrics), kernel_grads = loss_and_grads(
        LossConfig(top_k=7, alpha=0.5, temperature=0.9, divergence_impl="pallas")
    )
    assert float(loss) > 0
    np.testing.assert_allclose(kernel_loss, loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        kernel_metrics["distill/divergence"], metrics["distill/divergence"], rtol=1e-5
    )
    for kernel_grad, grad in zip(kernel_grads, grads, strict=True):
        np.testing.assert_allclose(kernel_grad, grad, rtol=1e-5, atol=1e-6)
