"""The host side of one training step, phase by phase: sample -> verify -> remember -> reflect ->
evolve -> teach. Each phase is a function of arrays and texts; the jit'd work happens inside
(sampler, embeddings, memory ops), the glue (decoding, verifying, prompt text) on the host.

Rows are prompt-major throughout: row b * J + j is rollout j of problem b of the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from pmd_jax import sharding
from pmd_jax.data.prompts import PromptConfig, format_prompts, system_prompt
from pmd_jax.embeddings import embed_texts, embed_tokens
from pmd_jax.memory import ops
from pmd_jax.memory.behaviours import BehaviourConfig, evolve_behaviours, should_evolve
from pmd_jax.memory.reflect import (
    ReflectConfig,
    build_reflection_requests,
    experience_attempts,
    insights_to_memory,
    reflect,
    reflect_remote,
)
from pmd_jax.memory.state import (
    INSERTED,
    INSERTED_EVICTING,
    MemoryConfig,
    MemoryState,
    pad_ids,
    read_problem,
)
from pmd_jax.memory.teacher import (
    DROPPABLE_BLOCKS,
    TeacherBatch,
    TeacherConfig,
    build_teacher_prompts,
    memory_views,
)
from pmd_jax.model.config import ModelConfig
from pmd_jax.remote import Recorder, RemoteConfig
from pmd_jax.sampling import SampleConfig, left_pad, sample
from pmd_jax.train_step import RolloutBatch
from pmd_jax.verify import VerifierConfig, verify_batch

EmbedFn = Callable[[list[str]], np.ndarray]  # texts [N] -> unit embeddings [N, D] (host)


@dataclasses.dataclass
class Rollouts:
    """One step's prompts and sampled, verified responses. B problems, N = B * J rows."""

    problem_ids: np.ndarray  # [B] int32, row of the problem in the train split (= memory id)
    questions: list[str]  # [B]
    answers: list[str]  # [B]
    prompt_tokens: np.ndarray  # [B, Tp] int32, left-padded
    prompt_mask: np.ndarray  # [B, Tp] bool
    tokens: np.ndarray  # [N, G] int32, pad after the end
    logprobs: np.ndarray  # [N, G] float32 sampler log-probs (0 after the end)
    lengths: np.ndarray  # [N] int32
    texts: list[str]  # [N] decoded responses
    rewards: np.ndarray | None = None  # [N] float32, after `verify_rollouts`
    feedback: list[str] | None = None  # [N]

    @property
    def group_size(self) -> int:
        return len(self.texts) // len(self.questions)

    @property
    def response_mask(self) -> np.ndarray:
        return np.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]


def sample_rollouts(
    params,
    model_config: ModelConfig,
    tokenizer,
    batch: dict,
    prompt_config: PromptConfig,
    sample_config: SampleConfig,
    rng: jax.Array,
    *,
    stop_table: np.ndarray | None = None,
    width: int | None = None,
    mesh: Mesh | None = None,
    waves: int = 1,
) -> Rollouts:
    """Format the batch's questions as chat prompts (left-padded to `width`, default: bucketed
    longest) and sample J responses each (on `mesh` when given; every host gets every row).

    waves: sample the prompts in this many sequential calls of B / waves prompts (wave w keyed
    by fold_in(rng, w)), so the sampler holds that fraction of the KV cache; rows stay in
    prompt-major order."""
    questions = [str(q) for q in batch["question"]]
    prompts = format_prompts(tokenizer, questions, prompt_config)
    prompt_tokens, prompt_mask = left_pad([p.ids for p in prompts], tokenizer.pad_id, width)
    if len(questions) % waves:
        raise ValueError(f"{len(questions)} prompts do not split into rollout.waves={waves}")
    per_wave = len(questions) // waves
    parts = []
    for wave in range(waves):
        rows = slice(wave * per_wave, (wave + 1) * per_wave)
        key = rng if waves == 1 else jax.random.fold_in(rng, wave)
        output = sample(
            params, model_config, prompt_tokens[rows], prompt_mask[rows], key, sample_config,
            stop_table, mesh,
        )  # fmt: skip
        parts.append(sharding.to_host((output.tokens, output.logprobs, output.lengths)))
    tokens, logprobs, lengths = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    ids = [tokens[row, : lengths[row]].tolist() for row in range(tokens.shape[0])]
    return Rollouts(
        problem_ids=np.asarray(batch["id"], np.int32),
        questions=questions,
        answers=[str(a) for a in batch["answer"]],
        prompt_tokens=prompt_tokens,
        prompt_mask=prompt_mask,
        tokens=tokens,
        logprobs=logprobs.astype(np.float32),
        lengths=lengths.astype(np.int32),
        texts=[tokenizer.decode(row) for row in ids],
    )


def verify_rollouts(rollouts: Rollouts, config: VerifierConfig) -> Rollouts:
    """Fill rewards [N] and feedback [N] (each problem's answer repeated over its group)."""
    golds = [answer for answer in rollouts.answers for _ in range(rollouts.group_size)]
    rewards, feedback = verify_batch(rollouts.texts, golds, config)
    return dataclasses.replace(
        rollouts, rewards=np.asarray(rewards, np.float32), feedback=list(feedback)
    )


def remember(
    memory: MemoryState,
    memory_config: MemoryConfig,
    encoder_params,
    model_config: ModelConfig,
    tokenizer,
    rollouts: Rollouts,
    step: int,
    mesh: Mesh | None = None,
) -> tuple[MemoryState, dict[str, float], np.ndarray]:
    """Insert every rollout into its problem's experience (novelty-gated); the rollouts are
    embedded on `mesh` when given.

    Returns (memory, stats, changed [B] bool: the problem's experience took a new item)."""
    embeddings = embed_tokens(
        encoder_params, model_config, rollouts.tokens, rollouts.response_mask, mesh
    )
    feedback, feedback_lens = pad_ids(
        [tokenizer.encode(text or "", allow_special=False) for text in rollouts.feedback],
        memory_config.feedback_len,
        memory_config.pad_id,
    )
    problem_rows = np.repeat(rollouts.problem_ids, rollouts.group_size)
    memory, outcome = ops.insert_experience_batch(
        memory,
        memory_config,
        problem_rows,
        rollouts.tokens,  # fitted to response_len (truncated or padded) by the insert
        rollouts.lengths,
        rollouts.rewards,
        feedback,
        feedback_lens,
        embeddings,
        step,
    )
    inserted = np.isin(np.asarray(outcome.status), (INSERTED, INSERTED_EVICTING))
    changed = inserted.reshape(-1, rollouts.group_size).any(axis=1)
    stats = {"memory/experience_inserted": float(inserted.sum())}
    return memory, stats, changed


def reflect_on_groups(
    memory: MemoryState,
    memory_config: MemoryConfig,
    reflector_params,
    model_config: ModelConfig,
    tokenizer,
    rollouts: Rollouts,
    changed: np.ndarray,
    config: ReflectConfig,
    embed_fn: EmbedFn,
    rng: jax.Array,
    step: int,
    mesh: Mesh | None = None,
    *,
    remote: RemoteConfig | None = None,
    recorder: Recorder | None = None,
) -> tuple[MemoryState, dict[str, float], list[str]]:
    """Reflect on the problems whose experience changed (sampling on `mesh` when given; with
    `remote`, asking that OpenAI-compatible endpoint the same prompts instead: reflect_remote);
    insert the kept insights."""
    chosen = np.flatnonzero(changed)
    if chosen.size == 0:
        return memory, {"reflect/requests": 0.0}, []
    j = rollouts.group_size
    experience, _ = read_problem(memory, rollouts.problem_ids[chosen])
    groups = [
        [
            (
                rollouts.texts[b * j + k],
                float(rollouts.rewards[b * j + k]),
                rollouts.feedback[b * j + k],
            )
            for k in range(j)
        ]
        for b in chosen
    ]
    stored = [experience_attempts(experience, row, tokenizer) for row in range(len(chosen))]
    requests = build_reflection_requests(
        tokenizer,
        [rollouts.questions[b] for b in chosen],
        groups,
        config,
        stored=stored,
        success_reward=memory_config.success_reward,
    )
    if remote is not None:
        result = reflect_remote(remote, requests, config, recorder)
    else:
        result = reflect(
            reflector_params, model_config, tokenizer, requests, config, rng, mesh=mesh
        )
    memory, insert_stats = insights_to_memory(
        memory,
        memory_config,
        tokenizer,
        [int(rollouts.problem_ids[b]) for b in chosen],
        result.items_per_request,
        embed_fn,
        step,
    )
    stats = {key: float(value) for key, value in {**result.stats, **insert_stats}.items()}
    return memory, stats, result.raw_texts


def maybe_evolve(
    memory: MemoryState,
    memory_config: MemoryConfig,
    evolver_params,
    model_config: ModelConfig,
    tokenizer,
    all_questions: Sequence[str],
    question_embeddings: jax.Array,
    rollouts: Rollouts,
    config: BehaviourConfig,
    embed_fn: EmbedFn,
    rng: jax.Array,
    step: int,
    centroids: jax.Array | None,
    mesh: Mesh | None = None,
    *,
    remote: RemoteConfig | None = None,
    recorder: Recorder | None = None,
) -> tuple[MemoryState, dict[str, float], jax.Array | None]:
    """Behaviour-bank evolution on its cadence (no-op on other steps). `centroids` [K, D] of the
    previous round seed k-means, which keeps cluster ids stable; the new ones are returned.
    With `remote` the evolver is that OpenAI-compatible endpoint (evolve_behaviours)."""
    if not should_evolve(step, config):
        return memory, {}, centroids
    output = evolve_behaviours(
        evolver_params,
        model_config,
        tokenizer,
        memory,
        memory_config,
        all_questions,
        question_embeddings,
        rollouts.problem_ids,
        step,
        config,
        rng,
        embed_fn,
        centroids,
        mesh=mesh,
        remote=remote,
        recorder=recorder,
    )
    stats = {key: float(value) for key, value in output.stats.items()}
    return output.state, stats, output.centroids


def teacher_prompts(
    tokenizer,
    rollouts: Rollouts,
    config: TeacherConfig,
    prompt_config: PromptConfig,
    *,
    blocks: Sequence[str] = DROPPABLE_BLOCKS,
    memory: MemoryState | None = None,
    memory_config: MemoryConfig | None = None,
    question_embeddings: jax.Array | None = None,
    success_reward: float | None = None,
) -> TeacherBatch:
    """Teacher prompt ids per rollout, showing only `blocks` (a run's `RunPlan.teacher_blocks`):
    from the group alone without `memory` (SDPO), else also from the problem's memory views
    (behaviours retrieved only when shown). A sibling with reward > success_reward is a correct
    solution: pass it, or `memory_config`, whose `success_reward` it then is."""
    if success_reward is None:
        if memory_config is None:
            raise ValueError("teacher_prompts: pass success_reward or memory_config")
        success_reward = memory_config.success_reward
    views = None
    if memory is not None:
        indices = None
        if "behaviours" in blocks and config.num_behaviours > 0:
            queries = np.asarray(question_embeddings)[rollouts.problem_ids]
            indices, _, _ = ops.retrieve_behaviours(memory, queries, config.num_behaviours)
            indices = np.asarray(indices)
        views = memory_views(memory, memory_config, tokenizer, rollouts.problem_ids, indices)
    return build_teacher_prompts(
        tokenizer,
        rollouts.questions,
        rollouts.texts,
        rollouts.rewards,
        rollouts.feedback,
        views,
        config,
        system_prompt(prompt_config),
        group_size=rollouts.group_size,
        success_reward=success_reward,
        blocks=blocks,
        chat_format=prompt_config.chat_format,
    )


def make_embed_fn(
    encoder_params, model_config: ModelConfig, tokenizer, max_tokens: int, mesh: Mesh | None = None
) -> EmbedFn:
    """Texts -> unit embeddings [N, D] with the fixed memory encoder (on `mesh` when given)."""

    def embed(texts: list[str]) -> jax.Array:
        return embed_texts(
            encoder_params,
            model_config,
            tokenizer,
            list(texts),
            batch_size=16,
            max_tokens=max_tokens,
            mesh=mesh,
        )

    return embed


def tokens_with_width(tokens: np.ndarray, mask: np.ndarray, width: int, pad_id: int):
    """Left-pad [N, T] ids/mask to exactly `width` columns (train-step shapes stay few)."""
    extra = width - tokens.shape[1]
    if extra < 0:
        raise ValueError(f"prompt width {tokens.shape[1]} exceeds {width}")
    return (
        np.pad(tokens, ((0, 0), (extra, 0)), constant_values=pad_id),
        np.pad(mask, ((0, 0), (extra, 0)), constant_values=False),
    )


def rollout_batch(
    rollouts: Rollouts, teacher: TeacherBatch | None, teacher_width: int, pad_id: int
) -> RolloutBatch:
    """The phases' outputs as the train step's arrays: N = B * J rows, the prompt of each row
    repeated J times, teacher prompts left-padded to `teacher_width` (GRPO: teacher None ->
    [N, 1] placeholders the GRPO loss never reads)."""
    j = rollouts.group_size
    rows = np.repeat(np.arange(len(rollouts.questions)), j)
    n = len(rollouts.texts)
    if teacher is None:
        teacher_tokens = np.zeros((n, 1), np.int32)
        teacher_mask = np.ones((n, 1), bool)
        sample_mask = np.ones((n,), bool)
    else:
        teacher_tokens, teacher_mask = tokens_with_width(
            teacher.prompt_tokens, teacher.prompt_mask, teacher_width, pad_id
        )
        sample_mask = teacher.has_signal
    return RolloutBatch(
        prompt_tokens=rollouts.prompt_tokens[rows],
        prompt_mask=rollouts.prompt_mask[rows],
        response_tokens=rollouts.tokens.astype(np.int32),
        response_mask=rollouts.response_mask,
        sampler_logprobs=rollouts.logprobs,
        rewards=rollouts.rewards,
        teacher_tokens=np.asarray(teacher_tokens, np.int32),
        teacher_mask=np.asarray(teacher_mask, bool),
        sample_mask=np.asarray(sample_mask, bool),
    )
