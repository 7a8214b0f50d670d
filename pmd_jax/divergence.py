"""The divergence between two distributions given as log-probs, and the tail bucket of a top-k
(METHOD section 6). Shared by the pure-JAX reference (`pmd_jax.losses.topk_divergence`) and the
Pallas kernel (`pmd_jax.kernels.distill_divergence`), so both compute one formula and neither
imports the other."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["divergence_of_logprobs", "with_tail"]


def _log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2."""
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def divergence_of_logprobs(
    student_logp: jax.Array, teacher_logp: jax.Array, alpha: float
) -> jax.Array:
    """Divergence of two distributions given as log-probs [M, K] -> [M] (METHOD section 6)."""
    student_p = jnp.exp(student_logp)
    teacher_p = jnp.exp(teacher_logp)
    if alpha == 0.0:
        return jnp.sum(teacher_p * (teacher_logp - student_logp), axis=-1)
    if alpha == 1.0:
        return jnp.sum(student_p * (student_logp - teacher_logp), axis=-1)
    mixture_logp = jnp.logaddexp(
        student_logp + math.log(1.0 - alpha), teacher_logp + math.log(alpha)
    )
    student_kl = jnp.sum(student_p * (student_logp - mixture_logp), axis=-1)
    teacher_kl = jnp.sum(teacher_p * (teacher_logp - mixture_logp), axis=-1)
    return (1.0 - alpha) * student_kl + alpha * teacher_kl


def with_tail(topk_logp: jax.Array, tail_epsilon: float) -> jax.Array:
    """Append log(1 - sum exp(topk_logp)) [M, K] -> [M, K + 1], keeping >= tail_epsilon mass."""
    topk_mass = jax.nn.logsumexp(topk_logp, axis=-1)
    tail = _log1mexp(jnp.minimum(topk_mass, math.log1p(-tail_epsilon)))
    return jnp.concatenate([topk_logp, tail[:, None]], axis=-1)
