"""Behaviour evolution: cadence, cluster summaries, prompts, and full evolve rounds with a tiny
model whose generation is replaced by fixed texts (exact bank contents after new/update/remove,
the bank cap), plus a slow SmolLM2 cold start."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pmd_jax import sampling
from pmd_jax.memory import behaviours as bh
from pmd_jax.memory import ops
from pmd_jax.memory import state as st
from pmd_jax.model.config import ModelConfig
from pmd_jax.model.transformer import init_params

DIM = 16
MEMORY = st.MemoryConfig(
    num_problems=8,
    insight_slots=3,
    behaviour_slots=4,
    response_len=24,
    feedback_len=16,
    title_len=12,
    content_len=24,
    name_len=24,  # the arith tokenizer spells words out in a few pieces each
    instruction_len=24,
    embed_dim=DIM,
)
QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples?",
    "Ann has 9 pens and gives 2 away. How many pens?",
    "Leo has 5 cards and finds 6 more. How many cards?",
    "Mia has 8 cups and breaks 3. How many cups?",
    "A pen costs $3. Sam buys 4 pens. How many dollars?",
    "A cup costs $2. Tom buys 5 cups. How many dollars?",
    "A card costs $6. Ann buys 2 cards. How many dollars?",
    "A book costs $7. Leo buys 3 books. How many dollars?",
]


def _question_embeddings() -> np.ndarray:
    """Two well-separated blobs: problems 0-3 and 4-7."""
    noise = 0.05 * np.random.default_rng(0).normal(size=(8, DIM))
    base = np.zeros((8, DIM))
    base[:4, 0], base[4:, 1] = 1.0, 1.0
    vectors = base + noise
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _fake_embed(texts):
    """Deterministic random unit vectors per text (distinct texts are far below the thresholds)."""
    rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=DIM) for t in texts]
    rows = np.asarray(rows, np.float32)
    return jnp.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True))


@pytest.fixture(scope="module")
def tiny(arith_tokenizer):
    config = ModelConfig(
        architecture="llama",
        vocab_size=arith_tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
    )
    return config, init_params(config, jax.random.PRNGKey(0))


class FakeGenerator:
    """Stands in for sampling.generate_texts: records the prompts, answers with fixed texts."""

    def __init__(self, answers):
        self.answers, self.prompts = list(answers), []

    def __call__(self, params, model_config, tokenizer, prompts, config, rng, **kwargs):
        self.prompts.append([tokenizer.decode(p, skip_special=False) for p in prompts])
        assert config.num_samples == 1 and config.stop_ids == tuple(tokenizer.stop_ids)
        return [self.answers.pop(0) for _ in prompts]


def _evolve(tiny, tokenizer, state, monkeypatch, answers, step, touched, centroids=None, **config):
    generator = FakeGenerator(answers)
    monkeypatch.setattr(sampling, "generate_texts", generator)
    config.setdefault("prime_response", False)  # the fixed answers are whole texts
    behaviour_config = bh.BehaviourConfig(num_clusters=2, **config)
    output = bh.evolve_behaviours(
        tiny[1],
        tiny[0],
        tokenizer,
        state,
        MEMORY,
        QUESTIONS,
        _question_embeddings(),
        np.asarray(touched),
        step,
        behaviour_config,
        jax.random.PRNGKey(step),
        _fake_embed,
        init_centroids=centroids,
    )
    return output, generator


def _bank(state, tokenizer) -> dict[str, tuple[str, int, int, int]]:
    """Alive entries: name -> (instruction, source_cluster, created_step, updated_step)."""
    bank = jax.tree.map(np.asarray, state.behaviours)
    decode = lambda ids, n: tokenizer.decode(ids[:n].tolist())
    return {
        decode(bank.name[i], bank.name_len[i]): (
            decode(bank.instruction[i], bank.instruction_len[i]),
            int(bank.source_cluster[i]),
            int(bank.created_step[i]),
            int(bank.updated_step[i]),
        )
        for i in np.flatnonzero(bank.alive)
    }


@pytest.mark.parametrize(
    ("warmup", "every", "expected"),
    [
        (2, 10, [2, 12, 22]),
        (0, 1, list(range(25))),
        (0, 5, [0, 5, 10, 15, 20]),
        (3, 0, []),
        (30, 1, []),
    ],
)
def test_should_evolve_truth_table(warmup, every, expected):
    config = bh.BehaviourConfig(warmup_steps=warmup, every_steps=every)
    assert [s for s in range(25) if bh.should_evolve(s, config)] == expected


@pytest.mark.parametrize(
    ("field", "value"), [("scope", "some"), ("output_format", "xml"), ("num_clusters", 0)]
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"BehaviourConfig.{field}"):
        bh.BehaviourConfig(**{field: value})


def test_select_clusters_by_scope_ignores_padding():
    assignment = np.array([1, 1, 0, 2, 2, 1])
    assert bh.select_clusters(assignment, [0, 5, -1, 99], "batch") == [1]
    assert bh.select_clusters(assignment, [3, 2], "batch") == [0, 2]
    assert bh.select_clusters(assignment, [], "all") == [0, 1, 2]


def test_fit_name_ids_drops_trailing_words_until_it_fits(arith_tokenizer):
    name = "check_the_units_of_every_single_quantity_before_adding_them"
    ids, kept = bh.fit_name_ids(arith_tokenizer, name, 8)
    assert len(ids) <= 8 and name.startswith(kept) and kept != name
    assert arith_tokenizer.decode(ids) == kept
    assert bh.fit_name_ids(arith_tokenizer, "check", 64) == (
        arith_tokenizer.encode("check"),
        "check",
    )
    assert bh.fit_name_ids(arith_tokenizer, "supercalifragilistic", 1) == (None, "")


def _insert_insight(state, tokenizer, problem, kind, title, content, step):
    titles, title_lens = st.pad_ids([tokenizer.encode(title)], MEMORY.title_len)
    contents, content_lens = st.pad_ids([tokenizer.encode(content)], MEMORY.content_len)
    state, _ = ops.insert_insights(
        state,
        MEMORY,
        [problem],
        [kind],
        titles,
        title_lens,
        contents,
        content_lens,
        _fake_embed([title]),
        step,
    )
    return state


def test_problem_notes_prefer_newest_insights_then_fall_back_to_experience(arith_tokenizer):
    tok = arith_tokenizer
    state = st.init_memory(MEMORY)
    state = _insert_insight(state, tok, 0, st.STRATEGY, "Add totals", "Sum all parts.", 1)
    state = _insert_insight(state, tok, 0, st.LESSON, "Do not subtract", "Read the verb.", 3)
    state = _insert_insight(state, tok, 0, st.STRATEGY, "Old idea", "Unused.", 0)
    responses, lengths = st.pad_ids([tok.encode("3 + 4 = 7"), tok.encode("3 - 4 = -1")], 24)
    feedback, feedback_lens = st.pad_ids([[], tok.encode("wrong answer")], 16)
    state, _ = ops.insert_experience_batch(
        state,
        MEMORY,
        [1, 1],
        responses,
        lengths,
        [1.0, 0.0],
        feedback,
        feedback_lens,
        _fake_embed(["a", "b"]),
        2,
    )
    experience, insight = jax.tree.map(np.asarray, st.read_problem(state, jnp.array([0, 1, 2])))
    config = bh.BehaviourConfig(insights_per_question=2)
    notes = [bh.problem_notes(tok, experience, insight, r, MEMORY, config) for r in range(3)]
    assert notes[0] == [
        "Mistake to avoid: Do not subtract. Read the verb.",
        "Strategy: Add totals. Sum all parts.",
    ]
    assert notes[1] == [
        "A correct solution: 3 + 4 = 7",
        "A wrong attempt: 3 - 4 = -1 Feedback: wrong answer",
    ]
    assert notes[2] == []
    summary = bh.cluster_summary(QUESTIONS[:3], notes, chars=400)
    assert summary.startswith(f"Problem 1: {QUESTIONS[0]}\n- Mistake to avoid: Do not subtract.")
    assert f"\n\nProblem 3: {QUESTIONS[2]}" in summary


COLD = (
    '[{"name": "check_units", "instruction": "Check the units."}, '
    '{"name": "write_steps", "instruction": "Write each step."}]'
)
EVOLVE = (
    '```json\n{"actions": [{"op": "update", "name": "check_units", "instruction": "Check units '
    'twice."}, {"op": "remove", "name": "write_steps"}]}\n```'
)


def test_evolve_new_then_update_then_remove(tiny, arith_tokenizer, monkeypatch):
    tok = arith_tokenizer
    state = st.init_memory(MEMORY)
    first, generator = _evolve(tiny, tok, state, monkeypatch, [COLD], step=2, touched=[0, -1])
    cluster = first.records[0]["cluster"]
    assert [r["mode"] for r in first.records] == ["cold_start"]
    assert "Propose 3 to 8 named behaviours" in generator.prompts[0][0]
    assert QUESTIONS[0] in generator.prompts[0][0] and QUESTIONS[4] not in generator.prompts[0][0]
    assert _bank(first.state, tok) == {
        "check_units": ("Check the units.", cluster, 2, 2),
        "write_steps": ("Write each step.", cluster, 2, 2),
    }
    assert first.stats["behaviour/clusters"] == 1 and first.stats["behaviour/cold_starts"] == 1
    assert first.stats["behaviour/actions_new"] == 2
    assert first.stats["behaviour/applied_inserted"] == 2
    assert first.stats["behaviour/parse_failures"] == 0

    second, generator = _evolve(
        tiny,
        tok,
        first.state,
        monkeypatch,
        [EVOLVE],
        step=12,
        touched=[1],
        centroids=first.centroids,  # warm start: the same cluster ids
        similar_threshold=-1.0,
    )
    prompt = generator.prompts[0][0]
    assert second.records[0]["mode"] == "evolve"
    assert sorted(second.records[0]["existing"]) == ["check_units", "write_steps"]
    assert "check_units: Check the units." in prompt and "write_steps: Write each step." in prompt
    assert _bank(second.state, tok) == {"check_units": ("Check units twice.", cluster, 2, 12)}
    assert second.stats["behaviour/actions_update"] == 1
    assert second.stats["behaviour/actions_remove"] == 1
    assert second.stats["behaviour/applied_updated"] == 1
    assert second.stats["behaviour/applied_removed"] == 1


def test_bank_cap_evicts_when_more_new_actions_than_slots(tiny, arith_tokenizer, monkeypatch):
    tok = arith_tokenizer
    names = [f"rule_{word}" for word in ("one", "two", "three", "four", "five", "six")]
    answer = "[" + ", ".join(f'{{"name": "{n}", "instruction": "Do {n}."}}' for n in names) + "]"
    output, _ = _evolve(
        tiny, tok, st.init_memory(MEMORY), monkeypatch, [answer], step=5, touched=[0]
    )
    bank = _bank(output.state, tok)
    assert len(bank) == MEMORY.behaviour_slots == 4
    assert set(bank) <= set(names)
    stats = output.stats
    assert stats["behaviour/actions_new"] == 6
    assert stats["behaviour/applied_inserted"] == 4
    assert stats["behaviour/applied_inserted_evicting"] == 2


def test_actions_beyond_the_per_cluster_cap_are_dropped(tiny, arith_tokenizer, monkeypatch):
    output, _ = _evolve(
        tiny,
        arith_tokenizer,
        st.init_memory(MEMORY),
        monkeypatch,
        [COLD],
        step=5,
        touched=[0],
        max_actions_per_cluster=1,
    )
    assert list(_bank(output.state, arith_tokenizer)) == ["check_units"]
    assert output.stats["behaviour/items_dropped"] == 1


def test_scope_all_prompts_every_cluster_and_counts_parse_failures(
    tiny, arith_tokenizer, monkeypatch
):
    state = st.init_memory(MEMORY)
    output, generator = _evolve(
        tiny,
        arith_tokenizer,
        state,
        monkeypatch,
        ["no json", '{"oops": 1}'],
        step=2,
        touched=[],
        scope="all",
    )
    assert output.stats["behaviour/clusters"] == 2 and len(generator.prompts[0]) == 2
    assert output.stats["behaviour/parse_failures"] == 2
    assert [r["ok"] for r in output.records] == [False, False]
    assert _bank(output.state, arith_tokenizer) == {}
    assert sorted(p for r in output.records for p in r["problem_ids"]) == list(range(8))


def test_no_touched_problem_means_no_generation(tiny, arith_tokenizer, monkeypatch):
    output, generator = _evolve(
        tiny, arith_tokenizer, st.init_memory(MEMORY), monkeypatch, [], step=2, touched=[-1]
    )
    assert generator.prompts == [] and output.stats["behaviour/clusters"] == 0


def test_cold_start_when_no_existing_behaviour_is_similar_enough(
    tiny, arith_tokenizer, monkeypatch
):
    first, _ = _evolve(tiny, arith_tokenizer, st.init_memory(MEMORY), monkeypatch, [COLD], 2, [0])
    second, generator = _evolve(
        tiny, arith_tokenizer, first.state, monkeypatch, ["[]"], 12, [0], similar_threshold=1.01
    )
    assert second.records[0]["mode"] == "cold_start" and second.records[0]["ok"]
    assert "already has" not in generator.prompts[0][0]
    assert len(_bank(second.state, arith_tokenizer)) == 2


def test_primed_answer_is_parsed_with_its_prime(tiny, arith_tokenizer, monkeypatch):
    continuation = 'check_units", "instruction": "Check the units."}]'
    output, generator = _evolve(
        tiny,
        arith_tokenizer,
        st.init_memory(MEMORY),
        monkeypatch,
        [continuation],
        2,
        [0],
        prime_response=True,
    )
    assert generator.prompts[0][0].endswith('assistant\n[{"name": "')
    assert output.records[0]["text"] == '[{"name": "' + continuation
    assert list(_bank(output.state, arith_tokenizer)) == ["check_units"]


@pytest.mark.slow
def test_smollm2_cold_start_on_arith_clusters(smollm2_gguf_path):
    """Two clusters of 16 arith questions, cold start with SmolLM2-135M-Instruct: stats agree with
    the bank (parse rate and behaviours are printed, not asserted)."""
    from pmd_jax.data.arith import ArithConfig, generate_split
    from pmd_jax.embeddings import embed_texts
    from pmd_jax.model import load

    model = load(smollm2_gguf_path)
    tok = model.tokenizer
    questions = [p.question for p in generate_split(ArithConfig(train_size=16), "train")][:16]
    embed = lambda texts: embed_texts(model.params, model.config, tok, list(texts))
    memory = st.MemoryConfig(num_problems=16, behaviour_slots=32, embed_dim=576)
    config = bh.BehaviourConfig(num_clusters=2, scope="all", batch_size=2, max_new_tokens=256)
    output = bh.evolve_behaviours(
        model.params,
        model.config,
        tok,
        st.init_memory(memory),
        memory,
        questions,
        embed(questions),
        [],
        0,
        config,
        jax.random.PRNGKey(0),
        embed,
    )
    stats = output.stats
    for record in output.records:
        print(f"cluster {record['cluster']} ok={record['ok']} actions={record['actions']}")
        print(record["text"])
    assert stats["behaviour/clusters"] == stats["behaviour/cold_starts"] == 2
    assert stats["behaviour/parse_failures"] == sum(not r["ok"] for r in output.records)
    applied = sum(stats[f"behaviour/applied_{name}"] for name in st.STATUS_NAMES)
    submitted = sum(stats[f"behaviour/actions_{op}"] for op in ("new", "update", "remove"))
    assert applied == submitted
    alive = int(np.sum(np.asarray(output.state.behaviours.alive)))
    assert alive == stats["behaviour/applied_inserted"]  # empty bank, 32 slots: no eviction
