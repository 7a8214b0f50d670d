"""Sampler: cache vs recompute parity, determinism, truncation frequencies, per-row stopping."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pmd_jax.losses import LossConfig, rollout_correction, sampled_logprobs
from pmd_jax.model.config import ModelConfig
from pmd_jax.model.transformer import forward, init_params, positions_from_mask
from pmd_jax.sampling import (
    SampleConfig,
    choose_tokens,
    left_pad,
    logprob_temperature,
    nucleus_threshold,
    prefill,
    prefill_widths,
    response_token_lists,
    sample,
    truncate_logits,
)

PROMPT_LENGTHS = (3, 7, 12, 5, 9, 1, 15, 10)


def _tiny(architecture: str, **overrides) -> ModelConfig:
    fields = dict(
        architecture=architecture,
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        qk_norm=architecture == "qwen3",
        qkv_bias=architecture == "qwen2",
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def _params(config: ModelConfig):
    params = init_params(config, jax.random.PRNGKey(0))
    # Larger weights give peaked, well-separated logits, so greedy argmax has no near-ties.
    return jax.tree_util.tree_map(lambda x: x * 3 if x.ndim >= 2 else x, params)


def _prompts(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 97, size=n).tolist() for n in PROMPT_LENGTHS]


def _greedy_by_recompute(params, config, prompts, steps):
    """Greedy decoding that re-runs the full forward each step (no cache); one padded shape."""
    seqs = [list(p) for p in prompts]
    logprobs = [[] for _ in prompts]
    width = max(map(len, prompts)) + steps
    for _ in range(steps):
        tokens, mask = left_pad(seqs, pad_id=0, length=width)
        logits = forward(params, config, tokens, mask)[:, -1]
        logp = jax.nn.log_softmax(logits, axis=-1)
        for row, token in enumerate(np.asarray(jnp.argmax(logits, axis=-1))):
            seqs[row].append(int(token))
            logprobs[row].append(float(logp[row, token]))
    return [s[len(p) :] for s, p in zip(seqs, prompts, strict=True)], logprobs


# Every option the decode step (pmd_jax/model/decode.py) re-implements outside the scanned Block:
# qk-norm (qwen3), q/k/v biases (qwen2), output and MLP biases with tied embeddings (llama).
DECODE_VARIANTS = {
    "llama": {},
    "qwen3": {},
    "qwen2": {},
    "llama-biases-tied": dict(qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=True),
}


@pytest.mark.parametrize("variant", DECODE_VARIANTS)
def test_greedy_with_cache_matches_full_recompute(variant):
    config = _tiny(variant.split("-")[0], **DECODE_VARIANTS[variant])
    params = _params(config)

    # Biases start at zero and norm scales at one: move them, so each one's place is checked.
    def perturb(path, x):
        if path[-1].key not in ("bias", "scale"):
            return x
        key = jax.random.fold_in(jax.random.PRNGKey(3), len(jax.tree_util.keystr(path)))
        return x + 0.2 * jax.random.normal(key, x.shape)

    params = jax.tree_util.tree_map_with_path(perturb, params)
    prompts = _prompts()
    tokens, mask = left_pad(prompts, pad_id=0, bucket=16)
    out = sample(
        params,
        config,
        tokens,
        mask,
        jax.random.PRNGKey(1),
        SampleConfig(max_new_tokens=32, temperature=0.0),
    )
    ref_tokens, ref_logprobs = _greedy_by_recompute(params, config, prompts, 32)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref_tokens))
    # float32 sums in another order (cache vs full recompute): median 1e-6, worst 1.3e-4 here.
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(ref_logprobs), atol=2e-4)
    assert np.all(np.asarray(out.lengths) == 32) and not np.any(np.asarray(out.stopped))


def test_prefill_widths_are_bucket_multiples_then_the_width():
    assert prefill_widths(768, 128) == (128, 256, 384, 512, 640, 768)
    assert prefill_widths(700, 128) == (128, 256, 384, 512, 640, 700)
    assert prefill_widths(128, 128) == (128,)
    assert prefill_widths(100, 128) == (100,)
    assert prefill_widths(768, 0) == (768,)


def test_windowed_prefill_equals_the_whole_width_and_skips_padding_columns():
    config = _tiny("llama")
    params = _params(config)
    prompts = _prompts()  # longest 15: with bucket 8 the 16-column window holds every prompt
    tokens, mask = left_pad(prompts, pad_id=0, length=64)
    positions = positions_from_mask(jnp.asarray(mask))
    args = (params, config, jnp.asarray(tokens), jnp.asarray(mask), positions)
    whole = prefill(*args, bucket=0)
    windowed = prefill(*args, bucket=8)
    np.testing.assert_allclose(whole[0], windowed[0], atol=1e-5)
    real = np.asarray(mask)[None, :, :, None, None]  # [1, B, T, 1, 1]
    for full, window in zip(whole[1:], windowed[1:], strict=True):
        assert full.shape == window.shape == (2, 8, 64, 2, 16)
        # Same numbers up to float32 sums over other widths (keys of size ~10 here: worst 8e-5).
        np.testing.assert_allclose(np.where(real, full, 0), np.where(real, window, 0), atol=2e-4)
        # The narrowest window was run: the 48 columns left of it hold zeros, not the pad
        # token's keys/values (which the whole-width prefill computes).
        assert not np.any(np.asarray(window)[:, :, :48]) and np.any(np.asarray(full)[:, :, :48])
        assert np.all(np.any(np.asarray(window)[:, :, 48:] != 0, axis=(0, 1, 3, 4)))
    # A mask with a hole: the window still starts at the first column any row uses (here 40).
    holed = np.asarray(mask).copy()
    holed[0, 40:55] = [True] + [False] * 14
    hole_args = (params, config, jnp.asarray(tokens), jnp.asarray(holed), positions)
    whole_holed, windowed_holed = prefill(*hole_args, bucket=0), prefill(*hole_args, bucket=8)
    np.testing.assert_allclose(whole_holed[0], windowed_holed[0], atol=1e-5)
    assert np.any(np.asarray(windowed_holed[1])[:, 0, 40]), "the window cut a used column"
    # And the sampler on that wide padding still decodes what full recomputation decodes.
    out = sample(
        params,
        config,
        jnp.asarray(tokens),
        jnp.asarray(mask),
        jax.random.PRNGKey(1),
        SampleConfig(max_new_tokens=8, temperature=0.0, prefill_bucket=8),
    )
    ref_tokens, ref_logprobs = _greedy_by_recompute(params, config, prompts, 8)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref_tokens))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(ref_logprobs), atol=2e-4)


def test_same_rng_gives_same_samples_and_groups_differ():
    config = _tiny("llama")
    params = _params(config)
    tokens, mask = left_pad(_prompts()[:2], pad_id=0, bucket=16)
    sample_config = SampleConfig(max_new_tokens=16, temperature=1.0, num_samples=4)
    params = jax.tree_util.tree_map(lambda x: x / 3, params)  # flatter logits: real randomness
    first = sample(params, config, tokens, mask, jax.random.PRNGKey(7), sample_config)
    again = sample(params, config, tokens, mask, jax.random.PRNGKey(7), sample_config)
    other = sample(params, config, tokens, mask, jax.random.PRNGKey(8), sample_config)
    assert first.tokens.shape == (8, 16)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    np.testing.assert_array_equal(first.logprobs, again.logprobs)
    assert not np.array_equal(first.tokens, other.tokens)
    rollouts = np.asarray(first.tokens)
    assert len({tuple(r) for r in rollouts[:4]}) > 1, "the 4 rollouts of one prompt are identical"


def test_group_rows_are_prompt_major_under_greedy():
    config = _tiny("llama")
    params = _params(config)
    tokens, mask = left_pad(_prompts()[:3], pad_id=0, bucket=16)
    single = sample(
        params,
        config,
        tokens,
        mask,
        jax.random.PRNGKey(0),
        SampleConfig(max_new_tokens=8, temperature=0.0),
    )
    group = sample(
        params,
        config,
        tokens,
        mask,
        jax.random.PRNGKey(0),
        SampleConfig(max_new_tokens=8, temperature=0.0, num_samples=3),
    )
    np.testing.assert_array_equal(np.repeat(np.asarray(single.tokens), 3, axis=0), group.tokens)


def _free_greedy_run():
    """A tiny llama, 8 left-padded prompts and their 24 greedy tokens without any stop."""
    config = _tiny("llama")
    params = _params(config)
    prompts = _prompts()
    tokens, mask = left_pad(prompts, pad_id=0, bucket=16)
    greedy = SampleConfig(max_new_tokens=24, temperature=0.0)
    free = sample(params, config, tokens, mask, jax.random.PRNGKey(0), greedy).tokens
    return config, params, prompts, tokens, mask, np.asarray(free)


def test_stop_token_ends_each_row_independently():
    config, params, prompts, tokens, mask, free = _free_greedy_run()
    stop = int(free[0, 5])  # a token row 0 emits at step 5; other rows emit it later or never
    out = sample(
        params,
        config,
        tokens,
        mask,
        jax.random.PRNGKey(0),
        SampleConfig(max_new_tokens=24, temperature=0.0, stop_ids=(stop,), pad_id=-1),
    )
    got = np.asarray(out.tokens)
    lengths, stopped = np.asarray(out.lengths), np.asarray(out.stopped)
    assert stopped[0] and lengths[0] <= 6
    for row in range(len(prompts)):
        hits = np.flatnonzero(free[row] == stop)
        expected_len = hits[0] + 1 if len(hits) else 24
        assert lengths[row] == expected_len and stopped[row] == bool(len(hits))
        np.testing.assert_array_equal(got[row, :expected_len], free[row, :expected_len])
        assert np.all(got[row, expected_len:] == -1)
        assert np.all(np.asarray(out.logprobs)[row, expected_len:] == 0.0)
    lists = response_token_lists(out)
    assert [len(x) for x in lists] == lengths.tolist()


# Chi-square critical values at p = 0.001 by degrees of freedom (from standard tables).
CHI2_CRITICAL_001 = {2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}
TOY_PROBS = np.array([0.30, 0.22, 0.15, 0.12, 0.09, 0.06, 0.04, 0.02])


def _truncated(probs, top_k, top_p):
    keep = np.zeros_like(probs, bool)
    order = np.argsort(-probs)
    if top_k:
        keep[order[:top_k]] = True
    else:
        keep[:] = True
    mass = 0.0
    nucleus = np.zeros_like(keep)
    for idx in order:
        if not keep[idx] or mass >= top_p:
            continue
        nucleus[idx] = True
        mass += probs[idx] / probs[keep].sum()
    out = np.where(nucleus, probs, 0.0)
    return out / out.sum()


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.6), (5, 0.8), (0, 1.0)])
def test_truncated_sampling_frequencies_match_distribution(top_k, top_p):
    draws = 40_000
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(TOY_PROBS, jnp.float32)), (draws, len(TOY_PROBS)))
    tokens, logprobs = choose_tokens(
        logits, jax.random.split(jax.random.PRNGKey(3), draws), 1.0, top_k, top_p
    )
    expected = _truncated(TOY_PROBS, top_k, top_p)
    counts = np.bincount(np.asarray(tokens), minlength=len(TOY_PROBS))
    assert np.all(counts[expected == 0] == 0), "a truncated token was sampled"
    support = expected > 0
    chi2 = np.sum((counts[support] - draws * expected[support]) ** 2 / (draws * expected[support]))
    dof = int(support.sum()) - 1
    assert chi2 < CHI2_CRITICAL_001.get(dof, 24.32), (chi2, dof)  # 24.32 = df 7
    np.testing.assert_allclose(
        np.exp(np.asarray(logprobs)), TOY_PROBS[np.asarray(tokens)], rtol=1e-5
    )


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_nucleus_threshold_from_candidates_equals_the_full_sort(top_p):
    rng = np.random.default_rng(0)
    peaked = jax.nn.softmax(jnp.asarray(rng.normal(size=(6, 500)) * 8, jnp.float32), axis=-1)
    flat = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 500)) * 0.1, jnp.float32), axis=-1)
    top16_mass = np.sort(np.asarray(peaked), axis=-1)[:, -16:].sum(-1)
    assert np.all(top16_mass >= top_p), "the peaked rows must take the top-k path"
    for probs in (peaked, jnp.concatenate([peaked, flat])):  # top-k path; full-sort fallback
        full = nucleus_threshold(probs, top_p, candidates=500)
        np.testing.assert_array_equal(nucleus_threshold(probs, top_p, candidates=16), full)
        kept = np.sum(np.asarray(probs) >= np.asarray(full), axis=-1)
        assert np.all(kept >= 1) and np.all(kept[6:] > 16)  # the flat rows need more than 16


def test_top_p_keeps_at_least_the_most_likely_token():
    logits = jnp.log(jnp.asarray([[0.9, 0.05, 0.05]], jnp.float32))
    kept = np.isfinite(np.asarray(truncate_logits(logits, 0, 0.5)))
    assert kept.tolist() == [[True, False, False]]


def test_left_pad_rejects_a_prompt_longer_than_the_length():
    with pytest.raises(ValueError, match="more than the padded length"):
        left_pad([[1, 2, 3]], pad_id=0, length=2)


@pytest.mark.slow
def test_smollm2_greedy_generation_matches_transformers(smollm2_gguf_path):
    """32 greedy tokens from the GGUF model equal transformers' generate, token for token."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from pmd_jax.model import load
    from pmd_jax.tokenizer import format_chat

    model = load(smollm2_gguf_path)
    prompts = [
        format_chat(model.tokenizer, [("system", "You are a helpful assistant."), ("user", q)]).ids
        for q in ("What is 12 times 7? Explain briefly.", "Name three colours of the rainbow.")
    ]
    tokens, mask = left_pad(prompts, model.tokenizer.pad_id, bucket=8)
    ours = sample(
        model.params,
        model.config,
        tokens,
        mask,
        jax.random.PRNGKey(0),
        SampleConfig(max_new_tokens=32, temperature=0.0),
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf_path.parent), gguf_file=smollm2_gguf_path.name, dtype=torch.float32
    ).eval()
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([prompt]),
                max_new_tokens=32,
                do_sample=False,
                eos_token_id=list(model.tokenizer.stop_ids),
                pad_token_id=0,
            )
        ref_tokens = ref[0, len(prompt) :].tolist()  # ends early only at a stop token
        assert len(ref_tokens) == 32 or ref_tokens[-1] in model.tokenizer.stop_ids
        assert len(ref_tokens) >= 16, "the reference stopped too early to be a useful check"
        assert np.asarray(ours.tokens[row]).tolist()[: len(ref_tokens)] == ref_tokens, (
            f"prompt {row}"
        )


def _char_automaton_stop(text: str) -> int | None:
    """Index just past the newline ending the first line that contains '####' (reference)."""
    hashes = text.find("####")
    if hashes < 0:
        return None
    newline = text.find("\n", hashes)
    return None if newline < 0 else newline + 1


def test_answer_line_stop_table_matches_character_automaton(arith_tokenizer):
    from pmd_jax.sampling import ANSWER_LINE_ACCEPT, answer_line_stop_table

    tok = arith_tokenizer
    table = answer_line_stop_table(tok)
    assert table.shape == (ANSWER_LINE_ACCEPT + 1, tok.vocab_size)
    pieces = [tok.decode([i], skip_special=False) for i in range(tok.vocab_size)]
    candidates = [i for i, p in enumerate(pieces) if "#" in p or "\n" in p or p.strip()]
    rng = np.random.default_rng(0)
    texts = ["So 3 + 4 = 7.\n#### 7\n#### 8\n", "## no\n### 5\n#### 12", "####\n", "a#### 3.\n\nb"]
    sequences = [tok.encode(t) for t in texts]
    sequences += [rng.choice(candidates, size=30).tolist() for _ in range(300)]
    for seq in sequences:
        state, stop_at = 0, None
        for position, token in enumerate(seq):
            state = int(table[state, token])
            if state == ANSWER_LINE_ACCEPT:
                stop_at = position + 1
                break
        text = "".join(pieces[t] for t in seq)
        ref = _char_automaton_stop(text)
        if ref is None:
            assert stop_at is None, (seq, text)
        else:  # the stop lands on the token whose text holds that newline
            assert stop_at is not None and len("".join(pieces[t] for t in seq[: stop_at - 1])) < ref
            assert len("".join(pieces[t] for t in seq[:stop_at])) >= ref


def test_stop_automaton_ends_rows_like_a_stop_token():
    config, params, _, tokens, mask, free = _free_greedy_run()
    stop = int(free[0, 5])
    table = np.zeros((2, config.vocab_size), np.int8)
    table[:, stop] = 1  # reaching state 1 (accept) on `stop`, from any state
    table[1, :] = 1
    sample_config = SampleConfig(max_new_tokens=24, temperature=0.0, pad_id=-1)
    by_table = sample(params, config, tokens, mask, jax.random.PRNGKey(0), sample_config, table)
    by_id = sample(
        params,
        config,
        tokens,
        mask,
        jax.random.PRNGKey(0),
        SampleConfig(max_new_tokens=24, temperature=0.0, pad_id=-1, stop_ids=(stop,)),
    )
    for field in ("tokens", "logprobs", "lengths", "stopped"):
        np.testing.assert_array_equal(getattr(by_table, field), getattr(by_id, field))


@pytest.mark.parametrize("temperature", [0.0, 0.6, 1.0])
def test_on_policy_rollout_correction_is_one_at_the_loss_temperature_validation_requires(
    temperature,
):
    """The rollout correction min(exp(logp_trainer - logp_sampler), 2) is a numerical-mismatch
    correction: on the sampler's own tokens it must be 1 when the loss uses the temperature that
    validate.py requires (logprob_temperature), and it is not at loss temperature 1.0 when the
    rollouts sample at 0.6 (the bias the check prevents)."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(64, 97)) * 3, jnp.float32)
    tokens, sampler_logprobs = choose_tokens(
        logits, jax.random.split(jax.random.PRNGKey(1), 64), temperature, 0, 0.95
    )
    mask = jnp.ones((64, 1), bool)
    config = LossConfig(temperature=logprob_temperature(temperature))

    trainer = sampled_logprobs(logits[:, None], tokens[:, None], config.temperature)
    weight = rollout_correction(trainer, sampler_logprobs[:, None], mask, config)

    np.testing.assert_allclose(np.asarray(weight), 1.0, atol=1e-5)
    if temperature == 0.6:
        at_one = dataclasses.replace(config, temperature=1.0)
        trainer_at_one = sampled_logprobs(logits[:, None], tokens[:, None], 1.0)
        biased = rollout_correction(trainer_at_one, sampler_logprobs[:, None], mask, at_one)
        assert float(jnp.max(jnp.abs(biased - 1.0))) > 0.1


def test_rollout_waves_sample_each_part_of_the_batch_with_its_own_key(arith_tokenizer):
    """rollout.waves=2: two sampler calls of half the prompts; wave w equals a one-wave call on
    its prompts keyed fold_in(rng, w), and rows stay prompt-major."""
    from pmd_jax import phases
    from pmd_jax.data.prompts import PromptConfig

    config = _tiny("llama", vocab_size=arith_tokenizer.vocab_size)
    params = _params(config)
    questions = ["2 + 3 = ?", "7 - 4 = ?", "6 + 1 = ?", "9 - 2 = ?"]
    batch = {"id": np.arange(4), "question": questions, "answer": ["5", "3", "7", "7"]}
    sample_config = SampleConfig(
        max_new_tokens=6, temperature=1.0, num_samples=2, pad_id=arith_tokenizer.pad_id
    )
    rng = jax.random.PRNGKey(3)
    args = (params, config, arith_tokenizer)
    waved = phases.sample_rollouts(
        *args, batch, PromptConfig(), sample_config, rng, width=384, waves=2
    )
    assert waved.tokens.shape == (8, 6)
    for wave in range(2):
        part = {key: value[2 * wave : 2 * wave + 2] for key, value in batch.items()}
        alone = phases.sample_rollouts(
            *args, part, PromptConfig(), sample_config, jax.random.fold_in(rng, wave), width=384
        )
        np.testing.assert_array_equal(waved.tokens[4 * wave : 4 * wave + 4], alone.tokens)
        np.testing.assert_array_equal(waved.logprobs[4 * wave : 4 * wave + 4], alone.logprobs)
    with pytest.raises(ValueError, match="rollout.waves=3"):
        phases.sample_rollouts(*args, batch, PromptConfig(), sample_config, rng, waves=3)
