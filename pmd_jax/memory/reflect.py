"""Reflection (METHOD.md section 3): a problem's attempts -> strategies and lessons in memory.

build_reflection_requests (prompts, reflect_prompts.py) -> reflect (sample with the reflector's
params, parse and filter, reflect_parse.py) -> insights_to_memory (embed, novelty-gated insert).
With ReflectConfig.backend "openai", `reflect_remote` sends each request's chat messages (the
same text, without the primed answer) to an OpenAI-compatible endpoint (pmd_jax/remote.py) and
parses and filters the replies exactly as sampled texts are.

Default output format: "json", chosen by parse rate with SmolLM2-135M-Instruct (fp32, CPU) on
the first 16 arith train problems (4 families x 1-4 steps), each with a group of 4 real rollouts
(T=0.6, top_p=0.95; avg@4 0.11, pass@4 0.19, so 13 lessons-only and 3 contrastive prompts), one
reflection per problem at T=0.6, top_p=0.95, 256 new tokens, primed responses, ReflectConfig
defaults otherwise:
    format  parsed (ok/requests)  items kept/request  shortcuts dropped
    lines   0/16  (0%)            0.00                none (no item parsed)
    json    2/16  (12.5%)         0.00                problem_names 2, refers_to_attempts 1
Before the degenerate-item gate of reflect_parse.py the same texts parsed 2/16 (lines) and 5/16
(json). In the lines format the model mostly echoed the spec line "LESSON: <title> | <content>"
(8/16) or wrote a line without a separator; in json it wrote JSON-shaped text that broke or
degenerated ("No"/"No", repeated phrases). At 135M, reflection is close to useless in both
formats; a larger reflector (reflect.backend="openai", an external model) is the lever.
Reflection took 326 s (lines) and 366 s (json) for 16 prompts on 2 shared CPU cores.
Command: `python -m benchmarks.reflect_parse_rate` (results, raw texts included:
benchmarks/results/reflect.json; `--rescore FILE` re-parses stored texts without the model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from pmd_jax.memory import ops
from pmd_jax.memory.reflect_parse import (
    SHORTCUT_REASONS,
    InsightItem,
    ParsedReflection,
    filter_shortcuts,
    parse_reflection,
    shortcut_reason,
)
from pmd_jax.memory.reflect_prompts import (
    Attempt,
    ReflectConfig,
    build_messages,
    reflection_case,
    response_prefix,
)
from pmd_jax.memory.state import (
    INSERTED,
    INSERTED_EVICTING,
    LESSON,
    REJECTED_NOVELTY,
    REJECTED_REDUNDANT,
    STRATEGY,
    Experience,
    MemoryConfig,
    MemoryState,
    pad_ids,
)
from pmd_jax.model.config import ModelConfig
from pmd_jax.remote import Recorder, RemoteConfig, chat
from pmd_jax.sampling import SampleConfig, generate_texts
from pmd_jax.tokenizer import format_chat

__all__ = [
    "SHORTCUT_REASONS",
    "Attempt",
    "InsightItem",
    "ParsedReflection",
    "ReflectConfig",
    "ReflectionRequest",
    "ReflectionResult",
    "build_reflection_requests",
    "experience_attempts",
    "filter_shortcuts",
    "insights_to_memory",
    "parse_reflection",
    "reflect",
    "reflect_remote",
    "reflection_case",
    "shortcut_reason",
]

_KIND_CODES = {"strategy": STRATEGY, "lesson": LESSON}
_INSERT_BUCKET = 16  # insert batches are padded to a multiple of this: few insert compiles


class ReflectionRequest(NamedTuple):
    """One reflection prompt: ids [T] (chat, ending with the primed response), its case, the
    question (for the shortcut filter), the primed text the parser prepends, and the chat
    messages ((role, content) pairs) the ids were built from (what `reflect_remote` sends)."""

    prompt_ids: tuple[int, ...]
    case: str
    question: str
    response_prefix: str
    messages: tuple[tuple[str, str], ...] = ()


class ReflectionResult(NamedTuple):
    """Per request: the kept items and the raw text (primed prefix + generated); summed stats."""

    items_per_request: list[tuple[InsightItem, ...]]
    stats: dict[str, int]
    raw_texts: list[str]


def experience_attempts(experience: Experience, row: int, tokenizer) -> list[Attempt]:
    """Decode the occupied slots of row `row` of Experience [B, K] (from read_problem)."""
    occupied = np.asarray(experience.occupied[row])
    tokens, lengths = np.asarray(experience.tokens[row]), np.asarray(experience.length[row])
    feedback = np.asarray(experience.feedback[row])
    feedback_lens = np.asarray(experience.feedback_len[row])
    rewards = np.asarray(experience.reward[row])
    return [
        Attempt(
            text=tokenizer.decode(tokens[slot, : lengths[slot]].tolist()),
            reward=float(rewards[slot]),
            feedback=tokenizer.decode(feedback[slot, : feedback_lens[slot]].tolist()),
        )
        for slot in np.flatnonzero(occupied)
    ]


def build_reflection_requests(
    tokenizer,
    questions: Sequence[str],
    groups: Sequence[Sequence[Attempt]],
    config: ReflectConfig,
    *,
    success_reward: float,
    stored: Sequence[Sequence[Attempt]] | None = None,
) -> list[ReflectionRequest]:
    """One request per problem: questions [B], groups [B] of (text, reward, feedback) attempts,
    optional stored experience [B] (see `experience_attempts`). An attempt with reward >
    success_reward (the run's `MemoryConfig.success_reward`) is a success."""
    if len(questions) != len(groups) or (stored is not None and len(stored) != len(groups)):
        raise ValueError(
            f"build_reflection_requests: {len(questions)} questions, {len(groups)} groups, "
            f"{'no' if stored is None else len(stored)} stored lists; they must match"
        )
    requests = []
    for index, (question, group) in enumerate(zip(questions, groups, strict=True)):
        attempts = [Attempt(*attempt) for attempt in group]
        case, messages = build_messages(
            question,
            attempts,
            config,
            success_reward=success_reward,
            stored=() if stored is None else [Attempt(*a) for a in stored[index]],
        )
        prefix = response_prefix(case, config)
        prompt = format_chat(tokenizer, messages, response=prefix or None)
        messages = tuple((role, content) for role, content in messages)
        requests.append(ReflectionRequest(prompt.ids, case, question, prefix, messages))
    return requests


def _dedupe(items: Sequence[InsightItem]) -> tuple[list[InsightItem], int]:
    """Drop repeats (same kind, title and content up to case) -> (items, number dropped)."""
    seen, kept = set(), []
    for item in items:
        key = (item.kind, item.title.lower(), item.content.lower())
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept, len(items) - len(kept)


def _cap_per_kind(items: Sequence[InsightItem], limit: int) -> list[InsightItem]:
    counts = dict.fromkeys(_KIND_CODES, 0)
    kept = []
    for item in items:
        if counts[item.kind] < limit:
            counts[item.kind] += 1
            kept.append(item)
    return kept


def select_items(
    text: str, question: str, config: ReflectConfig
) -> tuple[tuple[InsightItem, ...], dict[str, int]]:
    """One reflection text -> (kept items, stats): parse, dedupe, shortcut filter, cap per kind."""
    parsed = parse_reflection(text, config.output_format)
    items, duplicates = _dedupe(parsed.items)
    shortcut_counts = dict.fromkeys(SHORTCUT_REASONS, 0)
    if config.filter_shortcuts:
        kept, shortcut_counts = filter_shortcuts(items, question)
        items = list(kept)
    items = _cap_per_kind(items, config.items_per_kind)
    stats = {
        "reflect/requests": 1,
        "reflect/parsed": int(parsed.ok),
        "reflect/parse_failures": int(not parsed.ok),
        "reflect/items": len(items),
        "reflect/duplicates": duplicates,
        **{f"shortcut/{reason}": count for reason, count in shortcut_counts.items()},
    }
    return tuple(items), stats


def sample_config(tokenizer, config: ReflectConfig) -> SampleConfig:
    """The sampler settings of a reflection call (one sample per request)."""
    return SampleConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        num_samples=1,
        stop_ids=tuple(tokenizer.stop_ids),
        pad_id=tokenizer.pad_id,
    )


def reflect(
    params: dict,
    model_config: ModelConfig,
    tokenizer,
    requests: Sequence[ReflectionRequest],
    config: ReflectConfig,
    rng: jax.Array,
    *,
    mesh=None,
) -> ReflectionResult:
    """Sample one reflection per request with `params` (the reflector), parse and filter
    (on `mesh` when given: `sampling.sample`).

    stats: "reflect/requests", "reflect/parsed", "reflect/parse_failures" (parsed + failures =
    requests), "reflect/items" (kept), "reflect/duplicates", "shortcut/<reason>" (dropped),
    "reflect/over_width" (prompts longer than config.prompt_width, when set).
    """
    generated = generate_texts(
        params,
        model_config,
        tokenizer,
        [list(request.prompt_ids) for request in requests],
        sample_config(tokenizer, config),
        rng,
        batch_size=config.batch_size,
        bucket=config.prompt_bucket,
        min_width=config.prompt_width,
        mesh=mesh,
    )
    width = config.prompt_width
    over_width = sum(len(r.prompt_ids) > width for r in requests) if width else 0
    raws = [
        request.response_prefix + text for request, text in zip(requests, generated, strict=True)
    ]
    return _select_all(requests, raws, config, {"reflect/over_width": over_width})


def _select_all(
    requests: Sequence[ReflectionRequest],
    raws: Sequence[str | None],
    config: ReflectConfig,
    extra: dict,
) -> ReflectionResult:
    """Parse and filter each raw text (None: a failed remote request, no items, not parsed)."""
    stats = {"reflect/requests": 0, "reflect/parsed": 0, "reflect/parse_failures": 0, **extra}
    stats |= {"reflect/items": 0, "reflect/duplicates": 0}
    stats |= {f"shortcut/{reason}": 0 for reason in SHORTCUT_REASONS}
    items_per_request, raw_texts = [], []
    for request, raw in zip(requests, raws, strict=True):
        if raw is None:
            stats["reflect/requests"] += 1
            items_per_request.append(())
            raw_texts.append("")
            continue
        items, item_stats = select_items(raw, request.question, config)
        items_per_request.append(items)
        raw_texts.append(raw)
        for key, value in item_stats.items():
            stats[key] += value
    return ReflectionResult(items_per_request, stats, raw_texts)


def chat_messages(request: ReflectionRequest) -> list[dict[str, str]]:
    """A request's chat as OpenAI messages (no primed assistant turn: the endpoint answers whole)."""
    if not request.messages:
        raise ValueError("a ReflectionRequest without messages cannot go to an endpoint")
    return [{"role": role, "content": content} for role, content in request.messages]


def reflect_remote(
    remote: RemoteConfig,
    requests: Sequence[ReflectionRequest],
    config: ReflectConfig,
    recorder: Recorder | None = None,
) -> ReflectionResult:
    """One reflection per request from an OpenAI-compatible endpoint (ReflectConfig.backend
    "openai"): the request's messages go to `remote.chat` (answers recorded or replayed by
    `recorder`), and each reply is parsed and filtered as `reflect` does a sampled text (there is
    no primed prefix: the endpoint writes the whole answer).

    stats: those of `reflect` ("reflect/over_width" is 0), plus the endpoint's counts under
    "reflect/remote/..." (requests, failures/<kind>, ...). A failed request (timeout, HTTP 5xx,
    bad JSON, over budget) gives its problem no items and counts in "reflect/requests" only:
    parsed + parse_failures + remote/failures = requests."""
    results = chat(remote, [chat_messages(r) for r in requests], recorder=recorder)
    extra = {"reflect/over_width": 0}
    extra |= {f"reflect/{key}": value for key, value in results.metrics.items()}
    return _select_all(requests, [result.text for result in results], config, extra)


def insights_to_memory(
    state: MemoryState,
    memory_config: MemoryConfig,
    tokenizer,
    problem_ids: Sequence[int],
    items_per_request: Sequence[Sequence[InsightItem]],
    embed_fn: Callable[[list[str]], jax.Array],
    step: int,
) -> tuple[MemoryState, dict[str, int]]:
    """Insert the items of each request into its problem's insight slots (novelty-gated).

    embed_fn: texts [N] -> embeddings [N, D], called once on "title: content". `state` is donated
    (ops.insert_insights). The batch is padded with skipped rows to a multiple of 16 so that the
    insert compiles for few shapes. stats: "reflect/inserted" (including evictions),
    "reflect/rejected_novelty", "reflect/rejected_redundant".
    """
    if len(problem_ids) != len(items_per_request):
        raise ValueError(
            f"insights_to_memory: {len(problem_ids)} problem ids but {len(items_per_request)} "
            "item lists"
        )
    pairs = zip(problem_ids, items_per_request, strict=True)
    rows = [(pid, item) for pid, items in pairs for item in items]
    stats = {"reflect/inserted": 0, "reflect/rejected_novelty": 0, "reflect/rejected_redundant": 0}
    # Even with nothing to insert the call runs (all rows skipped): the insert is compiled at the
    # first reflection, not at the first one that parses (no new program later in the run).
    size = max(-(-len(rows) // _INSERT_BUCKET), 1) * _INSERT_BUCKET
    pad = memory_config.pad_id
    encode = lambda text: tokenizer.encode(text, allow_special=False)
    titles, title_lens = pad_ids([encode(i.title) for _, i in rows], memory_config.title_len, pad)
    contents, content_lens = pad_ids(
        [encode(i.content) for _, i in rows], memory_config.content_len, pad
    )
    texts = [f"{i.title}: {i.content}" for _, i in rows]
    embeddings = (
        np.asarray(embed_fn(texts), np.float32)
        if texts
        else np.zeros((0, memory_config.embed_dim), np.float32)
    )
    if embeddings.shape != (len(rows), memory_config.embed_dim):
        raise ValueError(
            f"insights_to_memory: embed_fn returned shape {embeddings.shape}, expected "
            f"({len(rows)}, {memory_config.embed_dim})"
        )
    padding = size - len(rows)
    grow = lambda array: np.concatenate([array, np.zeros((padding, *array.shape[1:]), array.dtype)])
    state, outcome = ops.insert_insights(
        state,
        memory_config,
        np.asarray([pid for pid, _ in rows] + [-1] * padding, np.int32),
        np.asarray([_KIND_CODES[item.kind] for _, item in rows] + [0] * padding, np.int32),
        grow(titles),
        grow(title_lens),
        grow(contents),
        grow(content_lens),
        grow(embeddings),
        step,
    )
    status = np.asarray(outcome.status)[: len(rows)]
    stats["reflect/inserted"] = int(np.isin(status, (INSERTED, INSERTED_EVICTING)).sum())
    stats["reflect/rejected_novelty"] = int((status == REJECTED_NOVELTY).sum())
    stats["reflect/rejected_redundant"] = int((status == REJECTED_REDUNDANT).sum())
    return state, stats
