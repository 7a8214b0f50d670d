"""Losses: the self-distillation divergence (SDPO / PMD) and the Dr.GRPO baseline.

METHOD.md section 6. Shapes: N sequences (= B prompts x J rollouts, prompt-major), T response
positions, V vocabulary, D model width, K top-k, M flattened token rows.

Token alignment is the caller's: `tokens[n, t]` is the token scored by `logits[n, t]` /
`hidden[n, t]` (i.e. already shifted by one relative to the model input).

Which entry point the training step should use: `self_distillation_loss_from_hidden`, fed by a
hidden-only forward (`Transformer.__call__`, not `forward`, which materialises float32 logits
[N, T, V]); it computes logits per sequence chunk under `jax.checkpoint`, so neither the forward
nor the backward pass holds [N, T, V] whole. `self_distillation_loss` on full logits is the
plain reference and the right choice for small vocabularies and tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from pmd_jax.divergence import divergence_of_logprobs, with_tail

DIVERGENCE_IMPLS = ("jax", "pallas")
# How a loss averages its per-token terms x[n, t] over the mask m[n, t] of N rows (`aggregate`):
#   token_mean:          sum_nt m x / sum_nt m                      (one mean over all tokens)
#   seq_mean_token_mean: 1/N sum_n (sum_t m x / sum_t m)            (SDPO / verl's released runs)
#   seq_mean_token_sum:  1/N sum_n sum_t m x                        (verl's seq-mean-token-sum)
# N counts every row of the batch: a row with no tokens in the mask (no teacher signal, empty
# response) adds 0 to the sum and still counts in N.
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")

# How gradient accumulation combines the losses' metrics (`metric_weighting`): counts add up
# over micro-batches; row means weigh each micro-batch by its share of rows; LOSS_METRICS follow
# the loss's aggregation (token share under token_mean, row share otherwise); every other
# metric is a token mean, weighed by the micro-batch's share of the loss's tokens.
COUNT_METRICS = ("distill/token_count", "grpo/token_count")
ROW_MEAN_METRICS = ("distill/signal_fraction", "grpo/advantage_abs")
LOSS_METRICS = ("distill/loss", "grpo/policy_loss", "grpo/kl_ref", "grpo/entropy", "grpo/loss")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Loss knobs; the first block is shared, the second is GRPO-only.

    The train step is on-policy (one update per sampled batch: the importance ratio is 1) and
    keeps no reference model, so a run refuses non-default is_clip, clip_low, clip_high,
    dual_clip, kl_coef and entropy_coef by name (validate.py); the loss functions honour them
    for callers that pass old log-probs, reference log-probs or entropies."""

    alpha: float = 1.0  # 0: KL(teacher||student), 1: KL(student||teacher), between: generalised JSD
    top_k: int | None = 100  # student top-k ids plus a tail bucket; None = full vocabulary
    temperature: float = 1.0  # logits are divided by this before every log-softmax
    is_clip: float = 2.0  # cap of the importance ratio exp(logp_now - logp_old)
    rollout_correction_clip: float = 2.0  # cap of exp(logp_old - logp_sampler)
    # The tail bucket keeps at least this much probability. SDPO clamps at ~1e-7; 1e-6 is kept
    # because float32 top-k masses carry ~4e-7 absolute rounding error, so tails below ~1e-6
    # are noise (METHOD section 6). tail_epsilon=1e-7 gives SDPO's clamp (to ~1e-14).
    tail_epsilon: float = 1e-6
    aggregation: str = "token_mean"  # how per-token terms become the loss: AGGREGATIONS
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float = 3.0
    std_normalise: bool = False  # Dr.GRPO: no division by the group std
    kl_coef: float = 0.0  # k3 KL to a reference policy (needs ref_logprobs)
    entropy_coef: float = 0.0  # entropy bonus (needs per-token entropy)
    divergence_impl: str = "jax"  # "jax" (reference) | "pallas" (kernels/distill_divergence.py)

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"LossConfig.alpha must be in [0, 1], got {self.alpha}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"LossConfig.top_k must be None or >= 1, got {self.top_k}")
        if not 0.0 < self.tail_epsilon < 1.0:
            raise ValueError(f"LossConfig.tail_epsilon must be in (0, 1), got {self.tail_epsilon}")
        for name in ("temperature", "is_clip", "rollout_correction_clip", "dual_clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LossConfig.{name} must be > 0, got {getattr(self, name)}")
        if not (0.0 <= self.clip_low < 1.0 and self.clip_high >= 0.0):
            raise ValueError(
                f"LossConfig clip range invalid: clip_low={self.clip_low}, clip_high={self.clip_high}"
            )
        if self.dual_clip <= 1.0:
            raise ValueError(f"LossConfig.dual_clip must be > 1, got {self.dual_clip}")
        if self.divergence_impl not in DIVERGENCE_IMPLS:
            raise ValueError(
                f"LossConfig.divergence_impl={self.divergence_impl!r}: use one of {DIVERGENCE_IMPLS}"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"LossConfig.aggregation={self.aggregation!r}: use one of {AGGREGATIONS}"
            )
        if self.divergence_impl == "pallas" and self.top_k is None:
            raise ValueError("LossConfig.divergence_impl='pallas' needs top_k (not None)")


def _float(x: jax.Array) -> jax.Array:
    """Upcast to at least float32 (float64 stays float64 under x64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _scaled(logits: jax.Array, temperature: float) -> jax.Array:
    logits = _float(logits)
    return logits if temperature == 1.0 else logits / temperature


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `values` over `mask`; 0 (with zero gradient) when the mask is empty."""
    mask = mask.astype(bool)
    count = jnp.sum(mask.astype(values.dtype))
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(count, 1.0)


def aggregate(values: jax.Array, mask: jax.Array, aggregation: str) -> jax.Array:
    """Per-token terms [N, T] over `mask` [N, T] -> scalar, by `aggregation` (AGGREGATIONS).

    Masked-out terms (NaN included) contribute 0 with zero gradient; an empty mask gives 0. The
    row modes divide by N, all rows: rows without masked tokens count as 0.
    """
    mask = mask.astype(bool)
    if aggregation == "token_mean":
        return _masked_mean(values, mask)
    row_sums = jnp.sum(jnp.where(mask, values, 0.0), axis=-1)
    if aggregation == "seq_mean_token_sum":
        return jnp.mean(row_sums)
    if aggregation == "seq_mean_token_mean":
        row_counts = jnp.sum(mask.astype(row_sums.dtype), axis=-1)
        return jnp.mean(row_sums / jnp.maximum(row_counts, 1.0))
    raise ValueError(f"aggregation={aggregation!r}: use one of {AGGREGATIONS}")


def metric_weighting(key: str, aggregation: str) -> str:
    """How accumulation combines metric `key` over micro-batches: "count" (summed), "row"
    (weighed by rows) or "token" (weighed by the loss's tokens); see COUNT_METRICS."""
    if key in COUNT_METRICS:
        return "count"
    if key in ROW_MEAN_METRICS or (key in LOSS_METRICS and aggregation != "token_mean"):
        return "row"
    return "token"


def distill_divergence(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    alpha: float,
    top_k: int | None,
    temperature: float = 1.0,
    tail_epsilon: float = 1e-6,
    impl: str = "jax",
) -> jax.Array:
    """Per-token divergence between student and (stop-gradient) teacher next-token distributions.

    student_logits, teacher_logits: [M, V] (any float dtype) -> divergence [M] (float32+, nats).
    top_k=None: full vocabulary; else the (top_k + 1)-way distributions over the student's top-k
    ids plus a tail bucket. impl: "jax" (`topk_divergence`) or "pallas" (the streamed kernel in
    kernels/distill_divergence.py; needs top_k).
    """
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"distill_divergence wants matching [M, V] logits, got student "
            f"{student_logits.shape} and teacher {teacher_logits.shape}"
        )
    vocab_size = student_logits.shape[-1]
    if top_k is not None and not 1 <= top_k < vocab_size:
        raise ValueError(f"top_k={top_k} must be in [1, V={vocab_size}); use None for full V")
    if impl not in DIVERGENCE_IMPLS:
        raise ValueError(f"distill_divergence impl={impl!r}: use one of {DIVERGENCE_IMPLS}")
    settings = dict(alpha=alpha, top_k=top_k, temperature=temperature, tail_epsilon=tail_epsilon)
    teacher_logits = lax.stop_gradient(teacher_logits)
    if impl == "jax":
        return topk_divergence(student_logits, teacher_logits, **settings)
    if top_k is None:
        raise ValueError("distill_divergence impl='pallas' needs top_k (not None)")
    # Imported here: the kernel module reuses this module's divergence math.
    from pmd_jax.kernels.distill_divergence import pallas_topk_divergence

    return pallas_topk_divergence(student_logits, teacher_logits, **settings)


def topk_divergence(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    alpha: float,
    top_k: int | None,
    temperature: float = 1.0,
    tail_epsilon: float = 1e-6,
) -> jax.Array:
    """The pure-JAX divergence of `distill_divergence`, differentiable in both logits [M, V] -> [M].

    The reference for the Pallas kernel; materialises float32 log-softmax [M, V] for both inputs.
    """
    student = _scaled(student_logits, temperature)
    teacher = _scaled(teacher_logits, temperature)
    student_lse = jax.nn.logsumexp(student, axis=-1, keepdims=True)
    teacher_lse = jax.nn.logsumexp(teacher, axis=-1, keepdims=True)
    if top_k is None:
        return divergence_of_logprobs(student - student_lse, teacher - teacher_lse, alpha)
    _, topk_ids = lax.top_k(lax.stop_gradient(student), top_k)
    student_logp = jnp.take_along_axis(student, topk_ids, axis=-1) - student_lse
    teacher_logp = jnp.take_along_axis(teacher, topk_ids, axis=-1) - teacher_lse
    return divergence_of_logprobs(
        with_tail(student_logp, tail_epsilon), with_tail(teacher_logp, tail_epsilon), alpha
    )


def sampled_logprobs(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Log-prob of the given token under log_softmax(logits / temperature).

    logits: [..., V], tokens: [...] int -> [...] float32+.
    """
    scaled = _scaled(logits, temperature)
    picked = jnp.take_along_axis(scaled, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(scaled, axis=-1)


@jax.custom_vjp
def _chunk_logits(hidden: jax.Array, lm_head: jax.Array) -> jax.Array:
    """hidden [..., D] @ lm_head [D, V] -> logits [..., V], accumulated in float32 or wider.

    The backward pass returns the lm_head gradient in lm_head's dtype straight from the matmul
    (accumulated in float32 inside it), where autodiff would write a float32 [D, V] and round it
    afterwards: for bfloat16 weights that float32 buffer was the train step's largest temporary
    (2.32 GiB per chip at Qwen3-8B's vocabulary, docs/PLANS.md). For float32 weights nothing
    changes (tests/test_losses.py checks both against autodiff)."""
    out_dtype = _logit_dtype(hidden, lm_head)
    return jnp.dot(hidden, lm_head.astype(hidden.dtype), preferred_element_type=out_dtype)


def _logit_dtype(hidden: jax.Array, lm_head: jax.Array) -> jnp.dtype:
    return jnp.promote_types(jnp.promote_types(hidden.dtype, lm_head.dtype), jnp.float32)


def _chunk_logits_fwd(hidden, lm_head):
    return _chunk_logits(hidden, lm_head), (hidden, lm_head)


def _chunk_logits_bwd(saved, cotangent):
    """cotangent [..., V] -> (d hidden [..., D], d lm_head [D, V]), each in its primal's dtype."""
    hidden, lm_head = saved
    wide = _logit_dtype(hidden, lm_head)
    # Narrow weights: the operands in their dtype (what a TPU matmul at default precision reads
    # anyway), so no float32 copy of lm_head is made; float32 weights: float32, as autodiff does.
    operand = wide if lm_head.dtype == wide else lm_head.dtype
    d_hidden = jnp.dot(
        cotangent.astype(operand), lm_head.astype(operand).T, preferred_element_type=wide
    ).astype(hidden.dtype)
    rows = tuple(range(hidden.ndim - 1))
    d_lm_head = lax.dot_general(
        hidden.astype(operand),
        cotangent.astype(operand),
        ((rows, rows), ((), ())),
        preferred_element_type=lm_head.dtype,
    )
    return d_hidden, d_lm_head


_chunk_logits.defvjp(_chunk_logits_fwd, _chunk_logits_bwd)


def _map_time_chunks(
    fn: Callable[..., tuple[jax.Array, ...]], per_token: tuple[jax.Array, ...], chunk: int
) -> tuple[jax.Array, ...]:
    """Apply `fn` to [N, chunk, ...] slices of each [N, T, ...] array; outputs [N, chunk] -> [N, T].

    T is zero-padded to a multiple of `chunk` (padded outputs are dropped). The body is
    rematerialised in the backward pass so per-chunk logits are never stored for all chunks.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n, t = per_token[0].shape[:2]
    chunk = min(chunk, t)
    num_chunks = -(-t // chunk)
    pad = num_chunks * chunk - t

    def to_chunks(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape(n, num_chunks, chunk, *x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    outs = lax.map(lambda xs: jax.checkpoint(fn)(*xs), tuple(to_chunks(x) for x in per_token))
    return tuple(jnp.moveaxis(o, 0, 1).reshape(n, num_chunks * chunk)[:, :t] for o in outs)


def token_logprobs(
    hidden: jax.Array,
    lm_head: jax.Array,
    tokens: jax.Array,
    temperature: float = 1.0,
    chunk: int = 128,
) -> jax.Array:
    """Per-token log-probs without materialising [N, T, V] logits whole.

    hidden: [N, T, D], lm_head: [D, V], tokens: [N, T] int -> [N, T] float32+ (T in chunks).
    """
    (logprobs,) = _map_time_chunks(
        lambda h, tok: (sampled_logprobs(_chunk_logits(h, lm_head), tok, temperature),),
        (hidden, tokens),
        chunk,
    )
    return logprobs


def rollout_correction(
    old_logprobs: jax.Array,
    sampler_logprobs: jax.Array | None,
    mask: jax.Array,
    config: LossConfig,
) -> jax.Array:
    """Detached min(exp(logp_old - logp_sampler), clip) [N, T]; 1 where masked or no sampler."""
    if sampler_logprobs is None:
        return jnp.ones(old_logprobs.shape, _float(old_logprobs).dtype)
    log_ratio = jnp.where(mask, old_logprobs - sampler_logprobs, 0.0)
    return lax.stop_gradient(jnp.minimum(jnp.exp(log_ratio), config.rollout_correction_clip))


def _distill_from_token_stats(
    divergence: jax.Array,
    student_logprobs: jax.Array,
    teacher_logprobs: jax.Array,
    response_mask: jax.Array,
    sample_mask: jax.Array,
    student_logprobs_old: jax.Array | None,
    sampler_logprobs: jax.Array | None,
    config: LossConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted divergence [N, T] aggregated by config.aggregation, and its metrics (shared by
    both entry points). Metrics other than the loss, the signal fraction and the count are
    token means whatever the aggregation."""
    mask = response_mask.astype(bool) & sample_mask.astype(bool)[:, None]
    now = lax.stop_gradient(student_logprobs)
    old = now if student_logprobs_old is None else student_logprobs_old
    is_weight = jnp.minimum(jnp.exp(jnp.where(mask, now - old, 0.0)), config.is_clip)
    weight = is_weight * rollout_correction(old, sampler_logprobs, mask, config)
    weight = lax.stop_gradient(weight)
    loss = aggregate(weight * divergence, mask, config.aggregation)
    metrics = {
        "distill/loss": loss,
        "distill/divergence": _masked_mean(lax.stop_gradient(divergence), mask),
        "distill/teacher_logprob": _masked_mean(lax.stop_gradient(teacher_logprobs), mask),
        "distill/student_logprob": _masked_mean(now, mask),
        "distill/weight": _masked_mean(weight, mask),
        "distill/signal_fraction": jnp.mean(sample_mask.astype(jnp.float32)),
        "distill/token_count": jnp.sum(mask.astype(jnp.float32)),
    }
    return loss, metrics


def _token_stats(
    student_logits: jax.Array, teacher_logits: jax.Array, tokens: jax.Array, config: LossConfig
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Logits [N, T, V] -> (divergence, student and teacher log-prob of `tokens`), each [N, T]."""
    n, t, v = student_logits.shape
    divergence = distill_divergence(
        student_logits.reshape(n * t, v),
        teacher_logits.reshape(n * t, v),
        alpha=config.alpha,
        top_k=config.top_k,
        temperature=config.temperature,
        tail_epsilon=config.tail_epsilon,
        impl=config.divergence_impl,
    ).reshape(n, t)
    student_logprobs = sampled_logprobs(student_logits, tokens, config.temperature)
    teacher_logprobs = sampled_logprobs(teacher_logits, tokens, config.temperature)
    return divergence, student_logprobs, teacher_logprobs


def self_distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    tokens: jax.Array,
    response_mask: jax.Array,
    sample_mask: jax.Array,
    student_logprobs_old: jax.Array | None,
    sampler_logprobs: jax.Array | None,
    config: LossConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SDPO/PMD loss on full logits: the weighted per-token divergence, aggregated over the
    tokens with signal by config.aggregation (default: one token mean over the batch).

    student_logits, teacher_logits: [N, T, V]; tokens, response_mask: [N, T]; sample_mask: [N]
    (the sample has a teacher signal); student_logprobs_old, sampler_logprobs: [N, T] or None
    (None: on-policy, ratio 1). Returns (loss scalar, metrics); loss is 0 when nothing is masked in.
    """
    return _distill_from_token_stats(
        *_token_stats(student_logits, teacher_logits, tokens, config),
        response_mask,
        sample_mask,
        student_logprobs_old,
        sampler_logprobs,
        config,
    )


def self_distillation_loss_from_hidden(
    student_hidden: jax.Array,
    teacher_hidden: jax.Array,
    student_lm_head: jax.Array,
    teacher_lm_head: jax.Array,
    tokens: jax.Array,
    response_mask: jax.Array,
    sample_mask: jax.Array,
    student_logprobs_old: jax.Array | None,
    sampler_logprobs: jax.Array | None,
    config: LossConfig,
    chunk: int = 128,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`self_distillation_loss` from final hidden states; logits exist one T-chunk at a time.

    student_hidden, teacher_hidden: [N, T, D]; student_lm_head, teacher_lm_head: [D, V];
    other arguments as in `self_distillation_loss`. The training step's entry point.
    """

    def per_chunk(student_h, teacher_h, chunk_tokens):
        student_logits = _chunk_logits(student_h, student_lm_head)
        teacher_logits = _chunk_logits(teacher_h, lax.stop_gradient(teacher_lm_head))
        return _token_stats(student_logits, teacher_logits, chunk_tokens, config)

    divergence, student_logprobs, teacher_logprobs = _map_time_chunks(
        per_chunk, (student_hidden, lax.stop_gradient(teacher_hidden), tokens), chunk
    )
    return _distill_from_token_stats(
        divergence,
        student_logprobs,
        teacher_logprobs,
        response_mask,
        sample_mask,
        student_logprobs_old,
        sampler_logprobs,
        config,
    )


def group_advantages(rewards: jax.Array, group_size: int, std_normalise: bool) -> jax.Array:
    """A_i = r_i - mean of its group (rows b*J + j); optionally / (unbiased group std + 1e-6).

    rewards: [N] with N = B * J -> advantages [N].
    """
    if rewards.ndim != 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards {rewards.shape} must be [N] with N a multiple of J={group_size}")
    grouped = _float(rewards).reshape(-1, group_size)
    centred = grouped - jnp.mean(grouped, axis=1, keepdims=True)
    if std_normalise:
        if group_size < 2:
            raise ValueError("std_normalise needs group_size >= 2")
        centred = centred / (jnp.std(grouped, axis=1, ddof=1, keepdims=True) + 1e-6)
    return centred.reshape(-1)


def grpo_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    sampler_logprobs: jax.Array | None,
    rewards: jax.Array,
    group_size: int,
    response_mask: jax.Array,
    config: LossConfig,
    ref_logprobs: jax.Array | None = None,
    entropy: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Dr.GRPO clipped policy-gradient loss (dual clip, rollout correction); the policy, KL and
    entropy terms are each aggregated over the response tokens by config.aggregation.

    logprobs, old_logprobs, sampler_logprobs, response_mask, ref_logprobs, entropy: [N, T];
    rewards: [N], rows prompt-major (b * J + j). Returns (loss scalar, metrics).
    """
    if config.kl_coef > 0 and ref_logprobs is None:
        raise ValueError("LossConfig.kl_coef > 0 needs ref_logprobs")
    if config.entropy_coef > 0 and entropy is None:
        raise ValueError("LossConfig.entropy_coef > 0 needs a per-token entropy [N, T]")
    mask = response_mask.astype(bool)
    advantages = group_advantages(rewards, group_size, config.std_normalise)[:, None]
    log_ratio = jnp.where(mask, logprobs - old_logprobs, 0.0)
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - config.clip_low, 1.0 + config.clip_high)
    per_token = jnp.maximum(unclipped, clipped)
    per_token = jnp.where(
        advantages < 0, jnp.minimum(per_token, -advantages * config.dual_clip), per_token
    )
    weight = rollout_correction(old_logprobs, sampler_logprobs, mask, config)
    policy_loss = aggregate(weight * per_token, mask, config.aggregation)
    loss = policy_loss
    metrics = {
        "grpo/policy_loss": policy_loss,
        "grpo/clip_fraction": _masked_mean((clipped > unclipped).astype(ratio.dtype), mask),
        "grpo/ratio": _masked_mean(lax.stop_gradient(ratio), mask),
        "grpo/approx_kl_old": _masked_mean(lax.stop_gradient(-log_ratio), mask),
        "grpo/advantage_abs": jnp.mean(jnp.abs(advantages)),
        "grpo/rollout_weight": _masked_mean(weight, mask),
        "grpo/token_count": jnp.sum(mask.astype(jnp.float32)),
    }
    if ref_logprobs is not None:
        ref_log_ratio = jnp.where(mask, ref_logprobs - logprobs, 0.0)
        k3 = jnp.exp(ref_log_ratio) - ref_log_ratio - 1.0  # the k3 KL estimator, per token
        kl = aggregate(k3, mask, config.aggregation)
        loss = loss + config.kl_coef * kl
        metrics["grpo/kl_ref"] = lax.stop_gradient(kl)
    if entropy is not None:
        mean_entropy = aggregate(entropy, mask, config.aggregation)
        loss = loss - config.entropy_coef * mean_entropy
        metrics["grpo/entropy"] = lax.stop_gradient(mean_entropy)
    metrics["grpo/loss"] = loss
    return loss, metrics
