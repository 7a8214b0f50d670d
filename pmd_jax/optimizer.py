"""The student's optimizer: optax AdamW with grad clipping and a warmup schedule.

Gradient accumulation and the non-finite guard live in the train step (`pmd_jax.train_step`),
where the micro-batch token counts are known.
"""

from __future__ import annotations

import dataclasses

import jax
import optax

SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "adafactor")
MOMENT_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyperparameters (METHOD section 8: lr 1e-5, warmup 10, grad clip 1.0).

    Memory: AdamW keeps two moments per parameter in `moment_dtype` (float32 by default, also
    for bfloat16 parameters: 8 bytes per parameter; "bfloat16" halves that at the cost of
    moment precision). `name="adafactor"` keeps factored second moments instead (row and column
    statistics of each matrix, no first moment): the optimizer state all but disappears, for
    chips whose HBM the weights and the teacher already fill (docs/PLANS.md)."""

    name: str = "adamw"  # adamw | adafactor
    moment_dtype: str = "float32"  # AdamW moments and update arithmetic: float32 | bfloat16
    learning_rate: float = 1e-5
    warmup_steps: int = 10  # linear from 0 to learning_rate
    schedule: str = "constant"  # after warmup: "constant" or "cosine" (to final_lr_fraction)
    decay_steps: int = 0  # cosine length after warmup; 0 = the run's total steps
    final_lr_fraction: float = 0.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # global norm; 0 = off
    micro_batches: int = 1  # gradient accumulation: the batch is split into this many parts
    loss_spike_factor: float = 0.0  # skip an update when |loss| > this x mean |last W losses|
    loss_spike_window: int = 8  # W; the guard waits until W finite losses were seen

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"OptimizerConfig.name={self.name!r}; expected {OPTIMIZERS}")
        if self.moment_dtype not in MOMENT_DTYPES:
            raise ValueError(
                f"OptimizerConfig.moment_dtype={self.moment_dtype!r}; expected {MOMENT_DTYPES}"
            )
        if self.name == "adafactor" and self.moment_dtype != "float32":
            raise ValueError(
                "OptimizerConfig.moment_dtype applies to adamw; adafactor keeps float32 factors"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"OptimizerConfig.schedule={self.schedule!r}; expected {SCHEDULES}")
        if self.learning_rate < 0 or self.warmup_steps < 0 or self.micro_batches < 1:
            raise ValueError(
                "OptimizerConfig: learning_rate and warmup_steps must be >= 0, micro_batches >= 1"
            )
        if self.loss_spike_factor < 0 or self.loss_spike_window < 1:
            raise ValueError(
                f"OptimizerConfig: loss_spike_factor={self.loss_spike_factor} must be >= 0 "
                f"(0 = off) and loss_spike_window={self.loss_spike_window} >= 1"
            )


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to the peak, then constant or cosine decay over the remaining steps."""
    warmup = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
    if config.schedule == "constant":
        after = optax.constant_schedule(config.learning_rate)
    else:
        decay_steps = config.decay_steps or max(total_steps - config.warmup_steps, 1)
        after = optax.cosine_decay_schedule(
            config.learning_rate, decay_steps, alpha=config.final_lr_fraction
        )
    if config.warmup_steps == 0:
        return after
    return optax.join_schedules([warmup, after], [config.warmup_steps])


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW(schedule); weight decay skips 1-D leaves (norm scales).

    `update` accepts `grad_norm=` (the global norm of the gradients, when the caller has it).
    With name="adafactor": clip -> Adafactor (factored second moments, no momentum, the same
    schedule and AdamW's decoupled weight decay); b1/b2/eps are AdamW's and not used there."""
    schedule = learning_rate_schedule(config, total_steps)
    if config.name == "adafactor":
        # Decoupled weight decay scaled by the learning rate, as in AdamW.
        rule = in_dtype(
            optax.chain(
                optax.scale_by_factored_rms(),
                optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
                optax.scale_by_learning_rate(schedule),
            ),
            "float32",
        )
    else:
        rule = in_dtype(
            optax.adamw(
                schedule,
                b1=config.b1,
                b2=config.b2,
                eps=config.eps,
                weight_decay=config.weight_decay,
                mask=decay_mask,
            ),
            config.moment_dtype,
        )
    if config.grad_clip > 0:
        return optax.chain(clip_by_global_norm(config.grad_clip), rule)
    return rule


def in_dtype(inner: optax.GradientTransformation, dtype: str) -> optax.GradientTransformation:
    """`inner` run on float32 (or bfloat16) copies of gradients and parameters, so its state is
    in that dtype whatever the parameters' (bfloat16 parameters get float32 Adam moments). The
    updates come back in that dtype; `optax.apply_updates` casts them to each parameter's."""
    dtype = jax.numpy.dtype(dtype)

    def cast(tree):
        return None if tree is None else jax.tree.map(lambda x: x.astype(dtype), tree)

    def init_fn(params):
        return inner.init(cast(params))

    def update_fn(updates, state, params=None):
        return inner.update(cast(updates), state, cast(params))

    return optax.GradientTransformation(init_fn, update_fn)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """optax.clip_by_global_norm (same arithmetic, same empty state, so checkpoints match) that
    takes the gradients' global norm from the caller: `optimizer.update(grads, state, params,
    grad_norm=n)`. The train step computes that norm once for its finite check and its metric;
    without it the clip would read every gradient entry again. Without `grad_norm` it computes
    the norm itself."""

    def update_fn(updates, state, params=None, *, grad_norm=None, **extra_args):
        del params, extra_args
        norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
        trigger = norm < max_norm

        def clip(t):
            return jax.lax.select(trigger, t, (t / norm.astype(t.dtype)) * max_norm)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def decay_mask(params):
    """True for weight matrices (kernels, embeddings); norm scales and biases are not decayed."""

    def leaf(path, x) -> bool:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return name.endswith("kernel") or name.endswith("embedding")

    return jax.tree_util.tree_map_with_path(leaf, params)
