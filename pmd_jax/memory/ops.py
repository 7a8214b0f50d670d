"""Jit-compiled memory operations: novelty-gated inserts with redundancy eviction, behaviour
actions, retrieval. Each op is a pure function of a `MemoryState` (configs static) returning a new
state and an `Outcome` per item. Shapes as in state.py; N items, A actions, B queries.

Batches have sequential semantics: items are applied one after another in row-major order
(`lax.scan`), exactly as if inserted one by one, so a group whose rollouts resemble each other
keeps only the first of the near-duplicates.

Insertion of one item (experience, insight, or a behaviour with an unknown name)
1. Padding: a problem id outside [0, P), a NOOP or an empty behaviour name is SKIPPED.
2. Novelty gate: the item is REJECTED_NOVELTY when its cosine similarity to a stored item of the
   same pool is strictly above the level's threshold. Pools: experience compares within one
   problem and within one kind (a failure close to a stored success is a near miss worth keeping
   as a contrast, and each kind has its own slots); insight compares against all items of the
   problem, both kinds (a strategy and a lesson that say the same thing are duplicates);
   behaviours compare against every alive entry.
3. Free slot: the lowest free slot of the pool (INSERTED).
4. Pool full: the candidates are the stored items of the pool plus the new one. An item's
   redundancy is its maximum cosine similarity to the other candidates; the most redundant goes.
   Ties (the two members of the closest pair always tie) go to the oldest: smallest step
   (experience/insight insertion step, behaviour `updated_step`), then lowest slot, the new item
   counting as after every slot. If the new item is chosen it is REJECTED_REDUNDANT, else it
   takes the evicted item's slot (INSERTED_EVICTING, `Outcome.slot` says which).
Similarities are float32 dot products of unit vectors at HIGHEST matmul precision; the pairwise
matrix is symmetrised so both members of a pair see the same value.

Consequence of the age tie-break: the closest pair always ties, and the new item is the youngest
member of any pair it is in, so with non-decreasing steps a novel item is never REJECTED_REDUNDANT;
it replaces the older member of the closest pair. REJECTED_REDUNDANT happens only when the new
item carries an older step than its partner, or when its kind has no slots (F = 0).

Behaviour actions (addressed by name; names compared exactly: same length, same ids)
- NEW or UPDATE of an alive name: rewrite instruction, embedding, source cluster and
  `updated_step` in place, keep `created_step` (UPDATED; no novelty gate: an explicit edit).
  So a NEW that repeats a name does not create a second entry: names stay unique.
- NEW or UPDATE of an unknown name: insertion as above (gate, free slot, eviction when the bank
  is full, dropped as REJECTED_REDUNDANT when the new entry is the most redundant).
- REMOVE of an alive name empties its slot (REMOVED); of an unknown name: no-op, REMOVE_UNKNOWN.

Every update op donates `state`: its buffers are reused for the result (without donation each
call copies the whole memory, about 400 MB for GSM8K at the default sizes). Do not use a state
after passing it; keep a copy with `jax.tree.map(jnp.copy, state)` when one is needed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from pmd_jax.memory.state import (
    INSERTED,
    INSERTED_EVICTING,
    NOOP,
    REJECTED_NOVELTY,
    REJECTED_REDUNDANT,
    REMOVE,
    REMOVE_UNKNOWN,
    REMOVED,
    SKIPPED,
    UPDATED,
    BehaviourActions,
    BehaviourBank,
    Experience,
    Insight,
    MemoryConfig,
    MemoryState,
    Outcome,
    check_embedding,
    empty_behaviours,
    fit_ids,
    unit,
)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    # Full float32 precision: the novelty gate compares against thresholds such as 0.95.
    return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


def _most_redundant(
    embedding_M: jax.Array,
    member_M: jax.Array,
    step_M: jax.Array,
    new_embedding: jax.Array,
    new_step: jax.Array,
) -> jax.Array:
    """Index in [0, M] of the candidate to evict (M = the new item); rule in the module doc."""
    num_slots = member_M.shape[0]
    embedding = jnp.concatenate([embedding_M, new_embedding[None]])
    member = jnp.concatenate([member_M, jnp.ones((1,), bool)])
    step = jnp.concatenate([step_M, new_step[None]])
    sims = _dot(embedding, embedding.T)
    sims = jnp.maximum(sims, sims.T)
    pair = member[:, None] & member[None, :] & ~jnp.eye(num_slots + 1, dtype=bool)
    redundancy = jnp.max(jnp.where(pair, sims, -jnp.inf), axis=1)
    best = jnp.max(jnp.where(member, redundancy, -jnp.inf))
    tied = member & (redundancy == best)
    oldest = jnp.min(jnp.where(tied, step, jnp.iinfo(jnp.int32).max))
    return jnp.argmax(tied & (step == oldest)).astype(jnp.int32)


def _choose_slot(
    embedding_M: jax.Array,
    occupied_M: jax.Array,
    step_M: jax.Array,
    pool_M: jax.Array,
    new_embedding: jax.Array,
    new_step: jax.Array,
    threshold: float,
    enabled: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Novelty gate + placement of one new item among M slots, of which `pool_M` may hold it.

    Returns (status, slot): slot in [0, M) to write, -1 when nothing is written.
    """
    num_slots = occupied_M.shape[0]
    member = occupied_M & pool_M
    duplicate = jnp.any(member & (_dot(embedding_M, new_embedding) > threshold))
    free = pool_M & ~occupied_M
    has_free = jnp.any(free)
    victim = lax.cond(
        enabled & ~duplicate & ~has_free,
        lambda: _most_redundant(embedding_M, member, step_M, new_embedding, new_step),
        lambda: jnp.int32(num_slots),
    )
    status = jnp.select(
        [~enabled, duplicate, has_free, victim == num_slots],
        [SKIPPED, REJECTED_NOVELTY, INSERTED, REJECTED_REDUNDANT],
        INSERTED_EVICTING,
    ).astype(jnp.int32)
    slot = jnp.where(has_free, jnp.argmax(free), victim).astype(jnp.int32)
    written = (status == INSERTED) | (status == INSERTED_EVICTING)
    return status, jnp.where(written, slot, -1)


def _write_slot(table, index: tuple, record, write: jax.Array):
    """Write `record` (one item) at `index` of every column of `table` when `write`."""
    put = lambda column, value: column.at[index].set(jnp.where(write, value, column[index]))
    return jax.tree.map(put, table, record)


def _insert_one(state: MemoryState, config: MemoryConfig, level: str, problem_id, record):
    """Insert one experience or insight `record` into problem `problem_id` -> (state, status, slot)."""
    table = getattr(state, level)
    num_problems, num_slots = table.occupied.shape
    enabled = (problem_id >= 0) & (problem_id < num_problems)
    row = jnp.clip(problem_id, 0, num_problems - 1)
    if level == "experience":
        slot_is_success = jnp.arange(num_slots) < config.success_slots
        pool = slot_is_success == (record.reward > config.success_reward)
        threshold = config.experience_threshold
    else:
        pool = jnp.ones((num_slots,), bool)
        threshold = config.insight_threshold
    status, slot = _choose_slot(
        table.embedding[row],
        table.occupied[row],
        table.step[row],
        pool,
        record.embedding,
        record.step,
        threshold,
        enabled,
    )
    table = _write_slot(table, (row, jnp.maximum(slot, 0)), record, slot >= 0)
    return state.replace(**{level: table}), Outcome(status, slot)


def _insert_items(state: MemoryState, config: MemoryConfig, level: str, problem_ids, record):
    """Sequentially insert items with leading dims problem_ids.shape (any, () for one item)."""
    leading = problem_ids.shape
    flatten = lambda x: x.reshape((-1, *x.shape[len(leading) :]))

    def body(state, item):
        return _insert_one(state, config, level, *item)

    state, outcome = lax.scan(body, state, (flatten(problem_ids), jax.tree.map(flatten, record)))
    return state, jax.tree.map(lambda x: x.reshape(leading), outcome)


def _experience_items(
    state, config, problem_ids, tokens, lengths, rewards, feedback, feedback_lens, embeddings, step
):
    problem_ids = jnp.asarray(problem_ids, jnp.int32)
    embeddings = jnp.asarray(embeddings)
    check_embedding(embeddings, config, "insert_experience")
    leading = problem_ids.shape
    tokens, lengths = fit_ids(tokens, lengths, config.response_len, config.pad_id)
    feedback, feedback_lens = fit_ids(feedback, feedback_lens, config.feedback_len, config.pad_id)
    record = Experience(
        tokens=tokens,
        length=lengths,
        reward=jnp.broadcast_to(jnp.asarray(rewards, jnp.float32), leading),
        feedback=feedback,
        feedback_len=feedback_lens,
        embedding=unit(embeddings),
        occupied=jnp.ones(leading, bool),
        step=jnp.broadcast_to(jnp.asarray(step, jnp.int32), leading),
    )
    return _insert_items(state, config, "experience", problem_ids, record)


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def insert_experience(
    state: MemoryState,
    config: MemoryConfig,
    problem_id: ArrayLike,
    tokens: ArrayLike,
    length: ArrayLike,
    reward: ArrayLike,
    feedback: ArrayLike,
    feedback_len: ArrayLike,
    embedding: ArrayLike,
    step: ArrayLike,
) -> tuple[MemoryState, Outcome]:
    """Insert one rollout. problem_id, length, reward, feedback_len, step: scalars; tokens [Lr],
    feedback [Lf] (other widths are truncated/padded); embedding [D]. -> (state, Outcome [])."""
    return _experience_items(
        state, config, problem_id, tokens, length, reward, feedback, feedback_len, embedding, step
    )


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def insert_experience_batch(
    state: MemoryState,
    config: MemoryConfig,
    problem_ids: ArrayLike,
    tokens: ArrayLike,
    lengths: ArrayLike,
    rewards: ArrayLike,
    feedback: ArrayLike,
    feedback_lens: ArrayLike,
    embeddings: ArrayLike,
    step: ArrayLike,
) -> tuple[MemoryState, Outcome]:
    """Insert rollouts one after another. problem_ids, lengths, rewards, feedback_lens: [N] (or
    [B, J], any leading dims); tokens [N, Lr]; feedback [N, Lf]; embeddings [N, D]; step scalar or
    [N]. A negative problem id is padding. -> (state, Outcome [N])."""
    return _experience_items(
        state,
        config,
        problem_ids,
        tokens,
        lengths,
        rewards,
        feedback,
        feedback_lens,
        embeddings,
        step,
    )


def _insight_items(
    state, config, problem_ids, kinds, titles, title_lens, contents, content_lens, embeddings, step
):
    problem_ids = jnp.asarray(problem_ids, jnp.int32)
    embeddings = jnp.asarray(embeddings)
    check_embedding(embeddings, config, "insert_insights")
    leading = problem_ids.shape
    titles, title_lens = fit_ids(titles, title_lens, config.title_len, config.pad_id)
    contents, content_lens = fit_ids(contents, content_lens, config.content_len, config.pad_id)
    record = Insight(
        kind=jnp.broadcast_to(jnp.asarray(kinds, jnp.int8), leading),
        title=titles,
        title_len=title_lens,
        content=contents,
        content_len=content_lens,
        embedding=unit(embeddings),
        occupied=jnp.ones(leading, bool),
        step=jnp.broadcast_to(jnp.asarray(step, jnp.int32), leading),
    )
    return _insert_items(state, config, "insight", problem_ids, record)


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def insert_insight(
    state: MemoryState,
    config: MemoryConfig,
    problem_id: ArrayLike,
    kind: ArrayLike,
    title: ArrayLike,
    title_len: ArrayLike,
    content: ArrayLike,
    content_len: ArrayLike,
    embedding: ArrayLike,
    step: ArrayLike,
) -> tuple[MemoryState, Outcome]:
    """Insert one insight. problem_id, kind (STRATEGY/LESSON), title_len, content_len, step:
    scalars; title [Lt]; content [Lc]; embedding [D]. -> (state, Outcome [])."""
    return _insight_items(
        state, config, problem_id, kind, title, title_len, content, content_len, embedding, step
    )


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def insert_insights(
    state: MemoryState,
    config: MemoryConfig,
    problem_ids: ArrayLike,
    kinds: ArrayLike,
    titles: ArrayLike,
    title_lens: ArrayLike,
    contents: ArrayLike,
    content_lens: ArrayLike,
    embeddings: ArrayLike,
    step: ArrayLike,
) -> tuple[MemoryState, Outcome]:
    """Insert insights one after another. problem_ids, kinds, title_lens, content_lens: [N];
    titles [N, Lt]; contents [N, Lc]; embeddings [N, D]; step scalar or [N]. A negative problem
    id is padding. -> (state, Outcome [N])."""
    return _insight_items(
        state,
        config,
        problem_ids,
        kinds,
        titles,
        title_lens,
        contents,
        content_lens,
        embeddings,
        step,
    )


def _apply_action(state: MemoryState, config: MemoryConfig, op, record: BehaviourBank):
    """One behaviour action (rules in the module doc) -> (state, Outcome [])."""
    bank = state.behaviours
    num_slots = bank.alive.shape[0]
    enabled = (op > NOOP) & (op <= REMOVE) & (record.name_len > 0)
    match = bank.alive & (bank.name_len == record.name_len) & jnp.all(bank.name == record.name, -1)
    known = jnp.any(match)
    known_slot = jnp.argmax(match).astype(jnp.int32)
    is_remove = op == REMOVE
    added_status, added_slot = _choose_slot(
        bank.embedding,
        bank.alive,
        bank.updated_step,
        jnp.ones((num_slots,), bool),
        record.embedding,
        record.updated_step,
        config.behaviour_threshold,
        enabled & ~is_remove & ~known,
    )
    status = jnp.select(
        [~enabled, is_remove & known, is_remove, known],
        [SKIPPED, REMOVED, REMOVE_UNKNOWN, UPDATED],
        added_status,
    ).astype(jnp.int32)
    slot = jnp.where((status == REMOVED) | (status == UPDATED), known_slot, added_slot)
    updated = record.replace(
        created_step=jnp.where(known, bank.created_step[known_slot], record.created_step)
    )
    written = jax.tree.map(
        lambda empty, new: jnp.where(is_remove, empty, new), empty_behaviours(config, ()), updated
    )
    bank = _write_slot(bank, (jnp.maximum(slot, 0),), written, slot >= 0)
    return state.replace(behaviours=bank), Outcome(status, slot)


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def apply_behaviour_actions(
    state: MemoryState, config: MemoryConfig, actions: BehaviourActions, step: ArrayLike
) -> tuple[MemoryState, Outcome]:
    """Apply actions [A] one after another at training `step` (scalar) -> (state, Outcome [A])."""
    embeddings = jnp.asarray(actions.embedding)
    check_embedding(embeddings, config, "apply_behaviour_actions")
    ops = jnp.asarray(actions.op, jnp.int32)
    name, name_len = fit_ids(actions.name, actions.name_len, config.name_len, config.pad_id)
    instruction, instruction_len = fit_ids(
        actions.instruction, actions.instruction_len, config.instruction_len, config.pad_id
    )
    steps = jnp.full(ops.shape, step, jnp.int32)
    records = BehaviourBank(
        name=name,
        name_len=name_len,
        instruction=instruction,
        instruction_len=instruction_len,
        embedding=unit(embeddings),
        alive=jnp.ones(ops.shape, bool),
        source_cluster=jnp.asarray(actions.source_cluster, jnp.int32),
        created_step=steps,
        updated_step=steps,
    )

    def body(state, item):
        return _apply_action(state, config, *item)

    return lax.scan(body, state, (ops, records))


@functools.partial(jax.jit, static_argnames=("k",))
def retrieve_behaviours(
    state: MemoryState, queries: ArrayLike, k: int = 3
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Cosine top-k among alive entries. queries [B, D] -> (indices [B, k] int32, scores [B, k]
    float32, valid [B, k] bool); best first, equal scores by lower index; rows with fewer than k
    alive entries are padded with index -1, score 0, valid False."""
    bank = state.behaviours
    if k > bank.alive.shape[0]:
        raise ValueError(f"retrieve_behaviours: k={k} > behaviour_slots={bank.alive.shape[0]}")
    if queries.shape[-1] != bank.embedding.shape[-1]:
        raise ValueError(
            f"retrieve_behaviours: query width {queries.shape[-1]} != embedding width "
            f"{bank.embedding.shape[-1]}"
        )
    scores = _dot(unit(queries), bank.embedding.T)
    scores = jnp.where(bank.alive[None, :], scores, -jnp.inf)
    top_scores, top_indices = lax.top_k(scores, k)
    valid = top_scores > -jnp.inf
    return (
        jnp.where(valid, top_indices, -1).astype(jnp.int32),
        jnp.where(valid, top_scores, 0.0),
        valid,
    )
