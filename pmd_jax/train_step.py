"""The sharded update: loss on one rollout batch -> optimizer step -> EMA teacher, in one jit.

Everything the host did for the step (sampling, verifying, memory, teacher prompts) arrives as a
`RolloutBatch` of padded arrays. `make_train_step` returns `jax.jit(step, in_shardings,
out_shardings)` over a (data, fsdp, tensor) mesh: the modern form of pjit.

Sequences are `[prompt (left-padded) | response (right-padded)]`; the hidden state at position
`Tp - 1 + g` predicts response token g, so the loss reads the `G` positions starting at `Tp - 1`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import lax

from pmd_jax import sharding
from pmd_jax.losses import (
    LossConfig,
    grpo_loss,
    metric_weighting,
    self_distillation_loss_from_hidden,
    token_logprobs,
)
from pmd_jax.model.config import ModelConfig
from pmd_jax.model.transformer import REMAT_POLICIES, Transformer, positions_from_mask
from pmd_jax.platform import on_mesh
from pmd_jax.sampling import lm_head_matrix
from pmd_jax.teacher_params import ema_leaf

ALGORITHMS = ("grpo", "sdpo", "pmd")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the jit'd update computes (static)."""

    algorithm: str = "pmd"
    loss: LossConfig = LossConfig()
    group_size: int = 8  # J rollouts per prompt (rows are prompt-major)
    micro_batches: int = 1  # gradient accumulation; each part holds whole groups
    teacher_tau: float = 0.05  # EMA rate; 0 keeps the base teacher
    loss_chunk: int = 128  # time chunk of the distillation logits
    remat: str = "none"  # per-layer rematerialisation in the backward pass: REMAT_POLICIES
    loss_spike_factor: float = 0.0  # skip when |loss| > factor x mean |recent loss|; 0 = off
    loss_spike_window: int = 8  # recent finite losses the spike guard averages
    nan_grad_at_step: int = 0  # failure drills: this optimizer step's gradients are NaN; 0 = never

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"StepConfig.algorithm={self.algorithm!r}; expected {ALGORITHMS}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"StepConfig.remat={self.remat!r}; expected one of {REMAT_POLICIES}")
        if not 0.0 <= self.teacher_tau <= 1.0:
            raise ValueError(f"StepConfig.teacher_tau={self.teacher_tau} must be in [0, 1]")
        if self.loss_spike_factor < 0 or self.loss_spike_window < 1:
            raise ValueError(
                f"StepConfig: loss_spike_factor={self.loss_spike_factor} must be >= 0 and "
                f"loss_spike_window={self.loss_spike_window} >= 1"
            )


class TrainState(flax.struct.PyTreeNode):
    """Everything the update changes. teacher_params is None for GRPO."""

    step: jax.Array  # [] int32, optimizer steps taken (skipped ones included)
    params: dict
    opt_state: optax.OptState
    teacher_params: dict | None
    skipped_updates: jax.Array  # [] int32, steps whose update was dropped (non-finite or spike)
    recent_losses: jax.Array  # [W] float32, newest first, the last W finite losses (NaN = none)


class RolloutBatch(NamedTuple):
    """One step's rollouts, N = B * J rows (prompt-major)."""

    prompt_tokens: jax.Array  # [N, Tp] int32, left-padded student prompt of each row
    prompt_mask: jax.Array  # [N, Tp] bool
    response_tokens: jax.Array  # [N, G] int32, pad after the end
    response_mask: jax.Array  # [N, G] bool
    sampler_logprobs: jax.Array  # [N, G] float32
    rewards: jax.Array  # [N] float32
    teacher_tokens: jax.Array  # [N, Tt] int32, left-padded teacher prompt ([N, 1] for GRPO)
    teacher_mask: jax.Array  # [N, Tt] bool
    sample_mask: jax.Array  # [N] bool, the teacher has a signal for this sample


def init_train_state(
    params, optimizer: optax.GradientTransformation, algorithm: str, loss_window: int = 8
) -> TrainState:
    """Fresh state; the teacher starts as a copy of the student (SDPO/PMD). `loss_window` is
    StepConfig.loss_spike_window."""
    teacher = None if algorithm == "grpo" else jax.tree.map(jnp.array, params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        teacher_params=teacher,
        skipped_updates=jnp.zeros((), jnp.int32),
        recent_losses=jnp.full((loss_window,), jnp.nan, jnp.float32),
    )


def response_hidden(
    params,
    model_config: ModelConfig,
    prompt_tokens,
    prompt_mask,
    response_tokens,
    response_mask,
    remat: str = "none",
) -> jax.Array:
    """Final hidden states [N, G, D] at the positions that predict each response token."""
    tokens = jnp.concatenate([prompt_tokens, response_tokens], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1).astype(bool)
    hidden, _ = Transformer(model_config, remat=remat).apply(
        {"params": params}, tokens, positions_from_mask(mask), mask
    )
    start = prompt_tokens.shape[1] - 1
    return lax.dynamic_slice_in_dim(hidden, start, response_tokens.shape[1], axis=1)


def batch_loss(
    params, teacher_params, batch: RolloutBatch, model_config: ModelConfig, config: StepConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss of one (micro-)batch and its metrics. On-policy: the old log-probs are the current
    ones under stop-gradient, so the importance ratio is 1 and only the rollout correction
    (trainer vs sampler log-probs) weighs tokens."""
    hidden = response_hidden(
        params,
        model_config,
        batch.prompt_tokens,
        batch.prompt_mask,
        batch.response_tokens,
        batch.response_mask,
        config.remat,
    )
    lm_head = lm_head_matrix(params, model_config)
    if config.algorithm == "grpo":
        logprobs = token_logprobs(
            hidden, lm_head, batch.response_tokens, config.loss.temperature, config.loss_chunk
        )
        return grpo_loss(
            logprobs,
            lax.stop_gradient(logprobs),
            batch.sampler_logprobs,
            batch.rewards,
            config.group_size,
            batch.response_mask,
            config.loss,
        )
    teacher_hidden = response_hidden(
        teacher_params,
        model_config,
        batch.teacher_tokens,
        batch.teacher_mask,
        batch.response_tokens,
        batch.response_mask,
    )
    return self_distillation_loss_from_hidden(
        hidden,
        lax.stop_gradient(teacher_hidden),
        lm_head,
        lax.stop_gradient(lm_head_matrix(teacher_params, model_config)),
        batch.response_tokens,
        batch.response_mask,
        batch.sample_mask,
        None,
        batch.sampler_logprobs,
        config.loss,
        chunk=config.loss_chunk,
    )


def loss_token_count(batch: RolloutBatch, algorithm: str) -> jax.Array:
    """Tokens the loss averages over (the weight of a micro-batch in the accumulated mean)."""
    mask = batch.response_mask.astype(bool)
    if algorithm != "grpo":
        mask = mask & batch.sample_mask.astype(bool)[:, None]
    return jnp.sum(mask.astype(jnp.float32))


def loss_denominator(batch: RolloutBatch, algorithm: str, aggregation: str) -> jax.Array:
    """What the loss of `batch` divides by (LossConfig.aggregation): its tokens (token_mean) or
    its rows, all of them, rows without signal or tokens included (the row modes)."""
    if aggregation == "token_mean":
        return loss_token_count(batch, algorithm)
    return jnp.asarray(batch.rewards.shape[0], jnp.float32)


def _split_micro(batch: RolloutBatch, parts: int, group_size: int) -> RolloutBatch:
    rows = batch.rewards.shape[0]
    if rows % (parts * group_size):
        raise ValueError(f"{rows} rows do not split into {parts} micro-batches of whole groups")
    return jax.tree.map(lambda x: x.reshape(parts, rows // parts, *x.shape[1:]), batch)


def _accumulator_dtype(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def accumulated_grads(
    params, teacher_params, batch: RolloutBatch, model_config: ModelConfig, config: StepConfig
):
    """Gradients of the whole batch's loss, summed over micro-batches.

    Each micro-batch loss divides by its own `loss_denominator` (its tokens under token_mean,
    its rows under the row modes), so its gradient is weighted by its share of the batch's
    denominator: the sum equals the gradient of the full-batch loss. Under the row modes that
    share is 1 / micro_batches (whole groups, equal rows), whatever tokens a part holds.
    The sum is kept in float32 (or wider) whatever the parameter dtype, so bfloat16 parameters
    accumulate without rounding each part; the optimizer receives those float32 gradients.
    Metrics combine by `metric_weighting`: counts summed, row means (and the loss metrics under
    a row mode) by row share, token means by token share, so every metric equals the one-batch
    value.
    """
    grad_fn = jax.value_and_grad(batch_loss, has_aux=True)
    if config.micro_batches == 1:
        (loss, metrics), grads = grad_fn(params, teacher_params, batch, model_config, config)
        return loss, metrics, grads
    micro = _split_micro(batch, config.micro_batches, config.group_size)
    aggregation = config.loss.aggregation
    total = jnp.maximum(loss_denominator(batch, config.algorithm, aggregation), 1.0)
    total_tokens = jnp.maximum(loss_token_count(batch, config.algorithm), 1.0)
    row_weight = 1.0 / config.micro_batches

    def body(carry, part):
        loss_sum, metric_sum, grad_sum = carry
        (loss, metrics), grads = grad_fn(params, teacher_params, part, model_config, config)
        weight = loss_denominator(part, config.algorithm, aggregation) / total
        grad_sum = jax.tree.map(lambda g, x: g + weight * x.astype(g.dtype), grad_sum, grads)
        by_kind = {
            "count": 1.0,
            "row": row_weight,
            "token": loss_token_count(part, config.algorithm) / total_tokens,
        }
        metric_sum = {
            key: metric_sum[key] + by_kind[metric_weighting(key, aggregation)] * metrics[key]
            for key in metrics
        }
        return (loss_sum + weight * loss, metric_sum, grad_sum), None

    first = jax.tree.map(lambda x: x[0], micro)
    metric_shapes = jax.eval_shape(
        lambda: batch_loss(params, teacher_params, first, model_config, config)[1]
    )
    zeros = (
        jnp.zeros((), jnp.float32),
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes),
        jax.tree.map(lambda p: jnp.zeros(p.shape, _accumulator_dtype(p.dtype)), params),
    )
    (loss, metrics, grads), _ = lax.scan(body, zeros, micro)
    return loss, metrics, grads


def loss_spike(loss: jax.Array, recent_losses: jax.Array, factor: float) -> jax.Array:
    """[] bool: the guard is on, the window [W] is full and |loss| > factor x mean |recent|.

    Magnitudes, because a GRPO loss can be negative; the mean has a 1e-8 floor so an all-zero
    history does not make every step a spike."""
    if factor <= 0:
        return jnp.zeros((), bool)
    full = jnp.all(jnp.isfinite(recent_losses))
    reference = jnp.maximum(jnp.mean(jnp.abs(recent_losses)), 1e-8)
    return full & (jnp.abs(loss) > factor * reference)


def _push_loss(recent_losses: jax.Array, loss: jax.Array) -> jax.Array:
    """Newest first. Spikes enter too: a lasting change of level is accepted after W steps
    instead of skipping every update from then on."""
    pushed = jnp.concatenate([loss[None].astype(jnp.float32), recent_losses[:-1]])
    return jnp.where(jnp.isfinite(loss), pushed, recent_losses)


def train_step(
    state: TrainState,
    batch: RolloutBatch,
    *,
    model_config: ModelConfig,
    config: StepConfig,
    optimizer: optax.GradientTransformation,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """loss -> grads -> (skip if non-finite or a loss spike) optimizer update -> EMA teacher."""
    loss, metrics, grads = accumulated_grads(
        state.params, state.teacher_params, batch, model_config, config
    )
    if config.nan_grad_at_step:
        poisoned = state.step + 1 == config.nan_grad_at_step
        grads = jax.tree.map(lambda g: jnp.where(poisoned, jnp.nan, g), grads)
    spike = loss_spike(loss, state.recent_losses, config.loss_spike_factor)
    # One reduction over every gradient entry serves the finite check (a NaN or inf anywhere
    # makes the norm non-finite; so does a norm above ~1.8e19, beyond float32's sum of squares),
    # the optimizer's clipping and the metric.
    grad_norm = optax.tree.norm(grads)
    apply = jnp.isfinite(grad_norm) & jnp.isfinite(loss) & ~spike

    def update(params_and_opt_state):
        params, opt_state = params_and_opt_state
        updates, opt_state = optax.with_extra_args_support(optimizer).update(
            grads, opt_state, params, grad_norm=grad_norm
        )
        return optax.apply_updates(params, updates), opt_state

    # A cond rather than a select per leaf: a skipped step costs nothing extra and a taken one
    # does not read and write every parameter and moment a second time.
    params, opt_state = lax.cond(
        apply, update, lambda unchanged: unchanged, (state.params, state.opt_state)
    )
    teacher = state.teacher_params
    if teacher is not None and config.teacher_tau > 0:
        teacher = jax.tree.map(lambda t, s: ema_leaf(t, s, config.teacher_tau), teacher, params)
    metrics = dict(metrics)
    metrics["train/loss"] = loss
    metrics["train/grad_norm"] = grad_norm
    metrics["train/update_skipped"] = (~apply).astype(jnp.float32)
    metrics["train/loss_spike"] = spike.astype(jnp.float32)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        teacher_params=teacher,
        skipped_updates=state.skipped_updates + (~apply).astype(jnp.int32),
        recent_losses=_push_loss(state.recent_losses, loss),
    )
    return new_state, metrics


def state_shardings(state: TrainState, mesh):
    """NamedShardings for a TrainState (params, teacher and Adam moments by the same rules)."""
    return sharding.param_shardings(state, mesh)


def batch_shardings(batch: RolloutBatch, mesh):
    return jax.tree.map(lambda x: sharding.batch_sharding(mesh, x.ndim), batch)


def make_train_step(
    model_config: ModelConfig,
    config: StepConfig,
    optimizer: optax.GradientTransformation,
    mesh,
    state: TrainState,
    batch: RolloutBatch,
):
    """jit(train_step) with explicit in/out shardings for `state`/`batch`-shaped inputs.

    The state is donated: its buffers are reused for the new state."""

    def step(state, batch):
        # kernels XLA cannot partition run per device (splash attention); the layers gather
        # their FSDP-split weights one at a time
        with on_mesh(mesh, layer_spec=sharding.layer_param_spec):
            return train_step(
                state, batch, model_config=model_config, config=config, optimizer=optimizer
            )

    state_sh = state_shardings(state, mesh)
    return jax.jit(
        step,
        in_shardings=(state_sh, batch_shardings(batch, mesh)),
        out_shardings=(state_sh, sharding.replicated(mesh)),
        donate_argnums=0,
    )
