"""Losses: parity with numpy float64 (values and gradients), masks, stop-gradient, chunking."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pmd_jax.losses import (
    AGGREGATIONS,
    LossConfig,
    distill_divergence,
    group_advantages,
    grpo_loss,
    self_distillation_loss,
    self_distillation_loss_from_hidden,
    token_logprobs,
)

N, T, V, J = 4, 5, 64, 2
COMPLEX_STEP = 1e-30


# ---------------------------------------------------------------- numpy float64 references


def _np_log_softmax(x):
    shifted = x - x.real.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _np_divergence(student_logits, teacher_logits, alpha, top_k, temperature=1.0):
    """[..., V] -> [...]; written in probability space, independent of the jax formulation."""
    student = _np_log_softmax(student_logits / temperature)
    teacher = _np_log_softmax(teacher_logits / temperature)
    if top_k is not None:
        ids = np.argsort(-student_logits.real, axis=-1)[..., :top_k]
        student, teacher = (np.take_along_axis(x, ids, -1) for x in (student, teacher))
        student = np.concatenate([student, np.log1p(-np.exp(student).sum(-1))[..., None]], -1)
        teacher = np.concatenate([teacher, np.log1p(-np.exp(teacher).sum(-1))[..., None]], -1)
    p_s, p_t = np.exp(student), np.exp(teacher)
    if alpha == 0.0:
        return (p_t * np.log(p_t / p_s)).sum(-1)
    if alpha == 1.0:
        return (p_s * np.log(p_s / p_t)).sum(-1)
    mix = (1 - alpha) * p_s + alpha * p_t
    return (1 - alpha) * (p_s * np.log(p_s / mix)).sum(-1) + alpha * (p_t * np.log(p_t / mix)).sum(
        -1
    )


def _np_token_logprobs(logits, tokens, temperature):
    return np.take_along_axis(_np_log_softmax(logits / temperature), tokens[..., None], -1)[..., 0]


def _np_coefficients(mask, aggregation):
    """c [N, T] with loss = sum c * term: token mean, or the mean over all N rows of each row's
    token mean / token sum (rows without tokens count as 0)."""
    mask = mask.astype(np.float64)
    if aggregation == "token_mean":
        return mask / max(mask.sum(), 1.0)
    if aggregation == "seq_mean_token_mean":
        return mask / np.maximum(mask.sum(1, keepdims=True), 1.0) / mask.shape[0]
    assert aggregation == "seq_mean_token_sum", aggregation
    return mask / mask.shape[0]


def _np_distill_terms(student_logits, teacher_logits, inputs, cfg, weight=None):
    """Per-token contributions [N, T] whose sum is the loss, and the (detached) weights [N, T].

    weight=None computes the weights at `student_logits`; pass them to hold them fixed.
    The contributions follow cfg.aggregation.
    """
    mask = inputs["response_mask"] & inputs["sample_mask"][:, None]
    if weight is None:
        now = _np_token_logprobs(student_logits, inputs["tokens"], cfg.temperature)
        weight = np.minimum(np.exp(now - inputs["old"]), cfg.is_clip) * np.minimum(
            np.exp(inputs["old"] - inputs["sampler"]), cfg.rollout_correction_clip
        )
    div = _np_divergence(student_logits, teacher_logits, cfg.alpha, cfg.top_k, cfg.temperature)
    return np.where(mask, weight * div, 0.0) * _np_coefficients(mask, cfg.aggregation), weight


def _complex_step_grad(terms_fn, x):
    """d sum(terms_fn(x)) / dx by complex-step differentiation: exact to float64 rounding.

    Assumes term [..] depends only on row x[.., :], so perturbing column j of every row at once
    gives all rows' partials in one call.
    """
    grad = np.zeros_like(x)
    for j in range(x.shape[-1]):
        step = np.zeros(x.shape, complex)
        step[..., j] = 1j * COMPLEX_STEP
        terms = terms_fn(x + step)
        grad[..., j] = terms.imag / COMPLEX_STEP
    return grad


def _np_grpo_terms(logprobs, inputs, cfg):
    """Per-token GRPO loss terms [N, T] (sum = loss); branches chosen on real parts so that a
    complex-step perturbation of `logprobs` carries the derivative through."""
    rewards = inputs["rewards"].reshape(-1, J)
    adv = rewards - rewards.mean(1, keepdims=True)
    if cfg.std_normalise:
        adv = adv / (rewards.std(1, ddof=1, keepdims=True) + 1e-6)
    adv = adv.reshape(-1, 1)
    mask = inputs["response_mask"]
    ratio = np.exp(logprobs - inputs["old"])
    low, high = 1 - cfg.clip_low, 1 + cfg.clip_high
    clipped_ratio = np.where(ratio.real < low, low, np.where(ratio.real > high, high, ratio))
    unclipped, clipped = -adv * ratio, -adv * clipped_ratio
    loss = np.where(unclipped.real >= clipped.real, unclipped, clipped)
    dual = -adv * cfg.dual_clip
    loss = np.where((adv < 0) & (dual < loss.real), dual, loss)
    loss = loss * np.minimum(np.exp(inputs["old"] - inputs["sampler"]), cfg.rollout_correction_clip)
    kl = np.exp(inputs["ref"] - logprobs) - (inputs["ref"] - logprobs) - 1
    loss = loss + cfg.kl_coef * kl - cfg.entropy_coef * inputs["entropy"]
    return np.where(mask, loss, 0.0) * _np_coefficients(mask, cfg.aggregation)


# ---------------------------------------------------------------- inputs


def _jit_value_and_grad(fn, *args, **kwargs):
    """jit'd value_and_grad: one compile per test instead of one per primitive (eager mode)."""
    return jax.jit(jax.value_and_grad(fn, *args, **kwargs))


def _distill_inputs(seed=0):
    rng = np.random.default_rng(seed)
    response_mask = rng.random((N, T)) < 0.7
    response_mask[0] = True
    return {
        "student": 3.0 * rng.standard_normal((N, T, V)),
        "teacher": 3.0 * rng.standard_normal((N, T, V)),
        "tokens": rng.integers(0, V, (N, T)),
        "response_mask": response_mask,
        "sample_mask": np.array([True, False, True, True]),
        "old": -4.0 + rng.standard_normal((N, T)),
        "sampler": -4.0 + rng.standard_normal((N, T)),
    }


def _jax_distill_loss(cfg, inputs):
    def loss_fn(student, teacher):
        return self_distillation_loss(
            student,
            teacher,
            jnp.asarray(inputs["tokens"]),
            jnp.asarray(inputs["response_mask"]),
            jnp.asarray(inputs["sample_mask"]),
            jnp.asarray(inputs["old"]),
            jnp.asarray(inputs["sampler"]),
            cfg,
        )

    return loss_fn


def _grpo_inputs(seed=0):
    rng = np.random.default_rng(seed)
    response_mask = rng.random((N, T)) < 0.8
    logprobs = -2.0 + rng.standard_normal((N, T))
    return {
        "logprobs": logprobs,
        "old": logprobs + 0.4 * rng.standard_normal((N, T)),  # ratios on both sides of the clips
        "sampler": logprobs + 0.4 * rng.standard_normal((N, T)),
        "ref": logprobs + 0.3 * rng.standard_normal((N, T)),
        "entropy": rng.random((N, T)),
        "rewards": np.array([1.0, 0.0, 0.3, 0.9]),
        "response_mask": response_mask,
    }


# ---------------------------------------------------------------- divergence


def test_full_vocab_alpha0_is_forward_kl_and_alpha1_is_reverse_kl():
    inputs = _distill_inputs()
    student = jnp.asarray(inputs["student"].reshape(-1, V), jnp.float32)
    teacher = jnp.asarray(inputs["teacher"].reshape(-1, V), jnp.float32)
    log_s, log_t = jax.nn.log_softmax(student), jax.nn.log_softmax(teacher)
    forward_kl = jnp.sum(jnp.exp(log_t) * (log_t - log_s), -1)
    reverse_kl = jnp.sum(jnp.exp(log_s) * (log_s - log_t), -1)
    kl = lambda a: distill_divergence(student, teacher, alpha=a, top_k=None)
    np.testing.assert_allclose(kl(0.0), forward_kl, rtol=1e-5)
    np.testing.assert_allclose(kl(1.0), reverse_kl, rtol=1e-5)
    assert not np.allclose(forward_kl, reverse_kl, rtol=1e-2)  # the test can tell them apart


def test_jsd_is_symmetric_nonnegative_and_bounded_by_log2():
    inputs = _distill_inputs()
    a = jnp.asarray(inputs["student"].reshape(-1, V), jnp.float32)
    b = jnp.asarray(inputs["teacher"].reshape(-1, V), jnp.float32)
    # rows that are near-disjoint point masses drive the JSD towards log 2
    peaked = jnp.zeros((2, V)).at[0, 0].set(60.0).at[1, 1].set(60.0)
    a, b = jnp.concatenate([a, peaked]), jnp.concatenate([b, peaked[::-1]])

    @jax.jit
    def jsds(x, y):
        full = lambda p, q: distill_divergence(p, q, alpha=0.5, top_k=None)
        return full(x, y), full(y, x), distill_divergence(x, y, alpha=0.5, top_k=5)

    jsd_ab, jsd_ba, jsd_topk = (np.asarray(j) for j in jsds(a, b))
    np.testing.assert_allclose(jsd_ab, jsd_ba, rtol=1e-5, atol=1e-7)
    for jsd in (jsd_ab, jsd_topk):
        assert np.all(jsd >= -1e-6) and np.all(jsd <= math.log(2.0) + 1e-6)
    np.testing.assert_allclose(jsd_ab[-2:], math.log(2.0), rtol=1e-4)


def test_tail_bucket_stays_finite_when_topk_holds_all_mass():
    logits = jnp.zeros((3, V)).at[:, :5].set(jnp.array([80.0, 79.0, 78.0, 77.0, 76.0]))
    teacher = jnp.flip(logits, axis=-1)
    # alpha = 0.5 exercises both tails, their exps and the mixture
    fn = lambda s: jnp.sum(distill_divergence(s, teacher, alpha=0.5, top_k=5))
    value, grad = _jit_value_and_grad(fn)(logits)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert np.abs(np.asarray(grad)).max() > 0  # the student still gets a signal


def test_divergence_float32_tracks_float64():
    inputs = _distill_inputs()
    student, teacher = inputs["student"].reshape(-1, V), inputs["teacher"].reshape(-1, V)
    fn = jax.jit(lambda s, t: distill_divergence(s, t, alpha=0.5, top_k=5))
    got = fn(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32))
    # float32 log-softmax of logits ~ +-10 has absolute error ~1e-6 per term
    np.testing.assert_allclose(got, _np_divergence(student, teacher, 0.5, 5), rtol=1e-4, atol=1e-5)


def test_bad_top_k_names_the_problem():
    logits = jnp.zeros((2, V))
    with pytest.raises(ValueError, match="top_k"):
        distill_divergence(logits, logits, alpha=1.0, top_k=V)
    with pytest.raises(ValueError, match="alpha"):
        LossConfig(alpha=1.5)


# ---------------------------------------------------------------- self-distillation loss


@pytest.mark.parametrize("top_k", [5, None])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_self_distillation_loss_and_gradient_match_numpy_float64(alpha, top_k):
    """Value and student gradient vs numpy float64; the teacher logits get exactly zero gradient."""
    inputs = _distill_inputs(seed=2)
    cfg = LossConfig(alpha=alpha, top_k=top_k, temperature=0.8)
    # old / sampler log-probs near the current ones, so both clips bind on some tokens
    rng = np.random.default_rng(7)
    now = _np_token_logprobs(inputs["student"], inputs["tokens"], cfg.temperature)
    inputs["old"] = now + rng.standard_normal((N, T))
    inputs["sampler"] = inputs["old"] + rng.standard_normal((N, T))
    with jax.enable_x64(True):
        loss_fn = _jax_distill_loss(cfg, inputs)
        student, teacher = jnp.asarray(inputs["student"]), jnp.asarray(inputs["teacher"])
        value_and_grads = _jit_value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
        (loss, metrics), (grad, teacher_grad) = value_and_grads(student, teacher)
    assert np.all(np.asarray(teacher_grad) == 0.0)
    terms, weight = _np_distill_terms(inputs["student"], inputs["teacher"], inputs, cfg)
    assert weight.min() < 0.5 and weight.max() > 2.0
    np.testing.assert_allclose(loss, terms.sum(), rtol=1e-5)
    frozen = lambda s: _np_distill_terms(s, inputs["teacher"], inputs, cfg, weight)[0]
    np.testing.assert_allclose(
        grad, _complex_step_grad(frozen, inputs["student"]), rtol=1e-5, atol=1e-12
    )
    mask = inputs["response_mask"] & inputs["sample_mask"][:, None]
    assert metrics["distill/token_count"] == mask.sum()
    assert metrics["distill/signal_fraction"] == 0.75
    teacher_lp = _np_token_logprobs(inputs["teacher"], inputs["tokens"], 0.8)
    np.testing.assert_allclose(metrics["distill/teacher_logprob"], teacher_lp[mask].mean(), 1e-6)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_each_aggregation_matches_numpy_float64_on_ragged_rows(aggregation):
    """Rows: full, without signal, empty response, ragged. Loss value and student gradient vs
    numpy float64 of the mode's formula; metrics other than the loss stay token means."""
    inputs = _distill_inputs(seed=2)
    inputs["response_mask"][2] = False
    cfg = LossConfig(alpha=0.5, top_k=5, temperature=0.8, aggregation=aggregation)
    with jax.enable_x64(True):
        loss_fn = _jax_distill_loss(cfg, inputs)
        value_and_grad = _jit_value_and_grad(loss_fn, has_aux=True)
        (loss, metrics), grad = value_and_grad(
            jnp.asarray(inputs["student"]), jnp.asarray(inputs["teacher"])
        )
    terms, weight = _np_distill_terms(inputs["student"], inputs["teacher"], inputs, cfg)
    np.testing.assert_allclose(loss, terms.sum(), rtol=1e-10)
    frozen = lambda s: _np_distill_terms(s, inputs["teacher"], inputs, cfg, weight)[0]
    np.testing.assert_allclose(
        grad, _complex_step_grad(frozen, inputs["student"]), rtol=1e-8, atol=1e-14
    )
    assert metrics["distill/loss"] == loss
    mask = inputs["response_mask"] & inputs["sample_mask"][:, None]
    div = _np_divergence(inputs["student"], inputs["teacher"], 0.5, 5, 0.8)
    np.testing.assert_allclose(metrics["distill/divergence"], div[mask].mean(), rtol=1e-10)


def test_unknown_aggregation_is_refused_by_name():
    with pytest.raises(ValueError, match="LossConfig.aggregation='seq-mean-token-mean'"):
        LossConfig(aggregation="seq-mean-token-mean")


def test_all_masked_batch_gives_zero_loss_and_zero_gradients():
    inputs = _distill_inputs()
    inputs["sample_mask"] = np.zeros(N, bool)
    student = jnp.asarray(inputs["student"], jnp.float32)
    teacher = jnp.asarray(inputs["teacher"], jnp.float32)
    loss_fn = _jax_distill_loss(LossConfig(alpha=0.5, top_k=5), inputs)
    (loss, metrics), grad = _jit_value_and_grad(loss_fn, has_aux=True)(student, teacher)
    assert loss == 0.0 and np.all(np.asarray(grad) == 0.0)
    assert all(np.isfinite(v) for v in metrics.values())
    assert metrics["distill/token_count"] == 0

    g = _grpo_inputs()
    cfg = LossConfig(kl_coef=0.1, entropy_coef=0.01)
    fn = lambda lp: grpo_loss(
        lp, g["old"], g["sampler"], g["rewards"], J, np.zeros((N, T), bool), cfg,
        ref_logprobs=g["ref"], entropy=g["entropy"],
    )[0]  # fmt: skip
    loss, grad = _jit_value_and_grad(fn)(jnp.asarray(g["logprobs"], jnp.float32))
    assert loss == 0.0 and np.all(np.asarray(grad) == 0.0)


# ---------------------------------------------------------------- chunked (hidden-state) path


def _hidden_inputs(t=7, d=8):
    rng = np.random.default_rng(3)
    return (
        jnp.asarray(rng.standard_normal((N, t, d)), jnp.float32),
        jnp.asarray(rng.standard_normal((N, t, d)), jnp.float32),
        jnp.asarray(rng.standard_normal((d, V)), jnp.float32),
        jnp.asarray(rng.standard_normal((d, V)), jnp.float32),
        jnp.asarray(rng.integers(0, V, (N, t))),
    )


def test_token_logprobs_matches_full_log_softmax_with_ragged_chunks():
    hidden, _, lm_head, _, tokens = _hidden_inputs(t=7)

    def full(h, w):
        logp = jax.nn.log_softmax((h @ w) / 0.7)
        return jnp.take_along_axis(logp, tokens[..., None], -1)[..., 0]

    chunked = lambda h, w: token_logprobs(h, w, tokens, temperature=0.7, chunk=3)
    np.testing.assert_allclose(chunked(hidden, lm_head), full(hidden, lm_head), rtol=1e-5)
    cot = jnp.asarray(np.random.default_rng(4).standard_normal((N, 7)), jnp.float32)
    grads = lambda f: jax.jit(jax.grad(lambda h, w: jnp.sum(f(h, w) * cot), (0, 1)))(
        hidden, lm_head
    )
    for got, want in zip(grads(chunked), grads(full), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _from_hidden_and_full(t=7, chunk=3, alpha=0.5, top_k=5, aggregation="token_mean"):
    student_h, teacher_h, student_w, teacher_w, tokens = _hidden_inputs(t=t)
    rng = np.random.default_rng(5)
    rest = (
        jnp.asarray(rng.random((N, t)) < 0.8),
        jnp.asarray([True, True, False, True]),
        jnp.asarray(-3.0 + rng.standard_normal((N, t)), jnp.float32),
        jnp.asarray(-3.0 + rng.standard_normal((N, t)), jnp.float32),
        LossConfig(alpha=alpha, top_k=top_k, aggregation=aggregation),
    )
    chunked = lambda h, w: self_distillation_loss_from_hidden(
        h, teacher_h, w, teacher_w, tokens, *rest, chunk=chunk
    )[0]
    full = lambda h, w: self_distillation_loss(h @ w, teacher_h @ teacher_w, tokens, *rest)[0]
    return chunked, full, student_h, student_w


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_chunked_distillation_loss_matches_full_logits_loss(aggregation):
    chunked, full, student_h, student_w = _from_hidden_and_full(aggregation=aggregation)
    value_c, grads_c = _jit_value_and_grad(chunked, argnums=(0, 1))(student_h, student_w)
    value_f, grads_f = _jit_value_and_grad(full, argnums=(0, 1))(student_h, student_w)
    np.testing.assert_allclose(value_c, value_f, rtol=1e-5)
    for got, want in zip(grads_c, grads_f, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _largest_intermediate(jaxpr) -> int:
    """Largest array (elements) produced anywhere in a jaxpr, sub-jaxprs included."""
    largest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            largest = max(largest, math.prod(getattr(var.aval, "shape", ())))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    largest = max(largest, _largest_intermediate(inner))
    return largest


def test_chunked_distillation_gradient_never_builds_full_logits():
    t, chunk = 12, 4
    chunked, full, student_h, student_w = _from_hidden_and_full(t=t, chunk=chunk)
    grad_jaxpr = lambda f: jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(student_h, student_w).jaxpr
    assert _largest_intermediate(grad_jaxpr(full)) >= N * t * V  # the probe sees full logits
    assert _largest_intermediate(grad_jaxpr(chunked)) <= N * chunk * V


@pytest.mark.parametrize(
    "hidden_dtype, weight_dtype",
    [("float32", "float32"), ("bfloat16", "bfloat16"), ("bfloat16", "float32")],
    ids=["f32", "bf16", "bf16_compute_f32_weights"],
)
def test_logit_gradients_match_autodiff_in_each_dtype(hidden_dtype, weight_dtype):
    """The hand-written backward of the chunk logits equals autodiff's (to its dtype's rounding)
    and hands each gradient back in its primal's dtype."""
    from pmd_jax.losses import _chunk_logits

    rng = np.random.default_rng(11)
    hidden = jnp.asarray(rng.standard_normal((3, 8, 16)), hidden_dtype)
    lm_head = jnp.asarray(0.2 * rng.standard_normal((16, 96)), weight_dtype)
    cot = jnp.asarray(rng.standard_normal((3, 8, 96)), jnp.float32)

    def autodiff(h, w):
        return jnp.dot(h, w.astype(h.dtype), preferred_element_type=jnp.float32)

    grads = lambda f: jax.grad(lambda h, w: jnp.sum(f(h, w) * cot), (0, 1))(hidden, lm_head)
    ours, reference = grads(_chunk_logits), grads(autodiff)
    tol = 1e-6 if weight_dtype == hidden_dtype == "float32" else 2e-2
    for got, want, primal in zip(ours, reference, (hidden, lm_head), strict=True):
        assert got.dtype == primal.dtype
        scale = float(jnp.max(jnp.abs(want.astype(jnp.float32))))
        err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32))))
        assert err <= tol * scale, (err, scale)


def test_bfloat16_lm_head_gradient_has_no_float32_vocab_buffer():
    """With bfloat16 weights no float32 [D, V] array appears in the backward pass (the buffer
    that dominated the Qwen3-8B step's temporaries); autodiff's plain dot does build one."""
    from pmd_jax.losses import _chunk_logits

    hidden = jnp.ones((2, 4, 16), jnp.bfloat16)
    lm_head = jnp.ones((16, 96), jnp.bfloat16)

    def float32_vocab_arrays(f):
        jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(f(hidden, w)).astype(jnp.float32)))(
            lm_head
        ).jaxpr
        return [
            v.aval for e in jaxpr.eqns for v in e.outvars
            if v.aval.shape == (16, 96) and v.aval.dtype == jnp.float32
        ]  # fmt: skip

    plain = lambda h, w: jnp.dot(h, w, preferred_element_type=jnp.float32)
    assert float32_vocab_arrays(plain), "the probe should see autodiff's float32 [D, V]"
    assert not float32_vocab_arrays(_chunk_logits)


# ---------------------------------------------------------------- GRPO


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(),
        LossConfig(std_normalise=True, kl_coef=0.1, entropy_coef=0.01),
        LossConfig(kl_coef=0.1, entropy_coef=0.01, aggregation="seq_mean_token_mean"),
        LossConfig(kl_coef=0.1, entropy_coef=0.01, aggregation="seq_mean_token_sum"),
    ],
    ids=["dr_grpo", "std_kl_entropy", "seq_mean_token_mean", "seq_mean_token_sum"],
)
def test_grpo_loss_and_gradient_match_numpy_float64(cfg):
    g = _grpo_inputs()
    g["response_mask"][1] = False  # an empty response: 0 in the row modes' mean over N rows
    with jax.enable_x64(True):
        fn = lambda lp: grpo_loss(
            lp, jnp.asarray(g["old"]), jnp.asarray(g["sampler"]), jnp.asarray(g["rewards"]), J,
            jnp.asarray(g["response_mask"]), cfg, ref_logprobs=jnp.asarray(g["ref"]),
            entropy=jnp.asarray(g["entropy"]),
        )  # fmt: skip
        (loss, metrics), grad = _jit_value_and_grad(fn, has_aux=True)(jnp.asarray(g["logprobs"]))
    np.testing.assert_allclose(loss, _np_grpo_terms(g["logprobs"], g, cfg).sum(), rtol=1e-5)
    # each token's term depends only on its own log-prob: one complex step covers all of them
    terms = _np_grpo_terms(g["logprobs"] + 1j * COMPLEX_STEP, g, cfg)
    reference_grad = terms.imag / COMPLEX_STEP
    np.testing.assert_allclose(grad, reference_grad, rtol=1e-5, atol=1e-12)
    assert (
        0.0 < float(metrics["grpo/clip_fraction"]) < 1.0
    )  # both clipped and unclipped tokens occur


def test_grpo_clipping_and_dual_clip_exact_values():
    # rewards [1, 0] -> advantages [+0.5, -0.5]; ratios chosen to hit each branch
    ratios = np.array([[2.0, 1.1], [5.0, 0.5]])
    old = np.full((2, 2), -1.0)
    logprobs = jnp.asarray(old + np.log(ratios), jnp.float32)
    fn = lambda lp: grpo_loss(
        lp, old, None, jnp.array([1.0, 0.0]), 2, np.ones((2, 2), bool), LossConfig()
    )[0]
    loss, grad = _jit_value_and_grad(fn)(logprobs)
    # [+A clipped at 1.28, +A unclipped, -A dual-clipped at 3, -A clipped at 0.8] / 4 tokens
    np.testing.assert_allclose(loss, (-0.5 * 1.28 - 0.5 * 1.1 + 0.5 * 3.0 + 0.5 * 0.8) / 4, 1e-6)
    np.testing.assert_allclose(grad, [[0.0, -0.5 * 1.1 / 4], [0.0, 0.0]], rtol=1e-5, atol=1e-7)


def test_group_advantages_are_prompt_major():
    rewards = jnp.array([1.0, 0.0, 0.0, 0.0, 0.5, 0.5])
    by_three = [2 / 3, -1 / 3, -1 / 3, -1 / 3, 1 / 6, 1 / 6]
    np.testing.assert_allclose(group_advantages(rewards, 3, False), by_three, rtol=1e-6)
    np.testing.assert_allclose(group_advantages(rewards, 2, False), [0.5, -0.5, 0, 0, 0, 0])
    normalised = group_advantages(rewards, 2, True)
    np.testing.assert_allclose(normalised[:2], np.array([0.5, -0.5]) / (0.5**0.5 + 1e-6))


def test_grpo_optional_terms_require_their_inputs():
    g = _grpo_inputs()
    args = (g["logprobs"], g["old"], g["sampler"], g["rewards"], J, g["response_mask"])
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(*args, LossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="entropy"):
        grpo_loss(*args, LossConfig(entropy_coef=0.1))
