"""Teacher parameters: the EMA of the student (METHOD section 2, step 7) and a trust-region mix."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def ema_leaf(teacher_leaf: jax.Array, student_leaf: jax.Array, tau: jax.Array) -> jax.Array:
    """(1 - tau) teacher + tau student in float32 (or the wider leaf dtype), in the teacher's
    dtype. Traceable: the train step applies it inside its own jit."""
    tau = jnp.asarray(tau, jnp.float32)
    dtype = jnp.promote_types(jnp.promote_types(teacher_leaf.dtype, student_leaf.dtype), tau.dtype)
    weight = tau.astype(dtype)
    mixed = (1 - weight) * teacher_leaf.astype(dtype) + weight * student_leaf.astype(dtype)
    return mixed.astype(teacher_leaf.dtype)


@functools.partial(jax.jit, donate_argnums=0)
def _ema(teacher, student, tau: jax.Array):
    return jax.tree.map(lambda t, s: ema_leaf(t, s, tau), teacher, student)


def _check_same_shape(path, teacher_leaf, student_leaf) -> None:
    if teacher_leaf.shape != student_leaf.shape:
        raise ValueError(
            f"ema_update: leaf {jax.tree_util.keystr(path)} has teacher shape "
            f"{teacher_leaf.shape} but student shape {student_leaf.shape}"
        )


def ema_update(teacher, student, tau: float | jax.Array):
    """theta_T <- (1 - tau) theta_T + tau theta_S leafwise, returned in the teacher's dtypes.

    teacher, student: pytrees of the same structure and leaf shapes; tau: scalar in [0, 1]
    (0 keeps a frozen base teacher). The teacher's buffers are donated: do not reuse `teacher`.
    The sum is computed in float32 (or the wider of the two leaf dtypes), then cast back.
    """
    teacher_def = jax.tree.structure(teacher)
    student_def = jax.tree.structure(student)
    if teacher_def != student_def:
        raise ValueError(
            f"ema_update: teacher and student trees differ: {teacher_def} vs {student_def}"
        )
    jax.tree_util.tree_map_with_path(_check_same_shape, teacher, student)
    if isinstance(tau, (int, float)):
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"ema_update: tau must be in [0, 1], got {tau}")
        if tau == 0.0:
            return teacher  # frozen base teacher: no arithmetic, so bit-identical (even -0.0)
    return _ema(teacher, student, jnp.asarray(tau, jnp.float32))


def trust_region_logits(
    reference_logits: jax.Array, student_logits: jax.Array, mix: float | jax.Array
) -> jax.Array:
    """Teacher logits as a lerp from the reference towards the student, under stop-gradient.

    reference_logits, student_logits: [..., V] -> [..., V] float32+; mix = 0 gives the reference.
    """
    reference = reference_logits.astype(jnp.promote_types(reference_logits.dtype, jnp.float32))
    student = lax.stop_gradient(student_logits).astype(reference.dtype)
    return lax.stop_gradient(reference + mix * (student - reference))
