"""Supervised warm start of a from-scratch policy, so that the tiny world has a policy that
follows the formats the loop relies on: solutions ending in `#### <answer>`, reflections in the
configured reflection format, behaviour lists as JSON.

Nothing here is used with a pretrained model. The demonstrations are templates per arith family
(generic ones for other tasks), written into the real prompts of `memory.reflect` and
`memory.behaviours`, so the model learns exactly the interface the train loop calls. The result
is cached by a hash of everything that shapes it (`$PMD_CACHE_DIR`, default ~/.cache/pmd_jax).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
from collections.abc import Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from pmd_jax.data.prompts import format_prompts
from pmd_jax.memory.behaviours import (
    RESPONSE_PRIMES,
    attempt_note,
    cluster_summary,
    cold_start_messages,
    insight_note,
)
from pmd_jax.memory.reflect import build_reflection_requests
from pmd_jax.model.transformer import Transformer, positions_from_mask
from pmd_jax.tokenizer import format_chat
from pmd_jax.verify import verify

GENERIC = "generic"
# (strategy, lesson, behaviours) per family: general advice, no numbers of any one problem.
NOTES: dict[str, dict] = {
    "add_sub": {
        "strategy": (
            "Track the running amount",
            "Start from the first amount. Apply each change "
            "in order, adding what is gained and subtracting what is lost.",
        ),
        "lesson": (
            "Apply every change",
            "Each event in the story changes the amount. Skipping one of them gives a wrong total.",
        ),
        "behaviours": [
            ("running_total", "Apply each change to the amount in the order given."),
            ("sign_of_change", "Gains add to the amount and losses subtract from it."),
        ],
    },
    "multiply_adjust": {
        "strategy": (
            "Multiply groups first",
            "Find the total of equal groups by multiplying the "
            "number of groups by the size of a group, then apply later changes.",
        ),
        "lesson": (
            "Finish after the product",
            "The product is not the answer when more happens "
            "afterwards. Apply the remaining changes to it.",
        ),
        "behaviours": [
            ("groups_times_size", "Equal groups: multiply the count by the group size."),
            ("apply_later_changes", "After a product, apply every later change."),
        ],
    },
    "unit_price": {
        "strategy": (
            "Price times quantity",
            "The cost of several items is the unit price times "
            "the number bought. Discounts are subtracted from that cost.",
        ),
        "lesson": (
            "Subtract the discount last",
            "A coupon lowers the total cost, not the unit "
            "price. Compute the cost first, then take the discount off.",
        ),
        "behaviours": [
            ("price_times_count", "Total cost is the unit price times the quantity."),
            ("discount_after_total", "Take coupons off the total, not each item."),
        ],
    },
    "rate_time": {
        "strategy": (
            "Rate times duration",
            "An amount made at a steady rate is the rate per day "
            "times the number of days. Then apply gifts or losses.",
        ),
        "lesson": (
            "Keep rate and days apart",
            "Multiply the rate by the number of days; adding them mixes two different units.",
        ),
        "behaviours": [
            ("rate_times_time", "Steady rate: multiply the rate by the duration."),
            ("units_match", "Only add or subtract amounts of the same unit."),
        ],
    },
    GENERIC: {
        "strategy": (
            "Work step by step",
            "Turn each sentence into one operation on the known "
            "amounts, and keep the intermediate results.",
        ),
        "lesson": (
            "Answer the question asked",
            "The last number computed is not always the one "
            "asked for. Reread what the question wants before the final line.",
        ),
        "behaviours": [
            ("one_step_per_fact", "Turn each fact into one operation."),
            ("answer_what_is_asked", "Check which quantity the question asks for."),
        ],
    },
}


def _notes(problem: dict) -> dict:
    return NOTES.get(str(problem.get("family", GENERIC)), NOTES[GENERIC])


def _reflection_text(problem: dict, case: str, output_format: str) -> str:
    notes = _notes(problem)
    strategies = [notes["strategy"]] if case != "lessons" else []
    lessons = [notes["lesson"]] if case != "strategies" else []
    if output_format == "json":
        body = {}
        if strategies:
            body["strategies"] = [{"title": t, "content": c} for t, c in strategies]
        if lessons:
            body["lessons"] = [{"title": t, "content": c} for t, c in lessons]
        return json.dumps(body)
    lines = [f"STRATEGY: {t} | {c}" for t, c in strategies]
    lines += [f"LESSON: {t} | {c}" for t, c in lessons]
    return "\n".join(lines) + "\n"


def _wrong(problem: dict) -> str:
    solution = str(problem["solution"])
    head, _, answer = solution.rpartition("#### ")
    try:
        wrong = str(int(float(answer)) + 1)
    except ValueError:
        wrong = "0"
    return f"{head}#### {wrong}"


def _cluster_notes(problem: dict, config, rng: np.random.Generator) -> list[str]:
    """A problem's note lines as the evolver sees them at run time (`problem_notes`): its
    insights, else a stored success and a failure with feedback (drawn half and half)."""
    chars = config.behaviours.note_chars
    if rng.random() < 0.5:
        notes = _notes(problem)
        return [
            insight_note(False, *notes["strategy"], chars),
            insight_note(True, *notes["lesson"], chars),
        ]
    wrong = _wrong(problem)
    feedback = verify(wrong, str(problem["answer"])).feedback
    return [
        attempt_note(str(problem["solution"]), None, chars),
        attempt_note(wrong, feedback, chars),
    ]


def demonstrations(problems: Sequence[dict], config, tokenizer, rng: np.random.Generator):
    """(prompt ids, target ids) pairs: solve, reflect (three cases), cold-start behaviours."""
    examples = []
    eos = [tokenizer.eos_id]
    for problem, prompt in zip(
        problems,
        format_prompts(tokenizer, [p["question"] for p in problems], config.prompt),
        strict=True,
    ):
        examples.append((list(prompt.ids), tokenizer.encode(str(problem["solution"])) + eos))
    for problem in problems:
        good = (str(problem["solution"]), 1.0, "")
        wrong_text = _wrong(problem)
        bad = (wrong_text, 0.0, verify(wrong_text, str(problem["answer"])).feedback)
        group = [[good, bad], [good, good], [bad, bad]][int(rng.integers(3))]
        request = build_reflection_requests(
            tokenizer,
            [problem["question"]],
            [group],
            config.reflect,
            success_reward=config.memory.success_reward,
        )[0]
        text = _reflection_text(problem, request.case, config.reflect.output_format)
        if not text.startswith(request.response_prefix):
            raise AssertionError(
                f"template {text[:30]!r} does not start with the primed {request.response_prefix!r}"
            )
        target = text[len(request.response_prefix) :]
        examples.append((list(request.prompt_ids), tokenizer.encode(target) + eos))
    families = sorted({str(p.get("family", GENERIC)) for p in problems})
    for family in families:
        members = [p for p in problems if str(p.get("family", GENERIC)) == family]
        # Behaviour demonstrations are few (one per cluster-sized group): draw them as often as
        # the per-problem ones, or the model never learns their format.
        for _ in range(len(members)):
            chosen = [members[i] for i in rng.choice(len(members), min(3, len(members)), False)]
            notes = [_cluster_notes(p, config, rng) for p in chosen]
            summary = cluster_summary(
                [p["question"] for p in chosen], notes, config.behaviours.note_chars
            )
            prefix = RESPONSE_PRIMES["cold_start"]
            prompt = format_chat(tokenizer, cold_start_messages(summary), response=prefix)
            listed = [{"name": n, "instruction": i} for n, i in _notes(chosen[0])["behaviours"]]
            text = json.dumps(listed)
            examples.append((list(prompt.ids), tokenizer.encode(text[len(prefix) :]) + eos))
    return examples


def _vocabulary(tokenizer) -> list[str]:
    """The tokenizer's pieces by id (its model file also records its own path: not a key)."""
    return [tokenizer.decode([i], skip_special=False) for i in range(tokenizer.vocab_size)]


def _cache_path(config, tokenizer) -> pathlib.Path:
    """Everything that shapes the warm start: model sizes, data, the prompt and memory
    configs the demonstrations are written into, the seed and the vocabulary."""
    from pmd_jax.config import to_dict

    parts = [to_dict(config.model), to_dict(config.data.arith), config.data.task]
    parts += [to_dict(config.reflect), to_dict(config.behaviours), to_dict(config.prompt)]
    parts += [config.seed, _vocabulary(tokenizer)]
    key = json.dumps(parts, sort_keys=True).encode()
    digest = hashlib.sha256(key).hexdigest()[:16]
    root = pathlib.Path(os.environ.get("PMD_CACHE_DIR", "~/.cache/pmd_jax")).expanduser()
    return root / "warm_start" / f"{digest}.msgpack"


def _loss(params, model_config, tokens, mask, target_mask):
    hidden, _ = Transformer(model_config).apply(
        {"params": params}, tokens, positions_from_mask(mask), mask
    )
    logits = Transformer(model_config).apply({"params": params}, hidden, method=Transformer.logits)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    picked = jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    weight = target_mask[:, 1:].astype(jnp.float32)
    return -jnp.sum(picked * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _length_buckets(examples, pad_id: int, bucket: int = 128):
    """(tokens, mask, target_mask) arrays [n, W] per width W (a multiple of `bucket`);
    sequences are prompt + target, right-padded; target_mask marks the target tokens."""
    by_width: dict[int, list] = {}
    for prompt, answer in examples:
        width = -(-(len(prompt) + len(answer)) // bucket) * bucket
        by_width.setdefault(width, []).append((prompt, answer))
    buckets = []
    for width, members in sorted(by_width.items()):
        tokens = np.full((len(members), width), pad_id, np.int32)
        mask = np.zeros((len(members), width), bool)
        target = np.zeros((len(members), width), bool)
        for row, (prompt, answer) in enumerate(members):
            ids = prompt + answer
            tokens[row, : len(ids)] = ids
            mask[row, : len(ids)] = True
            target[row, len(prompt) : len(ids)] = True
        buckets.append((tokens, mask, target))
    return buckets


def warm_start(loaded, problems: Sequence[dict], config):
    """Params after `config.model.warm_start_steps` supervised steps (cached)."""
    spec = config.model
    tokenizer = loaded.tokenizer
    cache = _cache_path(config, tokenizer)
    if cache.exists():
        return flax.serialization.from_bytes(loaded.params, cache.read_bytes())
    rng = np.random.default_rng(config.seed)
    examples = demonstrations(problems, config, tokenizer, rng)
    buckets = _length_buckets(examples, tokenizer.pad_id)
    # Decayed to zero: the last steps settle the formats instead of jumping around them at the
    # peak rate (a constant rate left the behaviour lists half-formed, none of them parsing).
    schedule = optax.cosine_decay_schedule(spec.warm_start_lr, max(spec.warm_start_steps, 1))
    optimizer = optax.adamw(schedule, weight_decay=0.0)
    params = loaded.params
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, tokens, mask, target):
        loss, grads = jax.value_and_grad(_loss)(params, loaded.config, tokens, mask, target)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    bar = tqdm(
        range(spec.warm_start_steps),
        desc="warm start",
        unit="step",
        disable=not config.progress,
        file=sys.stdout,
    )
    # Attention cost grows with the square of the width: batches come from one length bucket.
    weights = np.asarray([len(b[0]) for b in buckets], np.float64)
    for _ in bar:
        tokens, mask, target = buckets[rng.choice(len(buckets), p=weights / weights.sum())]
        rows = rng.choice(len(tokens), spec.warm_start_batch, replace=True)
        params, opt_state, loss = step(params, opt_state, tokens[rows], mask[rows], target[rows])
        bar.set_postfix(loss=f"{float(loss):.3f}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".tmp")
    partial.write_bytes(flax.serialization.to_bytes(params))
    os.replace(partial, cache)
    return params
