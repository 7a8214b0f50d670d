"""Procedural memory state: the three levels of METHOD.md section 3 as one fixed-capacity pytree.

Every array has a static shape, so every operation (ops.py) is one jit compile per config.
Shapes: P problems, S success slots, F failure slots, K = S + F experience slots, I insight
slots, Nb behaviour slots, D embedding width; Lr/Lf/Lt/Lc/Ln/Li the token widths of response,
feedback, title, content, name and instruction. Token ids are stored with `pad_id` after their
length; an empty slot holds pad ids, zero lengths, a zero embedding and step -1, so two states
holding the same items are equal array by array. Embeddings are stored unit-norm (float32).

- experience [P, K]: slots 0..S-1 hold successes (reward > `success_reward`), S..K-1 failures.
- insight [P, I]: one pool for both kinds (0 strategy, 1 lesson).
- behaviours [Nb]: a global bank keyed by name (token ids compared exactly).
Whether a run updates its memory at all is its RunPlan's decision (pmd_jax/run_plan.py: the
frozen_memory ablation runs no update op), not a flag in the state. Checkpoints written before
that hold a `frozen` leaf; `checkpoint.restore` accepts and drops it.

The insertion, eviction and novelty rules are documented in ops.py.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Outcome status of one item or action (one code per item, see ops.py for when each happens).
INSERTED = 0  # placed in a free slot
INSERTED_EVICTING = 1  # placed in the slot of the evicted (most redundant) item
REJECTED_NOVELTY = 2  # too similar to a stored item (novelty gate)
REJECTED_REDUNDANT = 3  # level full and the new item was itself the most redundant
SKIPPED = 4  # padding (problem id out of range, NOOP, empty name)
UPDATED = 5  # behaviour with a known name rewritten in place
REMOVED = 6  # behaviour removed by name
REMOVE_UNKNOWN = 7  # remove of a name that is not in the bank: no-op
STATUS_NAMES = (
    "inserted",
    "inserted_evicting",
    "rejected_novelty",
    "rejected_redundant",
    "skipped",
    "updated",
    "removed",
    "remove_unknown",
)

# Behaviour action op codes; NOOP pads a batch of actions to a fixed length.
NOOP, NEW, UPDATE, REMOVE = 0, 1, 2, 3
# Insight kinds.
STRATEGY, LESSON = 0, 1


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """Capacities, token widths and novelty thresholds. Hashable: a static jit argument."""

    num_problems: int = 1  # P (grows with the dataset, see `grow`)
    success_slots: int = 5  # S
    failure_slots: int = 3  # F
    insight_slots: int = 10  # I
    behaviour_slots: int = 500  # Nb
    response_len: int = 256  # Lr, longer responses are truncated
    feedback_len: int = 32  # Lf
    title_len: int = 16  # Lt
    content_len: int = 96  # Lc
    name_len: int = 8  # Ln
    instruction_len: int = 64  # Li
    embed_dim: int = 576  # D (SmolLM2-135M hidden size)
    experience_threshold: float = 0.95  # cosine above which a response is not novel
    insight_threshold: float = 0.95
    behaviour_threshold: float = 0.95
    success_reward: float = 0.5  # reward > this goes to the success slots
    pad_id: int = 0

    def __post_init__(self):
        for name in ("num_problems", "embed_dim", "response_len", "feedback_len", "title_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"MemoryConfig.{name}={getattr(self, name)} must be >= 1")
        for name in ("content_len", "name_len", "instruction_len", "behaviour_slots"):
            if getattr(self, name) < 1:
                raise ValueError(f"MemoryConfig.{name}={getattr(self, name)} must be >= 1")
        for name in ("success_slots", "failure_slots", "insight_slots"):
            if getattr(self, name) < 0:
                raise ValueError(f"MemoryConfig.{name}={getattr(self, name)} must be >= 0")
        for name in ("experience_threshold", "insight_threshold", "behaviour_threshold"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"MemoryConfig.{name}={getattr(self, name)} must be in [-1, 1]")

    @property
    def experience_slots(self) -> int:
        """K = S + F."""
        return self.success_slots + self.failure_slots


@struct.dataclass
class Experience:
    """L0 slots, leading dims [...] ([P, K] in the state, [B, K] from `read_problem`)."""

    tokens: jax.Array  # [..., Lr] int32 response ids
    length: jax.Array  # [...] int32
    reward: jax.Array  # [...] float32
    feedback: jax.Array  # [..., Lf] int32 verifier feedback ids
    feedback_len: jax.Array  # [...] int32
    embedding: jax.Array  # [..., D] float32, unit norm
    occupied: jax.Array  # [...] bool
    step: jax.Array  # [...] int32 training step of insertion (-1 when empty)


@struct.dataclass
class Insight:
    """L1 slots, leading dims [...] ([P, I] in the state, [B, I] from `read_problem`)."""

    kind: jax.Array  # [...] int8: STRATEGY or LESSON
    title: jax.Array  # [..., Lt] int32
    title_len: jax.Array  # [...] int32
    content: jax.Array  # [..., Lc] int32
    content_len: jax.Array  # [...] int32
    embedding: jax.Array  # [..., D] float32, unit norm
    occupied: jax.Array  # [...] bool
    step: jax.Array  # [...] int32 (-1 when empty)


@struct.dataclass
class BehaviourBank:
    """L2 entries, leading dims [...] ([Nb] in the state; [A] for a batch of actions)."""

    name: jax.Array  # [..., Ln] int32, the key
    name_len: jax.Array  # [...] int32
    instruction: jax.Array  # [..., Li] int32
    instruction_len: jax.Array  # [...] int32
    embedding: jax.Array  # [..., D] float32, unit norm
    alive: jax.Array  # [...] bool
    source_cluster: jax.Array  # [...] int32 (-1 when empty)
    created_step: jax.Array  # [...] int32 (-1 when empty)
    updated_step: jax.Array  # [...] int32 (-1 when empty); the age used for eviction


@struct.dataclass
class MemoryState:
    """The whole procedural memory: experience [P, K], insight [P, I], behaviours [Nb]."""

    experience: Experience
    insight: Insight
    behaviours: BehaviourBank


@struct.dataclass
class BehaviourActions:
    """A batch of A evolver actions; `name` addresses the entry. Pad to a fixed A with NOOP."""

    op: jax.Array  # [A] int32: NOOP, NEW, UPDATE or REMOVE
    name: jax.Array  # [A, Ln] int32 (wider or narrower is fitted to Ln)
    name_len: jax.Array  # [A] int32
    instruction: jax.Array  # [A, Li] int32
    instruction_len: jax.Array  # [A] int32
    embedding: jax.Array  # [A, D] float32 (normalised on insert)
    source_cluster: jax.Array  # [A] int32


class Outcome(NamedTuple):
    """What an update op did per item. status: [...] int32 (INSERTED, ...); slot: [...] int32,
    the slot written (for INSERTED_EVICTING the evicted item's slot), -1 when nothing was."""

    status: jax.Array
    slot: jax.Array


def _ids(config: MemoryConfig, shape: tuple[int, ...], width: int) -> jax.Array:
    return jnp.full((*shape, width), config.pad_id, jnp.int32)


def unit(vectors: jax.Array) -> jax.Array:
    """[..., D] -> unit-norm float32 [..., D]; a zero vector stays zero."""
    vectors = jnp.asarray(vectors, jnp.float32)
    norm = jnp.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / jnp.maximum(norm, 1e-12)


def fit_ids(
    ids: jax.Array, length: jax.Array, width: int, pad_id: int
) -> tuple[jax.Array, jax.Array]:
    """ids [..., L], length [...] -> ids [..., width] (truncated, pad_id from length on), length
    clipped to [0, width]."""
    ids = jnp.asarray(ids, jnp.int32)
    if ids.shape[-1] > width:
        ids = ids[..., :width]
    elif ids.shape[-1] < width:
        padding = [(0, 0)] * (ids.ndim - 1) + [(0, width - ids.shape[-1])]
        ids = jnp.pad(ids, padding, constant_values=pad_id)
    length = jnp.clip(jnp.asarray(length, jnp.int32), 0, width)
    return jnp.where(jnp.arange(width) < length[..., None], ids, pad_id), length


def check_embedding(embedding: jax.Array, config: MemoryConfig, what: str) -> None:
    """Raise a ValueError naming `what` when embeddings [..., D] do not have D = embed_dim."""
    if embedding.shape[-1] != config.embed_dim:
        raise ValueError(
            f"{what}: embedding width {embedding.shape[-1]} != MemoryConfig.embed_dim="
            f"{config.embed_dim} (embeddings shape {embedding.shape})"
        )


def empty_experience(config: MemoryConfig, shape: tuple[int, ...]) -> Experience:
    """Empty experience slots with leading dims `shape`."""
    zeros = jnp.zeros(shape, jnp.int32)
    return Experience(
        tokens=_ids(config, shape, config.response_len),
        length=zeros,
        reward=jnp.zeros(shape, jnp.float32),
        feedback=_ids(config, shape, config.feedback_len),
        feedback_len=zeros,
        embedding=jnp.zeros((*shape, config.embed_dim), jnp.float32),
        occupied=jnp.zeros(shape, bool),
        step=jnp.full(shape, -1, jnp.int32),
    )


def empty_insight(config: MemoryConfig, shape: tuple[int, ...]) -> Insight:
    """Empty insight slots with leading dims `shape`."""
    zeros = jnp.zeros(shape, jnp.int32)
    return Insight(
        kind=jnp.zeros(shape, jnp.int8),
        title=_ids(config, shape, config.title_len),
        title_len=zeros,
        content=_ids(config, shape, config.content_len),
        content_len=zeros,
        embedding=jnp.zeros((*shape, config.embed_dim), jnp.float32),
        occupied=jnp.zeros(shape, bool),
        step=jnp.full(shape, -1, jnp.int32),
    )


def empty_behaviours(config: MemoryConfig, shape: tuple[int, ...]) -> BehaviourBank:
    """Empty behaviour entries with leading dims `shape`."""
    minus_one = jnp.full(shape, -1, jnp.int32)
    return BehaviourBank(
        name=_ids(config, shape, config.name_len),
        name_len=jnp.zeros(shape, jnp.int32),
        instruction=_ids(config, shape, config.instruction_len),
        instruction_len=jnp.zeros(shape, jnp.int32),
        embedding=jnp.zeros((*shape, config.embed_dim), jnp.float32),
        alive=jnp.zeros(shape, bool),
        source_cluster=minus_one,
        created_step=minus_one,
        updated_step=minus_one,
    )


@functools.partial(jax.jit, static_argnames=("config",))
def init_memory(config: MemoryConfig) -> MemoryState:
    """An empty memory for `config.num_problems` problems."""
    return MemoryState(
        experience=empty_experience(config, (config.num_problems, config.experience_slots)),
        insight=empty_insight(config, (config.num_problems, config.insight_slots)),
        behaviours=empty_behaviours(config, (config.behaviour_slots,)),
    )


def grow(
    state: MemoryState, config: MemoryConfig, new_num_problems: int
) -> tuple[MemoryState, MemoryConfig]:
    """Append empty problem rows: experience/insight [P, ...] -> [new_num_problems, ...].

    Not jit'd (shapes change); ops recompile once for the new config.
    """
    extra = new_num_problems - config.num_problems
    if extra < 0:
        raise ValueError(
            f"grow: new_num_problems={new_num_problems} < MemoryConfig.num_problems="
            f"{config.num_problems}; the problem table only grows"
        )
    if state.experience.occupied.shape[0] != config.num_problems:
        raise ValueError(
            f"grow: state has {state.experience.occupied.shape[0]} problems but "
            f"MemoryConfig.num_problems={config.num_problems}"
        )
    concat = lambda old, new: jnp.concatenate([old, new], axis=0)
    experience = jax.tree.map(
        concat, state.experience, empty_experience(config, (extra, config.experience_slots))
    )
    insight = jax.tree.map(
        concat, state.insight, empty_insight(config, (extra, config.insight_slots))
    )
    new_config = dataclasses.replace(config, num_problems=new_num_problems)
    return state.replace(experience=experience, insight=insight), new_config


@functools.partial(
    jax.jit, static_argnames=("config", "keep_behaviours"), donate_argnames=("state",)
)
def clear(state: MemoryState, config: MemoryConfig, keep_behaviours: bool = True) -> MemoryState:
    """Empty experience and insight (and the bank unless `keep_behaviours`).

    `state` is donated (see ops.py)."""
    cleared = init_memory(config)
    if keep_behaviours:
        cleared = cleared.replace(behaviours=state.behaviours)
    return cleared


@jax.jit
def read_problem(state: MemoryState, problem_ids: jax.Array) -> tuple[Experience, Insight]:
    """Gather the memory of problems [B] -> (Experience [B, K, ...], Insight [B, I, ...]).

    Ids outside [0, P) read as empty (occupied all False).
    """
    num_problems = state.experience.occupied.shape[0]
    problem_ids = jnp.asarray(problem_ids, jnp.int32)
    valid = (problem_ids >= 0) & (problem_ids < num_problems)
    index = jnp.clip(problem_ids, 0, num_problems - 1)
    experience = jax.tree.map(lambda column: column[index], state.experience)
    insight = jax.tree.map(lambda column: column[index], state.insight)
    experience = experience.replace(occupied=experience.occupied & valid[:, None])
    insight = insight.replace(occupied=insight.occupied & valid[:, None])
    return experience, insight


@functools.partial(jax.jit, static_argnames=("config",))
def memory_sizes(state: MemoryState, config: MemoryConfig) -> dict[str, jax.Array]:
    """Occupied counts per level (int32 scalars) for metrics."""
    occupied = state.experience.occupied
    insight = state.insight
    count = lambda mask: jnp.sum(mask, dtype=jnp.int32)
    return {
        "experience_successes": count(occupied[:, : config.success_slots]),
        "experience_failures": count(occupied[:, config.success_slots :]),
        "experience_problems": count(jnp.any(occupied, axis=1)),
        "insight_strategies": count(insight.occupied & (insight.kind == STRATEGY)),
        "insight_lessons": count(insight.occupied & (insight.kind == LESSON)),
        "insight_problems": count(jnp.any(insight.occupied, axis=1)),
        "behaviours": count(state.behaviours.alive),
    }


def outcome_counts(outcome: Outcome) -> dict[str, jax.Array]:
    """Number of items per status name (int32 scalars), e.g. {"rejected_novelty": 3, ...}."""
    status = jnp.asarray(outcome.status)
    return {
        name: jnp.sum(status == code, dtype=jnp.int32) for code, name in enumerate(STATUS_NAMES)
    }


def pad_ids(
    sequences: Sequence[Sequence[int]], width: int, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Host-side: token id lists -> (ids [N, width] int32 padded/truncated, lengths [N] int32)."""
    ids = np.full((len(sequences), width), pad_id, np.int32)
    lengths = np.zeros(len(sequences), np.int32)
    for row, sequence in enumerate(sequences):
        kept = list(sequence)[:width]
        ids[row, : len(kept)] = kept
        lengths[row] = len(kept)
    return ids, lengths
