"""Sampling: jit-compiled prefill + on-device decode loop over a static-length KV cache.

`sample(params, model_config, prompt_tokens, prompt_mask, rng, config)` is a pure function. Prompts
are left-padded to a common length T; each prompt is prefilled once (the scanned Transformer, on the
narrowest window of trailing columns that holds every prompt: `prefill`) and its cache repeated J
times (group sampling). The decode loop is a `lax.while_loop` that exits when every
row has stopped; its step is pmd_jax/model/decode.py (layers unrolled, weights laid out once per
call, a cache per layer laid out for its attention dots). Rows
are ordered prompt-major: row b * J + j is rollout j of prompt b. Shapes: B prompts, J samples per
prompt, N = B * J rows, T prompt length, G max new tokens, S = T + G cache slots, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from pmd_jax import sharding
from pmd_jax.model.config import ModelConfig
from pmd_jax.model.decode import KVCache, cache_from_prefill, decode_step, decode_weights
from pmd_jax.model.transformer import Transformer, positions_from_mask
from pmd_jax.platform import on_mesh
from pmd_jax.sharding import BATCH_AXES, constrain, rows_spec


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """Decoding settings; static under jit (one compile per distinct config and shape)."""

    max_new_tokens: int = 256  # G
    temperature: float = 1.0  # 0.0 = greedy
    top_p: float = 1.0  # 1.0 = off
    top_k: int = 0  # 0 = off
    num_samples: int = 1  # J
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0
    # Prefill only the last multiple of this many prompt columns that holds every prompt of the
    # batch (0: always the whole width). Callers pad to a fixed width so a run compiles once
    # (ReflectConfig.prompt_width); with this the forward skips the all-padding columns at the
    # left instead of computing them. Every window is a branch of the one compiled program.
    prefill_bucket: int = 128

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"SampleConfig.max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"SampleConfig.temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SampleConfig.top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0 or self.num_samples < 1:
            raise ValueError("SampleConfig.top_k must be >= 0 and num_samples >= 1")
        if self.prefill_bucket < 0:
            raise ValueError(f"SampleConfig.prefill_bucket={self.prefill_bucket} must be >= 0")


class SampleOutput(NamedTuple):
    """tokens: [N, G] int32 (pad_id after the stop token); logprobs: [N, G] float32, the log-prob of
    each chosen token under softmax(logits / temperature) before top-k/top-p truncation (plain
    softmax when greedy), 0 after the stop; lengths: [N] int32 generated tokens including the stop
    token or the token that completed the stop automaton; stopped: [N] bool, True where a stop
    token or the stop automaton ended the row."""

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    stopped: jax.Array


# Top-p reads the nucleus off this many most likely tokens (lax.top_k) when they hold top_p of the
# mass in every row, and sorts the whole vocabulary only when some row is flatter than that.
# On CPU (SmolLM2, 16 rows): the full sort 226 ms a decode step, top_k(256) 3 ms.
TOP_P_CANDIDATES = 256


def nucleus_threshold(
    probs: jax.Array, top_p: float, candidates: int = TOP_P_CANDIDATES
) -> jax.Array:
    """The smallest probability in each row's top-p set. probs: [N, V] -> [N, 1].

    The set is the most likely tokens whose mass before them is below top_p (at least one). When
    the `candidates` most likely tokens of every row hold top_p, every other token has at least
    that much mass before it, so the set lies within them and they give the same threshold as
    sorting all V (up to the rounding of a cumulative sum of another length); otherwise (a flat
    row) the whole vocabulary is sorted (lax.cond: one branch runs).
    """

    def from_sorted(sorted_probs: jax.Array) -> jax.Array:  # [N, M] descending
        mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
        num_kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)
        return jnp.take_along_axis(sorted_probs, num_kept - 1, axis=-1)

    full_sort = lambda: from_sorted(-jnp.sort(-probs, axis=-1))  # noqa: E731
    if candidates >= probs.shape[-1]:
        return full_sort()
    top = jax.lax.top_k(probs, candidates)[0]
    covered = jnp.all(jnp.sum(top, axis=-1) >= top_p)
    return jax.lax.cond(covered, lambda: from_sorted(top), full_sort)


def truncate_logits(
    scaled_logits: jax.Array, top_k: int, top_p: float, top_p_candidates: int = TOP_P_CANDIDATES
) -> jax.Array:
    """Set logits outside the top-k / top-p (nucleus) set to -inf. scaled_logits: [N, V] float32.

    Top-p keeps the smallest set of most likely tokens whose probability reaches top_p (at least one);
    ties at the threshold are kept. top_p_candidates: see `nucleus_threshold`.
    """
    filtered = scaled_logits
    if top_k > 0:
        kth_largest = jax.lax.top_k(scaled_logits, top_k)[0][:, -1:]
        filtered = jnp.where(scaled_logits < kth_largest, -jnp.inf, filtered)
    if top_p < 1.0:
        probs = jax.nn.softmax(filtered, axis=-1)
        # With top-k first, the nucleus lies within the k kept tokens: sort no more than those.
        candidates = min(top_k, top_p_candidates) if top_k > 0 else top_p_candidates
        threshold = nucleus_threshold(probs, top_p, candidates)
        filtered = jnp.where(probs >= threshold, filtered, -jnp.inf)
    return filtered


def logprob_temperature(temperature: float) -> float:
    """The temperature of the log-probs `choose_tokens` records: the sampling one, 1.0 if greedy."""
    return temperature if temperature > 0 else 1.0


def row_keys(rng: jax.Array, step: jax.Array, rows: int) -> jax.Array:
    """One key per row for decode step `step`: fold_in(fold_in(rng, step), row). A row's random
    numbers depend on (rng, step, row) only, not on how many rows there are or how they are split
    over devices, so a run samples the same tokens on 1 device and on 8. -> [rows] keys."""
    step_key = jax.random.fold_in(rng, step)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, jnp.arange(rows))


def choose_tokens(
    logits: jax.Array, keys: jax.Array, temperature: float, top_k: int, top_p: float
) -> tuple[jax.Array, jax.Array]:
    """Pick one token per row. logits: [N, V]; keys: [N] keys (one per row, `row_keys`) ->
    (tokens [N] int32, logprobs [N] float32)."""
    logits = logits.astype(jnp.float32)
    scaled = logits / logprob_temperature(temperature)
    logprobs = jax.nn.log_softmax(scaled, axis=-1)
    if temperature == 0.0:
        tokens = jnp.argmax(logits, axis=-1)
    else:
        truncated = truncate_logits(scaled, top_k, top_p)
        tokens = jax.vmap(jax.random.categorical)(keys, truncated)
    chosen_logprobs = jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
    return tokens.astype(jnp.int32), chosen_logprobs


def lm_head_matrix(params: dict, config: ModelConfig) -> jax.Array:
    """The output projection [D, V] (the transposed embedding when tied), laid out once per call."""
    if config.tie_embeddings:
        return params["embed"]["embedding"].T
    return params["lm_head"]["kernel"]


def _logits(hidden: jax.Array, lm_head_DxV: jax.Array) -> jax.Array:
    """hidden: [N, D] -> float32 logits [N, V]."""
    return jnp.dot(hidden, lm_head_DxV.astype(hidden.dtype), preferred_element_type=jnp.float32)


def prefill_widths(prompt_len: int, bucket: int) -> tuple[int, ...]:
    """The prefill windows of a [B, prompt_len] batch: multiples of `bucket` below prompt_len, then
    prompt_len itself (ascending; just (prompt_len,) when bucket is 0)."""
    if bucket <= 0:
        return (prompt_len,)
    return (*range(bucket, prompt_len, bucket), prompt_len)


def prefill(
    params: dict,
    model_config: ModelConfig,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    positions: jax.Array,
    bucket: int,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The prompt forward for left-padded prompt_tokens, prompt_mask, positions: [B, T].

    Runs the Transformer on the narrowest window of trailing columns (`prefill_widths`) that holds
    every column any row uses, chosen at run time (lax.switch): the columns left of it are padding
    in every row, masked for every query, so they change no real token's result (float sums may round
    differently, as any change of padding width does). Their keys/values are zeros, masked in the
    cache as before. Returns (final-norm hidden state of the last column [B, D], keys, values
    [L, B, T, K, Dh]); with a mesh, rows over (data, fsdp) and key/value heads over tensor.
    """
    prompt_len = prompt_tokens.shape[1]
    widths = prefill_widths(prompt_len, bucket)

    def window(width: int):
        def run(tokens, mask, positions):
            with on_mesh(mesh):
                hidden, (keys, values) = Transformer(model_config).apply(
                    {"params": params}, tokens[:, -width:], positions[:, -width:], mask[:, -width:]
                )
            pad = [(0, 0), (0, 0), (prompt_len - width, 0), (0, 0), (0, 0)]
            cache_spec = P(None, BATCH_AXES, None, "tensor")
            return (
                constrain(hidden[:, -1], mesh, rows_spec(2)),
                constrain(jnp.pad(keys, pad), mesh, cache_spec),
                constrain(jnp.pad(values, pad), mesh, cache_spec),
            )

        return run

    if len(widths) == 1:
        return window(prompt_len)(prompt_tokens, prompt_mask, positions)
    # Columns from the first one any row uses (a mask with holes keeps them inside the window).
    needed = prompt_len - jnp.argmax(jnp.any(prompt_mask, axis=0)).astype(jnp.int32)
    branch = jnp.searchsorted(jnp.asarray(widths, jnp.int32), needed)
    branches = [window(width) for width in widths]
    return jax.lax.switch(branch, branches, prompt_tokens, prompt_mask, positions)


class _DecodeState(NamedTuple):
    step: jax.Array  # scalar int32
    cache: KVCache  # L x keys [N, K, Dh, S] and values [N, K, S, Dh], mask [N, S]
    next_logits: jax.Array  # [N, V] float32
    next_positions: jax.Array  # [N] int32
    tokens: jax.Array  # [N, G]
    logprobs: jax.Array  # [N, G]
    done: jax.Array  # [N] bool
    stop_state: jax.Array  # [N] int32, state of the stop automaton
    lengths: jax.Array  # [N] int32, tokens generated so far (the stop token included)


def sample(
    params: dict,
    model_config: ModelConfig,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    config: SampleConfig,
    stop_table: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> SampleOutput:
    """Sample J continuations of each left-padded prompt. prompt_tokens, prompt_mask: [B, T].

    stop_table: optional [Q, V] int8 token transition table of a stop automaton (start state 0,
    accept state Q - 1, e.g. `answer_line_stop_table`): a row also stops when it reaches accept.

    mesh: run on this device mesh (`sharding.make_mesh`): rows and their KV cache split over
    (data, fsdp), weights in the sampling layout (`sharding.sampling_param_shardings`, gathered
    once per call, split over tensor). `params` may be in any layout (e.g. the training one); host
    inputs are placed here. The outputs stay row-split (`sharding.to_host` gathers them). The
    tokens do not depend on the mesh (`row_keys`). Without a mesh: the default device.
    """
    if mesh is not None:
        prompt_tokens, prompt_mask, rng, stop_table = sharding.replicate(
            (prompt_tokens, prompt_mask, rng, stop_table), mesh
        )
    return sample_program(
        params, model_config, prompt_tokens, prompt_mask, rng, config, stop_table, mesh
    )


@functools.partial(jax.jit, static_argnames=("model_config", "config", "mesh"))
def sample_program(
    params: dict,
    model_config: ModelConfig,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    config: SampleConfig,
    stop_table: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> SampleOutput:
    """The jit'd sampler behind `sample` (lower it for ahead-of-time compiles); inputs must already
    be on `mesh`'s devices when it spans several processes.

    On a mesh, B is padded to a multiple of data x fsdp with copies of prompt 0 (their rows are
    decoded and dropped), so each device holds N_pad / (data x fsdp) rows.
    """
    batch, prompt_len = prompt_tokens.shape
    divisor = 1 if mesh is None else sharding.batch_divisor(mesh)
    padded = -(-batch // divisor) * divisor
    prompt_mask = prompt_mask.astype(bool)
    if padded != batch:
        fill = padded - batch
        prompt_tokens = jnp.concatenate([prompt_tokens, jnp.repeat(prompt_tokens[:1], fill, 0)])
        prompt_mask = jnp.concatenate([prompt_mask, jnp.repeat(prompt_mask[:1], fill, 0)])
    prompt_tokens = constrain(prompt_tokens, mesh, rows_spec(2))
    prompt_mask = constrain(prompt_mask, mesh, rows_spec(2))
    # In the compute dtype before anything else: every use casts to it anyway (nn.Dense, the
    # norms, the embedding), so float32 masters with bfloat16 compute gather half the bytes.
    params = jax.tree.map(lambda x: x.astype(model_config.dtype), params)
    if mesh is not None:  # the sampling layout, once: gathered over fsdp, split over tensor
        params = jax.lax.with_sharding_constraint(
            params, sharding.sampling_param_shardings(params, mesh)
        )
    # In the compute dtype once, so the loop's `_logits` casts nothing per token.
    lm_head = constrain(
        lm_head_matrix(params, model_config).astype(model_config.dtype), mesh, P(None, "tensor")
    )
    weights = decode_weights(params, model_config, mesh)
    rows, gen = padded * config.num_samples, config.max_new_tokens
    row_split = functools.partial(constrain, mesh=mesh)

    positions = positions_from_mask(prompt_mask)
    last_hidden, keys, values = prefill(
        params, model_config, prompt_tokens, prompt_mask, positions, config.prefill_bucket, mesh
    )
    repeat = functools.partial(jnp.repeat, repeats=config.num_samples, total_repeat_length=rows)
    state = _DecodeState(
        step=jnp.zeros((), jnp.int32),
        cache=cache_from_prefill(keys, values, prompt_mask, config.num_samples, gen, mesh),
        next_logits=row_split(repeat(_logits(last_hidden, lm_head), axis=0), spec=rows_spec(2)),
        next_positions=row_split(repeat(positions[:, -1] + 1, axis=0), spec=rows_spec(1)),
        tokens=row_split(jnp.full((rows, gen), config.pad_id, jnp.int32), spec=rows_spec(2)),
        logprobs=row_split(jnp.zeros((rows, gen), jnp.float32), spec=rows_spec(2)),
        done=row_split(jnp.zeros((rows,), bool), spec=rows_spec(1)),
        stop_state=row_split(jnp.zeros((rows,), jnp.int32), spec=rows_spec(1)),
        lengths=row_split(jnp.zeros((rows,), jnp.int32), spec=rows_spec(1)),
    )
    stop_ids = jnp.asarray(config.stop_ids or (-1,), jnp.int32)

    def next_token(s: _DecodeState) -> _DecodeState:
        keys = row_split(row_keys(rng, s.step, rows), spec=rows_spec(1))
        token, logprob = choose_tokens(
            s.next_logits, keys, config.temperature, config.top_k, config.top_p
        )
        token = jnp.where(s.done, config.pad_id, token)
        logprob = jnp.where(s.done, 0.0, logprob)
        done = s.done | jnp.isin(token, stop_ids)
        stop_state = s.stop_state
        if stop_table is not None:
            stop_state = stop_table[s.stop_state, jnp.maximum(token, 0)].astype(jnp.int32)
            done = done | (stop_state == stop_table.shape[0] - 1)
        hidden, cache = decode_step(
            weights, model_config, s.cache, token, s.next_positions, prompt_len + s.step
        )
        # Whole rows for choosing the next token (an all-gather of logits over tensor, if split).
        next_logits = row_split(_logits(hidden, lm_head), spec=rows_spec(2))
        return _DecodeState(
            step=s.step + 1,
            cache=cache,
            next_logits=next_logits,
            next_positions=s.next_positions + 1,
            tokens=jax.lax.dynamic_update_slice_in_dim(s.tokens, token[:, None], s.step, axis=1),
            logprobs=jax.lax.dynamic_update_slice_in_dim(
                s.logprobs, logprob[:, None], s.step, axis=1
            ),
            done=done,
            stop_state=stop_state,
            lengths=s.lengths + (~s.done).astype(jnp.int32),
        )

    def not_finished(s: _DecodeState) -> jax.Array:
        return (s.step < gen) & ~jnp.all(s.done)

    final = jax.lax.while_loop(not_finished, next_token, state)
    real = batch * config.num_samples
    return SampleOutput(
        final.tokens[:real], final.logprobs[:real], final.lengths[:real], final.done[:real]
    )


def bucket_length(length: int, bucket: int = 64) -> int:
    """Round a prompt length up to a multiple of `bucket`, so jit compiles a few shapes only."""
    return max(bucket, int(math.ceil(length / bucket)) * bucket)


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, length: int | None = None, bucket: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists into (tokens [B, T] int32, mask [B, T] bool); T bucketed unless given."""
    longest = max((len(s) for s in sequences), default=1)
    length = length if length is not None else bucket_length(longest, bucket)
    if longest > length:
        raise ValueError(f"a prompt has {longest} tokens, more than the padded length {length}")
    tokens = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for row, seq in enumerate(sequences):
        if len(seq):
            tokens[row, length - len(seq) :] = seq
            mask[row, length - len(seq) :] = True
    return tokens, mask


def response_token_lists(output: SampleOutput) -> list[list[int]]:
    """Generated ids per row, cut after the stop token (host-side)."""
    tokens, lengths = sharding.to_host((output.tokens, output.lengths))
    return [tokens[row, : lengths[row]].tolist() for row in range(tokens.shape[0])]


# A stop rule "the response ends with the line that gives the '#### <answer>'": a 6-state
# automaton over characters (0-3: that many '#' in a row, 4: '####' seen on this line, 5: a
# newline after it = stop), lifted to tokens by running every token's text from every state.
ANSWER_LINE_ACCEPT = 5


def _answer_line_step(state: int, char: str) -> int:
    if state == ANSWER_LINE_ACCEPT:
        return state
    if state == 4:
        return ANSWER_LINE_ACCEPT if char == "\n" else 4
    return state + 1 if char == "#" else 0


@functools.lru_cache(maxsize=8)
def answer_line_stop_table(tokenizer) -> np.ndarray:
    """Token transition table [6, V] int8 of the answer-line stop automaton (start state 0).

    Passed to `sample(..., stop_table=...)`, it ends a row right after the token that completes
    the first line containing '####' (so a model that keeps writing after its answer line is cut
    there, as a stop string would). Special tokens map to their own text, usually no '#'.
    """
    vocab = tokenizer.vocab_size
    table = np.zeros((ANSWER_LINE_ACCEPT + 1, vocab), np.int8)
    for token in range(vocab):
        text = tokenizer.decode([token], skip_special=False)
        for start in range(ANSWER_LINE_ACCEPT + 1):
            state = start
            for char in text:
                state = _answer_line_step(state, char)
                if state == ANSWER_LINE_ACCEPT:
                    break
            table[start, token] = state
    return table


def generate_texts(
    params: dict,
    model_config: ModelConfig,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    config: SampleConfig,
    rng: jax.Array,
    *,
    batch_size: int = 16,
    bucket: int = 64,
    max_prompt_tokens: int | None = None,
    min_width: int = 0,
    mesh: Mesh | None = None,
) -> list[str]:
    """Decoded responses for prompt id lists (J = config.num_samples per prompt, prompt-major).

    Calls `sample` in fixed-shape batches (the last one filled with repeats that are dropped) with
    every prompt padded to one bucketed width, at least `min_width`, so a call compiles once per
    (width, config): with `min_width` above the longest prompt a caller's every call has the same
    shape. Prompts longer than `max_prompt_tokens` raise: the caller decides how to shorten its
    own text. mesh: see `sample`.
    """
    if not prompts:
        return []
    longest = max(len(p) for p in prompts)
    if max_prompt_tokens is not None and longest > max_prompt_tokens:
        raise ValueError(f"generate_texts: a prompt has {longest} > {max_prompt_tokens} tokens")
    width = max(bucket_length(longest, bucket), min_width)
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[start : start + batch_size]]
        rows = chunk + [chunk[0]] * (batch_size - len(chunk))
        tokens, mask = left_pad(rows, tokenizer.pad_id, length=width)
        rng, call_rng = jax.random.split(rng)
        output = sample(params, model_config, tokens, mask, call_rng, config, mesh=mesh)
        decoded = [tokenizer.decode(ids) for ids in response_token_lists(output)]
        texts.extend(decoded[: len(chunk) * config.num_samples])
    return texts
