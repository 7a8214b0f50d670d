"""Pallas kernel for the top-k + tail distillation divergence (METHOD.md section 6).

The pure-JAX reference is `pmd_jax.losses.topk_divergence`. It materialises float32 log-softmax
[M, V] for student and teacher (and their softmax again in the backward pass). Here the only
full-vocabulary work is streamed over vocabulary blocks:

- forward: one kernel per input computes each row's log-sum-exp with an online max / sum-exp
  (float32 accumulators [M, 1]); the top-k log-probs are then gathered logits minus log Z, and
  the (K + 1)-way divergence is small plain JAX;
- backward: d(log Z)/d logits = softmax(logits / T) / T, written block by block straight into the
  gradient [M, V] (in the logits' dtype), then the K top-k entries are overwritten with their exact
  float32 value (softmax part + gathered-logit part).

Shapes: M token rows, V vocabulary, K top-k. Rows are independent, so M may be any size; V need
not be a multiple of the vocabulary block (padded columns are masked with -inf). On CPU the kernels
run in Pallas interpret mode (`default_interpret`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pmd_jax.divergence import divergence_of_logprobs, with_tail
from pmd_jax.platform import target_backend


def default_interpret() -> bool:
    """No Pallas lowering on CPU: there the kernel runs as a loop (interpret mode). Read when a
    call is traced, so an ahead-of-time compile for a TPU gets the compiled kernel."""
    return target_backend() == "cpu"


@dataclasses.dataclass(frozen=True)
class _Static:
    """Compile-time settings of one divergence call (hashable: a non-differentiable argument)."""

    alpha: float
    top_k: int
    temperature: float
    tail_epsilon: float
    block_rows: int
    block_vocab: int
    interpret: bool


def _blocks(shape: tuple[int, int], static: _Static) -> tuple[int, int, tuple[int, int]]:
    """(row block, vocab block, grid) for logits [M, V]; a block never exceeds the array."""
    rows, vocab = shape
    block_rows, block_vocab = min(static.block_rows, rows), min(static.block_vocab, vocab)
    return block_rows, block_vocab, (pl.cdiv(rows, block_rows), pl.cdiv(vocab, block_vocab))


def _lse_kernel(logits_ref, max_ref, sumexp_ref, *, vocab_size, temperature):
    """One [bm, bv] block of the online log-sum-exp; max/sumexp [bm, 1] stay resident over j."""
    j = pl.program_id(1)
    block_vocab = logits_ref.shape[1]

    @pl.when(j == 0)
    def _init():
        max_ref[...] = jnp.full(max_ref.shape, -jnp.inf, jnp.float32)
        sumexp_ref[...] = jnp.zeros(sumexp_ref.shape, jnp.float32)

    scaled = logits_ref[...].astype(jnp.float32) / temperature
    if vocab_size % block_vocab:  # the last block reads past V: those columns must not count
        column = j * block_vocab + lax.broadcasted_iota(jnp.int32, scaled.shape, 1)
        scaled = jnp.where(column < vocab_size, scaled, -jnp.inf)
    old_max = max_ref[...]
    new_max = jnp.maximum(old_max, jnp.max(scaled, axis=1, keepdims=True))
    # A row that is -inf so far keeps sum 0 instead of exp(-inf - -inf) = NaN.
    shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    block_sum = jnp.sum(jnp.exp(scaled - shift), axis=1, keepdims=True)
    sumexp_ref[...] = sumexp_ref[...] * jnp.exp(old_max - shift) + block_sum
    max_ref[...] = new_max


def row_logsumexp(logits: jax.Array, static: _Static) -> jax.Array:
    """log sum_v exp(logits[m, v] / T), streamed over V. logits: [M, V] -> [M] float32."""
    rows, vocab = logits.shape
    block_rows, block_vocab, grid = _blocks(logits.shape, static)
    stat_spec = pl.BlockSpec((block_rows, 1), lambda i, j: (i, 0))
    stat_shape = jax.ShapeDtypeStruct((rows, 1), jnp.float32)
    row_max, row_sumexp = pl.pallas_call(
        functools.partial(_lse_kernel, vocab_size=vocab, temperature=static.temperature),
        grid=grid,
        in_specs=[pl.BlockSpec((block_rows, block_vocab), lambda i, j: (i, j))],
        out_specs=[stat_spec, stat_spec],
        out_shape=[stat_shape, stat_shape],
        interpret=static.interpret,
        name="distill_row_logsumexp",
    )(logits)
    return (row_max + jnp.log(row_sumexp))[:, 0]


def _softmax_grad_kernel(logits_ref, lse_ref, scale_ref, grad_ref, *, temperature):
    """One [bm, bv] block of scale * softmax(logits / T); columns past V are dropped on write."""
    scaled = logits_ref[...].astype(jnp.float32) / temperature
    grad_ref[...] = (scale_ref[...] * jnp.exp(scaled - lse_ref[...])).astype(grad_ref.dtype)


def scaled_softmax(
    logits: jax.Array, lse: jax.Array, scale: jax.Array, static: _Static
) -> jax.Array:
    """scale[m] * softmax(logits / T)[m, v] blockwise. logits: [M, V]; lse, scale: [M] -> [M, V]."""
    rows, vocab = logits.shape
    block_rows, block_vocab, grid = _blocks(logits.shape, static)
    block_spec = pl.BlockSpec((block_rows, block_vocab), lambda i, j: (i, j))
    row_spec = pl.BlockSpec((block_rows, 1), lambda i, j: (i, 0))
    return pl.pallas_call(
        functools.partial(_softmax_grad_kernel, temperature=static.temperature),
        grid=grid,
        in_specs=[block_spec, row_spec, row_spec],
        out_specs=block_spec,
        out_shape=jax.ShapeDtypeStruct(logits.shape, logits.dtype),
        interpret=static.interpret,
        name="distill_scaled_softmax",
    )(logits, lse[:, None].astype(jnp.float32), scale[:, None].astype(jnp.float32))


def _topk_divergence(student_topk, teacher_topk, student_lse, teacher_lse, static: _Static):
    """Divergence [M] from top-k scaled logits [M, K] and log-normalisers [M] (all float32)."""
    student_logp = with_tail(student_topk - student_lse[:, None], static.tail_epsilon)
    teacher_logp = with_tail(teacher_topk - teacher_lse[:, None], static.tail_epsilon)
    return divergence_of_logprobs(student_logp, teacher_logp, static.alpha)


def _gather_scaled(logits: jax.Array, ids: jax.Array, temperature: float) -> jax.Array:
    """logits [M, V] at ids [M, K] -> float32 [M, K] divided by T (as the reference does)."""
    return jnp.take_along_axis(logits, ids, axis=-1).astype(jnp.float32) / temperature


def _forward(student_logits, teacher_logits, static: _Static):
    # Top-k of the raw logits = top-k of the student log-probs (T > 0 and log Z are monotone).
    _, ids = lax.top_k(student_logits, static.top_k)
    student_topk = _gather_scaled(student_logits, ids, static.temperature)
    teacher_topk = _gather_scaled(teacher_logits, ids, static.temperature)
    student_lse = row_logsumexp(student_logits, static)
    teacher_lse = row_logsumexp(teacher_logits, static)
    divergence = _topk_divergence(student_topk, teacher_topk, student_lse, teacher_lse, static)
    residuals = (student_logits, teacher_logits, ids, student_topk, teacher_topk)
    return divergence, residuals + (student_lse, teacher_lse)


def _logits_grad(logits, ids, topk, lse, d_topk, d_lse, static: _Static) -> jax.Array:
    """Cotangent of logits [M, V] given those of its top-k scaled values [M, K] and log Z [M]."""
    grad = scaled_softmax(logits, lse, d_lse / static.temperature, static)
    # The top-k entries also get the gathered-logit term; set them from float32 in one rounding.
    at_ids = (d_lse[:, None] * jnp.exp(topk - lse[:, None]) + d_topk) / static.temperature
    rows = jnp.arange(logits.shape[0])[:, None]
    return grad.at[rows, ids].set(at_ids.astype(grad.dtype), unique_indices=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _divergence_vjp(student_logits, teacher_logits, static: _Static):
    return _forward(student_logits, teacher_logits, static)[0]


def _divergence_fwd(student_logits, teacher_logits, static):
    return _forward(student_logits, teacher_logits, static)


def _divergence_bwd(static, residuals, g):
    student_logits, teacher_logits, ids, student_topk, teacher_topk, s_lse, t_lse = residuals
    _, small_vjp = jax.vjp(
        functools.partial(_topk_divergence, static=static), student_topk, teacher_topk, s_lse, t_lse
    )
    d_student_topk, d_teacher_topk, d_student_lse, d_teacher_lse = small_vjp(g.astype(jnp.float32))
    student_grad = _logits_grad(
        student_logits, ids, student_topk, s_lse, d_student_topk, d_student_lse, static
    )
    teacher_grad = _logits_grad(
        teacher_logits, ids, teacher_topk, t_lse, d_teacher_topk, d_teacher_lse, static
    )
    return student_grad, teacher_grad


_divergence_vjp.defvjp(_divergence_fwd, _divergence_bwd)


def pallas_topk_divergence(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    alpha: float,
    top_k: int,
    temperature: float = 1.0,
    tail_epsilon: float = 1e-6,
    block_rows: int = 256,
    block_vocab: int = 2048,
    interpret: bool | None = None,
) -> jax.Array:
    """Per-token top-k + tail divergence, a differentiable drop-in for `losses.topk_divergence`.

    student_logits, teacher_logits: [M, V] float32 or bfloat16 -> divergence [M] float32 (nats).
    Gradients flow to both inputs (stop the teacher's yourself). top_k ids are the student's.
    block_rows, block_vocab: the kernel tile; interpret: None = `default_interpret()` (True on CPU).
    """
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"pallas_topk_divergence wants matching [M, V] logits, got student "
            f"{student_logits.shape} and teacher {teacher_logits.shape}"
        )
    vocab_size = student_logits.shape[1]
    if not 1 <= top_k < vocab_size:
        raise ValueError(f"top_k={top_k} must be in [1, V={vocab_size})")
    if block_rows < 1 or block_vocab < 1:
        raise ValueError(f"block_rows={block_rows}, block_vocab={block_vocab} must be >= 1")
    static = _Static(
        alpha=float(alpha),
        top_k=int(top_k),
        temperature=float(temperature),
        tail_epsilon=float(tail_epsilon),
        block_rows=int(block_rows),
        block_vocab=int(block_vocab),
        interpret=default_interpret() if interpret is None else bool(interpret),
    )
    return _divergence_vjp(student_logits, teacher_logits, static)
