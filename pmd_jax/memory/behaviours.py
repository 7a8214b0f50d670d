"""Behaviour bank evolution (METHOD.md section 3, L2): cluster, summarise, prompt, parse, apply.

Every `every_steps` steps after `warmup_steps`, the training questions are clustered (spherical
k-means over their embeddings, kmeans.py); each chosen cluster is summarised as a few of its
questions with their insights (stored experience as a fallback) and sent to the evolver (the
policy by default) in one of two prompts:
- cold start, when no alive behaviour is similar to the cluster (best cosine of the cluster
  centroid against the bank below `similar_threshold`, or an empty bank): propose 3-8 named
  behaviours, answered as a JSON list of {name, instruction};
- evolve, otherwise: the `retrieve_existing` most similar behaviours are shown and the answer is
  {"actions": [{"op": "new" | "update" | "remove", "name", "instruction"}]}.
Parsed actions become `BehaviourActions` applied by `ops.apply_behaviour_actions` (its rules: NEW
of a known name updates it, UPDATE of an unknown name inserts, novelty gate, eviction of the most
redundant entry when the bank is full, so the bank never exceeds `behaviour_slots`). Actions are
applied in cluster order, then in the order the evolver wrote them; at most
`max_actions_per_cluster` per response.

Names: snake_case from the parser (behaviour_parse.py). A name longer than `MemoryConfig.name_len` tokens loses whole trailing words until it
fits (counted as "behaviour/names_truncated"); a name whose first word alone is too long is
dropped. Truncating, not dropping, keeps the action; the truncated name is what the bank stores
and what later evolve prompts show, so update/remove address it consistently. Instructions are
cut to `instruction_len` tokens, and the embedding is of the stored "name: instruction" text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pmd_jax import sampling
from pmd_jax.memory import ops
from pmd_jax.memory.behaviour_parse import Action, parse_behaviour_actions
from pmd_jax.memory.kmeans import kmeans, seed_centroids
from pmd_jax.memory.reflect_prompts import BACKENDS
from pmd_jax.memory.state import (
    LESSON,
    NEW,
    NOOP,
    REMOVE,
    STATUS_NAMES,
    UPDATE,
    BehaviourActions,
    MemoryConfig,
    MemoryState,
    pad_ids,
    read_problem,
    unit,
)
from pmd_jax.memory.teacher import render_items
from pmd_jax.remote import Recorder, RemoteConfig, RemoteSpec, chat
from pmd_jax.tokenizer import format_chat

SCOPES = ("batch", "all")
OUTPUT_FORMATS = ("json",)
EmbedFn = Callable[[list[str]], jax.Array]  # texts -> [N, D] unit-norm embeddings


@dataclasses.dataclass(frozen=True)
class BehaviourConfig:
    """Cadence, prompt sizes and sampling of behaviour evolution. Hashable."""

    num_clusters: int = 8  # k-means K (capped at the number of problems)
    warmup_steps: int = 2  # no evolution before this step
    every_steps: int = 10  # evolve at warmup_steps, warmup_steps + K, ...; 0 = never
    scope: str = "batch"  # "batch": clusters of the current batch's problems; "all"
    questions_per_cluster: int = 4  # questions shown in a cluster summary
    insights_per_question: int = 2  # insights shown under each question (newest first)
    retrieve_existing: int = 5  # existing behaviours shown in the evolve prompt
    similar_threshold: float = 0.5  # best bank cosine below this -> cold start prompt
    prime_response: bool = True  # start the answer with the JSON opening (see RESPONSE_PRIMES)
    max_actions_per_cluster: int = 8  # actions beyond this (per response) are dropped
    output_format: str = "json"
    max_new_tokens: int = 384
    temperature: float = 0.6
    top_p: float = 0.95
    batch_size: int = 8  # evolver prompts per sampler call
    kmeans_iters: int = 20
    question_chars: int = 400  # a longer question (or note) is cut, "..." appended
    note_chars: int = 240  # one insight or experience note
    max_prompt_tokens: int = 2048  # questions are dropped from a summary until a prompt fits
    # Evolver prompts are padded to at least this width (0: their 64-token bucket). Above the
    # longest prompt, the evolver's sampler compiles once per run (ReflectConfig.prompt_width).
    prompt_width: int = 0
    # Who evolves: "policy" | "base" (the initial params) | "openai" (the endpoint in `remote`).
    backend: str = "policy"
    remote: RemoteSpec = RemoteSpec()  # backend "openai": base_url, model, api_key_env, ...

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(
                f"BehaviourConfig.backend={self.backend!r}; expected one of {BACKENDS}"
            )
        if self.scope not in SCOPES:
            raise ValueError(f"BehaviourConfig.scope={self.scope!r}; expected one of {SCOPES}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(
                f"BehaviourConfig.output_format={self.output_format!r}; expected {OUTPUT_FORMATS}"
            )
        for name in ("num_clusters", "questions_per_cluster", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"BehaviourConfig.{name}={getattr(self, name)} must be >= 1")
        for name in (
            "warmup_steps",
            "every_steps",
            "insights_per_question",
            "retrieve_existing",
            "prompt_width",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"BehaviourConfig.{name}={getattr(self, name)} must be >= 0")
        if self.max_actions_per_cluster < 0 or self.kmeans_iters < 0:
            raise ValueError("BehaviourConfig.max_actions_per_cluster/kmeans_iters must be >= 0")


def should_evolve(step: int, config: BehaviourConfig) -> bool:
    """True at steps warmup_steps, warmup_steps + every_steps, ... (never when every_steps = 0).

    A function of the step alone, so a loop that asks once per step evolves at most once per step.
    """
    if config.every_steps == 0 or step < config.warmup_steps:
        return False
    return (step - config.warmup_steps) % config.every_steps == 0


# ---------------------------------------------------------------- cluster summaries and prompts

SYSTEM_PROMPT = (
    "You keep a small library of reusable behaviours for solving math word problems. A behaviour "
    "is a short named instruction that helps on many problems of a kind, not on one problem only."
)
# The answer shapes use "..." placeholders, not example behaviours: SmolLM2-135M copied a
# concrete example name into every answer (8/8 samples), while a copied "..." normalises to an
# empty name and is dropped.
_COLD_START_TASK = (
    "Propose 3 to 8 named behaviours for this kind of problem: positive strategies to follow and "
    "mistakes to avoid. Give each a name in snake_case (a few words joined by underscores) and an "
    "instruction of one or two sentences. Keep them general: no numbers or names from these "
    "particular problems.\n\n"
    'Answer with JSON only: a list of objects like {"name": "...", "instruction": "..."}.'
)
_EVOLVE_TASK = (
    "Improve the library for this kind of problem. You may add a new behaviour, update the "
    "instruction of an existing one (use its exact name), or remove one that is wrong or "
    "redundant. Names are snake_case; instructions are one or two general sentences, with no "
    "numbers or names from these particular problems.\n\n"
    'Answer with JSON only: {"actions": [...]} where each action is {"op": "new", "name": "...", '
    '"instruction": "..."}, {"op": "update", "name": "...", "instruction": "..."} or '
    '{"op": "remove", "name": "..."}. Answer {"actions": []} if the library needs no change.'
)


# The answer is started for the model (appended after the generation prompt, prepended to the
# generated text before parsing): small models then continue the JSON instead of writing prose.
RESPONSE_PRIMES = {"cold_start": '[{"name": "', "evolve": '{"actions": [{"op": "'}


def _clip(text: str, chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars].rstrip() + "..."


def _decode(tokenizer, ids: np.ndarray, length: int) -> str:
    return tokenizer.decode([int(i) for i in ids[: int(length)]])


def insight_note(is_lesson: bool, title: str, content: str, chars: int) -> str:
    """One insight as a note line of a cluster summary."""
    label = "Mistake to avoid" if is_lesson else "Strategy"
    text = _clip(f"{title.rstrip('.')}. {content}", chars)
    return f"{label}: {text}"


def attempt_note(response: str, feedback: str | None, chars: int) -> str:
    """One stored attempt as a note line: a success (feedback None) or a failure."""
    if feedback is None:
        return f"A correct solution: {_clip(response, chars)}"
    note = f"A wrong attempt: {_clip(response, chars)}"
    return note + (f" Feedback: {_clip(feedback, chars)}" if feedback else "")


def problem_notes(
    tokenizer, experience, insight, row: int, memory_config: MemoryConfig, config: BehaviourConfig
) -> list[str]:
    """Note lines for one problem of a `read_problem` batch (numpy leaves): its newest insights,
    else one stored success and one failure with its feedback, else nothing."""
    occupied = np.flatnonzero(insight.occupied[row])
    if occupied.size:
        newest = sorted(occupied, key=lambda slot: (-int(insight.step[row, slot]), slot))
        return [
            insight_note(
                insight.kind[row, slot] == LESSON,
                _decode(tokenizer, insight.title[row, slot], insight.title_len[row, slot]),
                _decode(tokenizer, insight.content[row, slot], insight.content_len[row, slot]),
                config.note_chars,
            )
            for slot in newest[: config.insights_per_question]
        ]
    notes = []
    split = memory_config.success_slots
    kinds = (("success", range(split)), ("failure", range(split, memory_config.experience_slots)))
    for kind, slots in kinds:
        held = [slot for slot in slots if experience.occupied[row, slot]]
        if not held:
            continue
        slot = max(held, key=lambda s: (int(experience.step[row, s]), -s))
        response = _decode(tokenizer, experience.tokens[row, slot], experience.length[row, slot])
        feedback = None
        if kind == "failure":
            feedback = _decode(
                tokenizer, experience.feedback[row, slot], experience.feedback_len[row, slot]
            )
        notes.append(attempt_note(response, feedback, config.note_chars))
    return notes


def cluster_summary(questions: Sequence[str], notes: Sequence[Sequence[str]], chars: int) -> str:
    """'Problem 1: <question>' lines, each followed by its '- <note>' lines."""
    blocks = []
    for number, (question, lines) in enumerate(zip(questions, notes, strict=True), start=1):
        blocks.append(
            "\n".join([f"Problem {number}: {_clip(question, chars)}"] + [f"- {n}" for n in lines])
        )
    return "\n\n".join(blocks)


def cold_start_messages(summary: str) -> list[tuple[str, str]]:
    """Chat messages asking for 3-8 new behaviours for a cluster (answer: a JSON list)."""
    intro = "Here are some problems of one kind, with notes learned while solving them:"
    return [("system", SYSTEM_PROMPT), ("user", f"{intro}\n\n{summary}\n\n{_COLD_START_TASK}")]


def evolve_messages(summary: str, existing: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Chat messages showing the existing (name, instruction) behaviours most similar to a cluster
    and asking for new/update/remove actions as JSON."""
    intro = "Here are some problems of one kind, with notes learned while solving them:"
    library = (
        f"The library already has these behaviours for similar problems:\n{render_items(existing)}"
    )
    return [
        ("system", SYSTEM_PROMPT),
        ("user", f"{intro}\n\n{summary}\n\n{library}\n\n{_EVOLVE_TASK}"),
    ]


# ---------------------------------------------------------------- evolution


class EvolveOutput(NamedTuple):
    """state: the memory after the actions (the input state was donated); stats: int counts under
    the "behaviour/..." metric keys; records: per cluster {cluster, mode, problem_ids, text, ok,
    error, actions} for the report; centroids: [K, D], pass back as `init_centroids` to keep
    cluster ids (the bank's source_cluster) stable across calls."""

    state: MemoryState
    stats: dict[str, int]
    records: list[dict[str, Any]]
    centroids: jax.Array


def select_clusters(assignment: np.ndarray, touched_problem_ids: Any, scope: str) -> list[int]:
    """Sorted cluster ids to evolve: non-empty clusters ("all") or those of the touched problems
    ("batch"; ids outside [0, P) are padding and ignored)."""
    if scope == "all":
        return sorted(set(assignment.tolist()))
    ids = np.asarray(touched_problem_ids, np.int64).ravel()
    ids = ids[(ids >= 0) & (ids < assignment.shape[0])]
    return sorted(set(assignment[ids].tolist()))


def representative_problems(
    assignment: np.ndarray, similarity: np.ndarray, has_memory: np.ndarray, cluster: int, count: int
) -> list[int]:
    """Up to `count` members of `cluster`: problems with memory first, then by cosine to the
    centroid (descending), then by id."""
    members = np.flatnonzero(assignment == cluster)
    order = sorted(members, key=lambda p: (not has_memory[p], -float(similarity[p]), int(p)))
    return [int(p) for p in order[:count]]


def fit_name_ids(tokenizer, name: str, width: int) -> tuple[list[int] | None, str]:
    """Token ids of a snake_case name in <= width tokens, dropping trailing words -> (ids, the
    name kept); (None, "") when even the first word is too long."""
    words = name.split("_")
    for count in range(len(words), 0, -1):
        kept = "_".join(words[:count])
        if len(ids := tokenizer.encode(kept)) <= width:
            return ids, kept
    return None, ""


def _prompt_ids(
    tokenizer, questions, notes, existing, cold: bool, config
) -> tuple[list[int], list[tuple[str, str]]]:
    """(chat ids, chat messages) of a cluster's prompt, dropping questions from the end until
    it fits."""
    for count in range(len(questions), 0, -1):
        summary = cluster_summary(questions[:count], notes[:count], config.question_chars)
        messages = cold_start_messages(summary) if cold else evolve_messages(summary, existing)
        if len(ids := list(format_chat(tokenizer, messages).ids)) <= config.max_prompt_tokens:
            return ids, messages
    raise ValueError(
        f"evolve_behaviours: a prompt with one question has {len(ids)} tokens > "
        f"BehaviourConfig.max_prompt_tokens={config.max_prompt_tokens}"
    )


def _existing(bank, tokenizer, indices: np.ndarray, valid: np.ndarray) -> list[tuple[str, str]]:
    """(name, instruction) of the valid retrieved entries of a host-side (numpy) bank."""
    return [
        (
            _decode(tokenizer, bank.name[i], bank.name_len[i]),
            _decode(tokenizer, bank.instruction[i], bank.instruction_len[i]),
        )
        for i, ok in zip(indices, valid, strict=True)
        if ok
    ]


def build_actions(
    actions: Sequence[tuple[int, Action]],
    tokenizer,
    memory_config: MemoryConfig,
    embed_fn: EmbedFn,
    num_rows: int,
) -> tuple[BehaviourActions, int, int]:
    """(cluster, Action) pairs -> (BehaviourActions [num_rows] padded with NOOP, rows used, names
    truncated). Names fitted by `fit_name_ids` (unfittable ones dropped); instructions cut to
    instruction_len tokens; embeddings of the stored "name: instruction" (zeros for remove)."""
    codes = {"new": NEW, "update": UPDATE, "remove": REMOVE}
    rows, truncated = [], 0
    for cluster, action in actions:
        name_ids, name = fit_name_ids(tokenizer, action.name, memory_config.name_len)
        if name_ids is None:
            continue
        truncated += name != action.name
        instruction_ids = tokenizer.encode(action.instruction)[: memory_config.instruction_len]
        rows.append((codes[action.op], name_ids, instruction_ids, cluster, name))
    rows = rows[:num_rows]
    op = np.full((num_rows,), NOOP, np.int32)
    op[: len(rows)] = [row[0] for row in rows]
    names, name_lens = pad_ids(
        [r[1] for r in rows] + [[]] * (num_rows - len(rows)),
        memory_config.name_len,
        memory_config.pad_id,
    )
    instructions, instruction_lens = pad_ids(
        [r[2] for r in rows] + [[]] * (num_rows - len(rows)),
        memory_config.instruction_len,
        memory_config.pad_id,
    )
    embeddings = np.zeros((num_rows, memory_config.embed_dim), np.float32)
    embedded = [i for i, row in enumerate(rows) if row[0] != REMOVE]
    if embedded:
        texts = [f"{rows[i][4]}: {tokenizer.decode(rows[i][2])}" for i in embedded]
        embeddings[embedded] = np.asarray(embed_fn(texts), np.float32)
    source = np.full((num_rows,), -1, np.int32)
    source[: len(rows)] = [row[3] for row in rows]
    batch = BehaviourActions(
        op, names, name_lens, instructions, instruction_lens, embeddings, source
    )
    return batch, len(rows), truncated


def _cluster_prompts(
    state, memory_config, tokenizer, questions, embeddings, centroids, assignment, clusters, config
) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """Prompt ids (primed) and a record {cluster, mode, problem_ids, existing, prime, messages}
    per cluster (messages: the unprimed chat, what an OpenAI-compatible evolver is sent)."""
    num_clusters = centroids.shape[0]
    similarity = np.sum(np.asarray(unit(embeddings)) * np.asarray(centroids)[assignment], axis=1)
    has_memory = np.asarray(
        jnp.any(state.experience.occupied, axis=1) | jnp.any(state.insight.occupied, axis=1)
    )
    picked = [
        representative_problems(assignment, similarity, has_memory, c, config.questions_per_cluster)
        for c in clusters
    ]
    # A fixed read width (K * questions_per_cluster, -1 = padding): one compile of read_problem.
    flat = np.full((num_clusters * config.questions_per_cluster,), -1, np.int32)
    flat[: sum(map(len, picked))] = [p for problems in picked for p in problems]
    experience, insight = jax.tree.map(np.asarray, read_problem(state, jnp.asarray(flat)))
    top_k = min(config.retrieve_existing, memory_config.behaviour_slots)
    if top_k:
        queries = np.asarray(centroids)[np.resize(np.asarray(clusters), num_clusters)]
        indices, scores, valid = map(np.asarray, ops.retrieve_behaviours(state, queries, top_k))
        bank = jax.tree.map(np.asarray, state.behaviours)
    prompts, records, row = [], [], 0
    for index, (cluster, problems) in enumerate(zip(clusters, picked, strict=True)):
        notes = [
            problem_notes(tokenizer, experience, insight, row + i, memory_config, config)
            for i in range(len(problems))
        ]
        row += len(problems)
        existing = _existing(bank, tokenizer, indices[index], valid[index]) if top_k else []
        best = scores[index][valid[index]].max() if top_k and valid[index].any() else -np.inf
        mode = "cold_start" if best < config.similar_threshold else "evolve"
        prime = RESPONSE_PRIMES[mode] if config.prime_response else ""
        texts = [questions[p] for p in problems]
        ids, messages = _prompt_ids(tokenizer, texts, notes, existing, mode == "cold_start", config)
        prompts.append(ids + (tokenizer.encode(prime) if prime else []))
        record = {"cluster": cluster, "mode": mode, "problem_ids": problems, "prime": prime}
        record["messages"] = messages  # popped by evolve_behaviours (the endpoint's prompt)
        records.append(record | {"existing": [name for name, _ in existing]})
    return prompts, records


def _chat_messages(messages: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """(role, content) pairs as OpenAI chat messages."""
    return [{"role": role, "content": content} for role, content in messages]


def _sample(params, model_config, tokenizer, prompts, config, rng, mesh) -> list[str]:
    """The evolver's sampled continuations of the (primed) prompt ids."""
    sample_config = sampling.SampleConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        stop_ids=tuple(tokenizer.stop_ids),
        pad_id=tokenizer.pad_id,
    )
    # Always config.batch_size rows (a short batch is filled with repeats): one program per run.
    return sampling.generate_texts(
        params,
        model_config,
        tokenizer,
        prompts,
        sample_config,
        rng,
        batch_size=config.batch_size,
        min_width=config.prompt_width,
        mesh=mesh,
    )


def _empty_stats() -> dict[str, int]:
    keys = ["clusters", "cold_starts", "parse_failures", "items_dropped", "names_truncated"]
    keys += ["actions_new", "actions_update", "actions_remove", "over_width"]
    keys += [f"applied_{name}" for name in STATUS_NAMES]
    return {f"behaviour/{key}": 0 for key in keys}


def evolve_behaviours(
    params: dict,
    model_config,
    tokenizer,
    state: MemoryState,
    memory_config: MemoryConfig,
    questions: Sequence[str],
    question_embeddings: jax.Array,
    touched_problem_ids: Any,
    step: int,
    config: BehaviourConfig,
    rng: jax.Array,
    embed_fn: EmbedFn,
    init_centroids: jax.Array | None = None,
    *,
    mesh=None,
    remote: RemoteConfig | None = None,
    recorder: Recorder | None = None,
) -> EvolveOutput:
    """One round of behaviour evolution (module doc). questions: all P training problems (index =
    problem id); question_embeddings: [P, D]; touched_problem_ids: [B] (scope "batch"); embed_fn:
    texts -> [N, D]; mesh: where the evolver samples (`sampling.sample`). `state` is donated when
    actions are applied: use the returned one.

    remote: evolve with an OpenAI-compatible endpoint instead of `params` (BehaviourConfig.backend
    "openai"): each cluster's chat messages (the same as the sampler's, without the primed
    answer: the endpoint writes the whole JSON) go to `remote.chat` (recorded by `recorder`), and
    each reply is parsed as a sampled text is. A failed request gives that cluster no actions
    (its record's error is "remote: <kind>"); stats gain "behaviour/remote/..." counts."""
    embeddings = jnp.asarray(question_embeddings, jnp.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(questions):
        raise ValueError(
            f"evolve_behaviours: question_embeddings shape {embeddings.shape} != "
            f"({len(questions)}, D) for {len(questions)} questions"
        )
    kmeans_rng, sample_rng = jax.random.split(rng)
    num_clusters = min(config.num_clusters, len(questions))
    if init_centroids is None:  # the first round: k-means++ seeds, then the same program as later
        init_centroids = seed_centroids(embeddings, num_clusters, kmeans_rng)
    centroids, assignment = kmeans(
        embeddings, num_clusters, kmeans_rng, config.kmeans_iters, init_centroids
    )
    assignment = np.asarray(assignment)
    clusters = select_clusters(assignment, touched_problem_ids, config.scope)
    stats = _empty_stats()
    stats["behaviour/clusters"] = len(clusters)
    if not clusters:
        return EvolveOutput(state, stats, [], centroids)

    prompts, records = _cluster_prompts(
        state,
        memory_config,
        tokenizer,
        questions,
        embeddings,
        centroids,
        assignment,
        clusters,
        config,
    )
    stats["behaviour/cold_starts"] = sum(record["mode"] == "cold_start" for record in records)
    messages = [record.pop("messages") for record in records]
    if remote is not None:
        results = chat(remote, [_chat_messages(m) for m in messages], recorder=recorder)
        stats |= {f"behaviour/{key}": value for key, value in results.metrics.items()}
        outputs = [result.text for result in results]
        for record in records:
            record["prime"] = ""  # the endpoint's answer is the whole text
    else:
        outputs = _sample(params, model_config, tokenizer, prompts, config, sample_rng, mesh)
        longest = max(len(prompt) for prompt in prompts)
        stats["behaviour/over_width"] = int(
            bool(config.prompt_width) and longest > config.prompt_width
        )
    pending = []
    for index, (record, generated) in enumerate(zip(records, outputs, strict=True)):
        if generated is None:  # a failed request (remote): no actions for this cluster
            record.pop("prime")
            error = f"remote: {results[index].error}"
            record.update(text="", ok=False, error=error, actions=[])
            continue
        text = record.pop("prime") + generated
        parsed = parse_behaviour_actions(text)
        kept = parsed.actions[: config.max_actions_per_cluster]
        stats["behaviour/parse_failures"] += int(not parsed.ok)
        stats["behaviour/items_dropped"] += parsed.dropped + len(parsed.actions) - len(kept)
        pending += [(record["cluster"], action) for action in kept]
        record.update(text=text, ok=parsed.ok, error=parsed.error)
        record["actions"] = [action._asdict() for action in kept]

    num_rows = num_clusters * config.max_actions_per_cluster
    actions, used, truncated = build_actions(pending, tokenizer, memory_config, embed_fn, num_rows)
    stats["behaviour/names_truncated"] = truncated
    stats["behaviour/items_dropped"] += len(pending) - used
    for code, op in ((NEW, "new"), (UPDATE, "update"), (REMOVE, "remove")):
        stats[f"behaviour/actions_{op}"] = int(np.sum(actions.op == code))
    # Applied even when no row is used (all NOOP, state unchanged): the program is compiled at
    # the first evolution, not at the first one that parses.
    state, outcome = ops.apply_behaviour_actions(state, memory_config, actions, step)
    status = np.asarray(outcome.status)[:used]
    for code, name in enumerate(STATUS_NAMES):
        stats[f"behaviour/applied_{name}"] = int(np.sum(status == code))
    return EvolveOutput(state, stats, records, centroids)
