"""Reflection: tolerant parsing (a table of model outputs), the shortcut filter (labelled items),
prompt cases, the reflect() stats plumbing with a stubbed sampler, insertion into memory, and one
slow run with SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import zlib

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_output_strategies import json_ish_text, json_values

from pmd_jax import memory as mem
from pmd_jax.memory import reflect as reflect_module
from pmd_jax.memory.reflect import (
    Attempt,
    InsightItem,
    ReflectConfig,
    build_reflection_requests,
    filter_shortcuts,
    insights_to_memory,
    parse_reflection,
    reflect,
    reflection_case,
    shortcut_reason,
)
from pmd_jax.memory.reflect_parse import KINDS, SHORTCUT_REASONS
from pmd_jax.memory.reflect_prompts import TRUNCATION_MARKER, build_messages, response_prefix

LINES = ReflectConfig(output_format="lines")
S = lambda title, content: InsightItem("strategy", title, content)
L = lambda title, content: InsightItem("lesson", title, content)

# Contents of at least MIN_CONTENT_WORDS words.
C1, C2, C3 = "Add every gain to the start.", "Multiply packs by their size.", "Keep the units."


def _obj(**arrays):
    """A JSON reflection text from kind -> [(title, content)]."""
    return json.dumps({k: [{"title": t, "content": c} for t, c in v] for k, v in arrays.items()})


# (model output, format, expected items)
PARSE_CASES = [
    # ---- json
    (_obj(strategies=[("A", C1)], lessons=[]), "json", [S("A", C1)]),
    (
        f"```json\n{_obj(strategies=[('T1', C1)], lessons=[('T2', C2)])}\n```",
        "json",
        [S("T1", C1), L("T2", C2)],
    ),
    (
        f"Here are my notes:\n{_obj(lessons=[('Units', C3)])}\nI hope this helps! {{not json}}",
        "json",
        [L("Units", C3)],
    ),
    (_obj(strategies=[("A", C1), ("C", C2)])[:-20], "json", [S("A", C1)]),  # truncated in item 2
    (  # truncated inside the lessons array, after a complete strategies array
        _obj(strategies=[("A", C1)], lessons=[("C", C2), ("E", C3)])[:-25],
        "json",
        [S("A", C1), L("C", C2)],
    ),
    (_obj(strategies=[("A", C1)])[:-15], "json", []),  # truncated in the only item
    ('{"strategies": [{"name": "A", "text": "Add every gain."}]}', "json", []),  # wrong keys
    ('{"strategies": [{"title": 3, "content": ["Add every gain."]}]}', "json", []),  # not str
    (f'{{"strategies": ["use units", {_obj(x=[("A", C1)])[7:-2]}]}}', "json", [S("A", C1)]),
    (f'{{"strategies": {{"title": "A", "content": "{C1}"}}}}', "json", []),  # not a list
    (f'[{{"title": "A", "content": "{C1}"}}]', "json", []),  # no top-level object
    ("", "json", []),
    ("   \n\t ", "json", []),
    ("I cannot help with that.", "json", []),
    (
        "{'strategies': [{'title': 'Add first', 'content': 'Add the gains first.'}]}",
        "json",
        [S("Add first", "Add the gains first.")],
    ),  # single quotes
    (_obj(strategies=[("  ", C1), ("A", ""), ("3", C1)]), "json", []),  # empty, no-letter title
    (_obj(strategies=[("...", "..."), ("<title>", C1)]), "json", []),  # placeholder echo
    (
        _obj(lessons=[("No", "No"), ("Incorrect", "Incorrect answer"), ("Same", "same")]),
        "json",
        [],
    ),  # degenerate: content repeats the title or is under 3 words
    (
        f'{{"Strategy": [{{"title": "A", "content": "{C1}"}}], "LESSONS": '
        f'[{{"title": "C", "content": "{C2}"}}]}}',
        "json",
        [S("A", C1), L("C", C2)],
    ),
    (_obj(strategies=[("A\nB", "x  \n y   z")]), "json", [S("A B", "x y z")]),
    (f"```\n{_obj(lessons=[('T', C3)])}", "json", [L("T", C3)]),  # unclosed fence
    # ---- lines
    (
        f"STRATEGY: Multiply first | {C2} Then add.\nLESSON: Order | {C3}",
        "lines",
        [S("Multiply first", f"{C2} Then add."), L("Order", C3)],
    ),
    (
        f"Sure, here are the items:\n- strategy: A | {C1}\n* Lesson: C | {C2}\nThat is all.",
        "lines",
        [S("A", C1), L("C", C2)],
    ),
    (
        f"**LESSON**: Units | {C3}\n1. **Strategy 2:** Sum | {C1}",
        "lines",
        [L("Units", C3), S("Sum", C1)],
    ),
    (
        "STRATEGY: Work backwards: Start from the goal.",
        "lines",
        [S("Work backwards", "Start from the goal.")],
    ),
    (
        "LESSON: Two kinds - count them apart always.",
        "lines",
        [L("Two kinds", "count them apart always.")],
    ),
    ("STRATEGY: Multiply the quantity by the price.", "lines", []),  # no title separator
    ("STRATEGY: <title> | <content>\nLESSON:  | text of it", "lines", []),  # placeholder, no title
    ("STRATEGIES:\nLesson learned: nothing", "lines", []),  # headers and prose only
    ("LESSON: 0 | two", "lines", []),  # degenerate
    ("", "lines", []),
    (f"STRATEGY: A | {C1}\nLESSON: C | {C2}", "json", []),  # the wrong parser for the text
]


@pytest.mark.parametrize(("text", "output_format", "expected"), PARSE_CASES)
def test_parse_reflection_table(text, output_format, expected):
    parsed = parse_reflection(text, output_format)
    assert list(parsed.items) == expected
    assert parsed.ok == bool(expected)
    assert parsed.ok or parsed.error


def test_parse_table_is_large_enough():
    assert len(PARSE_CASES) >= 20


def test_parse_never_raises_on_junk():
    junk = ["{" * 5000, '{"strategies": [' + "{" * 3000, "```json", "\x00\ufffd|:", "]]}}"]
    for text in junk:
        for output_format in ("json", "lines"):
            assert parse_reflection(text, output_format).items == ()


def test_parse_truncated_json_reports_recovery():
    parsed = parse_reflection(f'{{"lessons": [{{"title": "A", "content": "{C1}"}}, {{"ti', "json")
    assert parsed.ok and parsed.items == (L("A", C1),) and "truncated" in parsed.error


Q = "Mia has 12 apples. She buys 3 bags with 4 apples each and gives 2.5 kg away. How many?"
# (title, content, expected reason)
SHORTCUT_CASES = [
    ("Group first", "Multiply the number of bags by the items per bag, then add.", None),
    ("Track totals", "Write the running total after each step.", None),
    ("Halve", "To split in two, divide by 2.", None),  # one small question number
    ("Two steps", "Some problems take two steps: find the total, then share it.", None),
    ("Percent base", "A percent is a part of 100; divide by 100 first.", None),
    ("Right answer", "A correct answer needs every quantity to be used once.", None),
    ("Attempt to estimate", "Attempt to estimate the total before computing it.", None),
    ("Plan", "Decide which operation each sentence needs before computing.", None),
    ("Compare", "Like the successful attempts, multiply before adding.", "refers_to_attempts"),
    ("Avoid", "The second attempt forgot the bags.", "refers_to_attempts"),
    ("Model error", "The model added instead of multiplying.", "refers_to_attempts"),
    ("Match", "As in the previous solution, add the parts.", "refers_to_attempts"),
    ("Copy", "Follow correct solution 1 line by line.", "refers_to_attempts"),
    ("Responses", "The responses above all skipped the last step.", "refers_to_attempts"),
    ("Pick", "The answer is option (B).", "option_letter"),
    ("Choice", "Choose option C when the items are grouped.", "option_letter"),
    ("Final", "So the answer is D.", "option_letter"),
    ("Letter", "Eliminate (A) and (D) first.", "option_letter"),
    ("Numbers", "Multiply 3 by 4 to get the bag total.", "problem_numbers"),
    ("Start", "Begin with the 12 apples.", "problem_numbers"),
    ("Weights", "Give away 2.5 kg at the end.", "problem_numbers"),
    ("Mia's bags", "Mia should count the bags first.", "problem_names"),
    ("Add", "How many in all? Add each group, then the total.", None),  # "How" is no name
    ("Copy", "No solution was correct, so redo it.", "refers_to_attempts"),
    ("Read", "Read the question carefully before you start.", "generic_advice"),
    ("Verify", "Always double-check your arithmetic.", "generic_advice"),
    ("Work", "Show your work and take your time.", "generic_advice"),
    ("Careful", "Be careful with each step.", "generic_advice"),
]


@pytest.mark.parametrize(("title", "content", "expected"), SHORTCUT_CASES)
def test_shortcut_reason_table(title, content, expected):
    assert shortcut_reason(S(title, content), Q) == expected


def test_shortcut_table_is_large_enough_and_covers_every_reason():
    assert len(SHORTCUT_CASES) >= 20
    assert {c[2] for c in SHORTCUT_CASES} == {None, *SHORTCUT_REASONS}


def test_filter_shortcuts_counts_every_reason():
    items = [S(t, c) for t, c, _ in SHORTCUT_CASES]
    kept, counts = filter_shortcuts(items, Q)
    assert kept == tuple(S(t, c) for t, c, r in SHORTCUT_CASES if r is None)
    assert counts == {
        "refers_to_attempts": 7,
        "option_letter": 4,
        "problem_numbers": 3,
        "problem_names": 1,
        "generic_advice": 4,
    }


def test_problem_numbers_ignore_numbers_absent_from_the_question():
    assert shortcut_reason(S("Scale", "Multiply by 37 and then by 58."), Q) is None


@pytest.mark.parametrize(
    ("correct", "total", "case"),
    [(2, 4, "contrastive"), (4, 4, "strategies"), (0, 4, "lessons"), (1, 1, "strategies")],
)
def test_reflection_case(correct, total, case):
    assert reflection_case(correct, total) == case


def test_reflection_case_rejects_bad_counts():
    with pytest.raises(ValueError, match="num_attempts"):
        reflection_case(0, 0)
    with pytest.raises(ValueError, match="num_correct=5"):
        reflection_case(5, 4)


def _group():
    return [
        Attempt("long correct " * 10 + "#### 24", 1.0),
        Attempt("12 + 12 = 24\n#### 24", 1.0),
        Attempt("12 + 3 = 15\n#### 15", 0.0, "the final answer 15 is not correct"),
        Attempt("x" * 2000, 0.0, "no line of the form '#### <number>' was found"),
    ]


def test_contrastive_prompt_shows_k_of_n_successes_then_failures():
    config = ReflectConfig(
        output_format="lines", max_successes_shown=1, max_failures_shown=2, max_response_chars=100
    )
    case, messages = build_messages(Q, _group(), config)
    user = messages[1][1]
    assert case == "contrastive" and [role for role, _ in messages] == ["system", "user"]
    assert "2 of 4 attempts were correct." in user
    # the shortest success is shown; both failures, with feedback, after it
    assert user.index("12 + 12 = 24") < user.index("12 + 3 = 15") < user.index("x" * 50)
    assert "long correct" not in user
    assert "Verifier feedback: the final answer 15 is not correct" in user
    assert "x" * (100 - len(TRUNCATION_MARKER)) + TRUNCATION_MARKER in user
    assert "x" * 101 not in user
    assert "STRATEGY: <title> | <content>\nLESSON: <title> | <content>" in messages[0][1]


def test_single_kind_prompts_ask_for_one_kind():
    all_right = [Attempt("#### 1", 1.0)] * 3
    case, messages = build_messages(Q, all_right, ReflectConfig(output_format="json"))
    assert case == "strategies" and "3 of 3 attempts were correct." in messages[1][1]
    assert '"strategies"' in messages[0][1] and '"lessons"' not in messages[0][1]
    case, messages = build_messages(Q, [Attempt("#### 2", 0.0, "wrong")], LINES)
    assert case == "lessons" and "0 of 1 attempt was correct." in messages[1][1]
    assert "LESSON: <title>" in messages[0][1] and "STRATEGY" not in messages[0][1]


def test_stored_success_turns_an_all_wrong_group_contrastive():
    group = [Attempt("#### 2", 0.0, "wrong")]
    case, messages = build_messages(Q, group, ReflectConfig(), stored=[Attempt("#### 3", 1.0)])
    assert case == "contrastive" and "0 of 1 attempt was correct." in messages[1][1]
    assert "Correct solution 1:\n#### 3" in messages[1][1]


def test_requests_end_with_the_primed_response(arith_tokenizer):
    config = LINES
    requests = build_reflection_requests(
        arith_tokenizer, [Q, Q], [_group(), _group()[2:]], config, success_reward=0.5
    )
    assert [r.case for r in requests] == ["contrastive", "lessons"]
    assert [r.response_prefix for r in requests] == ["STRATEGY:", "LESSON:"]
    prefix_ids = arith_tokenizer.encode("LESSON:")
    assert list(requests[1].prompt_ids[-len(prefix_ids) :]) == prefix_ids
    unprimed = ReflectConfig(output_format="lines", prime_response=False)
    assert response_prefix("lessons", unprimed) == ""
    ids = build_reflection_requests(
        arith_tokenizer, [Q], [_group()[2:]], unprimed, success_reward=0.5
    )[0].prompt_ids
    assert list(ids) == list(requests[1].prompt_ids[: -len(prefix_ids)])


def test_reflect_stats_add_up_with_a_stubbed_sampler(monkeypatch, arith_tokenizer):
    outputs = [
        " Group first | Multiply bags by their size, then add.\n"
        "LESSON: Model | The model added 12 and 3.\nLESSON: Careful | Be careful with every step.",
        " nothing useful here",
        f" A | {C1}\nSTRATEGY: A | {C1}\nSTRATEGY: C | {C2}\nSTRATEGY: E | {C3}\nSTRATEGY: G | {C3}",
    ]
    calls = []

    def fake_generate_texts(params, model_config, tokenizer, prompts, config, rng, **kwargs):
        calls.append((len(prompts), config, kwargs))
        return outputs

    monkeypatch.setattr(reflect_module, "generate_texts", fake_generate_texts)
    config = ReflectConfig(output_format="lines", batch_size=4)
    groups = [_group(), _group(), [Attempt("#### 1", 1.0)]]
    requests = build_reflection_requests(
        arith_tokenizer, [Q] * 3, groups, config, success_reward=0.5
    )
    result = reflect(None, None, arith_tokenizer, requests, config, jax.random.PRNGKey(0))
    assert calls[0][0] == 3 and calls[0][2]["batch_size"] == 4
    assert calls[0][1].temperature == 0.6 and calls[0][1].num_samples == 1
    assert result.raw_texts[0].startswith("STRATEGY: Group first")
    assert result.items_per_request == [
        (S("Group first", "Multiply bags by their size, then add."),),
        (),
        (S("A", C1), S("C", C2), S("E", C3)),  # duplicate dropped, capped at 3
    ]
    stats = result.stats
    assert stats["reflect/requests"] == 3 and stats["reflect/parsed"] == 2
    assert stats["reflect/parsed"] + stats["reflect/parse_failures"] == stats["reflect/requests"]
    assert stats["reflect/items"] == 4 and stats["reflect/duplicates"] == 1
    assert stats["shortcut/refers_to_attempts"] == 1 and stats["shortcut/generic_advice"] == 1


def _fake_embed(dim):
    def embed(texts):
        rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=dim) for t in texts]
        return np.asarray(rows, np.float32)

    return embed


def test_insights_to_memory_inserts_readable_items_and_rejects_duplicates(arith_tokenizer):
    config = mem.MemoryConfig(
        num_problems=3,
        insight_slots=4,
        title_len=8,
        content_len=24,
        embed_dim=16,
        behaviour_slots=2,
        response_len=4,
    )
    state = mem.init_memory(config)
    items = [(S("Add the gains", "Add every gain to the start."), L("Order", "Keep the order."))]
    items.append((S("Add the gains", "Add every gain to the start."),))
    state, stats = insights_to_memory(
        state, config, arith_tokenizer, [2, 0], items, _fake_embed(16), step=7
    )
    assert stats == {
        "reflect/inserted": 3,
        "reflect/rejected_novelty": 0,
        "reflect/rejected_redundant": 0,
    }
    _, insight = mem.read_problem(state, np.asarray([2, 0]))
    decode = lambda ids, n: arith_tokenizer.decode(np.asarray(ids)[:n].tolist())
    got = [
        (
            int(insight.kind[0, s]),
            decode(insight.title[0, s], insight.title_len[0, s]),
            decode(insight.content[0, s], insight.content_len[0, s]),
            int(insight.step[0, s]),
        )
        for s in range(2)
    ]
    assert got == [
        (mem.STRATEGY, "Add the gains", "Add every gain to the start.", 7),
        (mem.LESSON, "Order", "Keep the order.", 7),
    ]
    assert int(insight.occupied[1].sum()) == 1 and not bool(insight.occupied[0, 2])
    # the same item again for problem 2: rejected by the novelty gate
    state, stats = insights_to_memory(
        state, config, arith_tokenizer, [2], [items[0][:1]], _fake_embed(16), step=8
    )
    assert stats["reflect/rejected_novelty"] == 1 and stats["reflect/inserted"] == 0
    state, stats = insights_to_memory(state, config, arith_tokenizer, [1], [()], _fake_embed(16), 9)
    assert stats["reflect/inserted"] == 0


def test_insights_to_memory_checks_embedding_width(arith_tokenizer):
    config = mem.MemoryConfig(num_problems=1, embed_dim=16, behaviour_slots=2)
    with pytest.raises(ValueError, match="embed_fn returned shape"):
        insights_to_memory(
            mem.init_memory(config),
            config,
            arith_tokenizer,
            [0],
            [(S("a", "b"),)],
            _fake_embed(8),
            step=0,
        )


def test_reflect_config_rejects_unknown_format():
    with pytest.raises(ValueError, match="output_format='yaml'"):
        ReflectConfig(output_format="yaml")


@pytest.mark.slow
def test_reflect_with_smollm2_stats_add_up():
    from pmd_jax.data.arith import ArithConfig, generate_split
    from pmd_jax.model import load

    model = load("smollm2-135m-instruct")
    problems = generate_split(ArithConfig(), "train")[:2]
    groups = [
        [Attempt(p.solution, 1.0), Attempt("#### 0", 0.0, "the final answer 0 is not correct")]
        for p in problems
    ]
    config = ReflectConfig(max_new_tokens=64, batch_size=2)
    requests = build_reflection_requests(
        model.tokenizer, [p.question for p in problems], groups, config, success_reward=0.5
    )
    result = reflect(
        model.params, model.config, model.tokenizer, requests, config, jax.random.PRNGKey(0)
    )
    stats = result.stats
    assert stats["reflect/requests"] == 2 and len(result.raw_texts) == 2
    assert stats["reflect/parsed"] + stats["reflect/parse_failures"] == 2
    assert stats["reflect/items"] == sum(len(items) for items in result.items_per_request)
    assert all(
        text.startswith(request.response_prefix) and request.response_prefix
        for text, request in zip(result.raw_texts, requests, strict=True)
    )


def test_json_primed_reflection_parses_prefix_plus_continuation(monkeypatch, arith_tokenizer):
    config = ReflectConfig(output_format="json")
    monkeypatch.setattr(
        reflect_module,
        "generate_texts",
        lambda *args, **kwargs: [f' {{"title": "Units", "content": "{C3}"}}]}} Done.'],
    )
    requests = build_reflection_requests(
        arith_tokenizer, [Q], [_group()[2:]], config, success_reward=0.5
    )
    assert requests[0].response_prefix == '{"lessons": ['
    result = reflect(None, None, arith_tokenizer, requests, config, jax.random.PRNGKey(0))
    assert result.items_per_request == [(L("Units", C3),)]
    assert result.raw_texts[0].startswith('{"lessons": [ {"title"')


def test_repeated_attempts_are_shown_once():
    group = [Attempt("#### 5", 0.0, "f1"), Attempt(" #### 5 ", 0.0, "f2"), Attempt("#### 6", 0.0)]
    _, messages = build_messages(Q, group, LINES)
    user = messages[1][1]
    assert user.count("#### 5") == 1 and "Incorrect solution 2:\n#### 6" in user
    assert "0 of 3 attempts were correct." in user


def test_experience_attempts_decode_stored_rollouts(arith_tokenizer):
    config = mem.MemoryConfig(
        num_problems=2,
        success_slots=1,
        failure_slots=1,
        insight_slots=1,
        behaviour_slots=1,
        response_len=16,
        feedback_len=32,
        embed_dim=16,
    )
    texts = ["3 * 4 = 12\n#### 12", "3 + 4 = 7\n#### 7"]
    feedback = ["", "the final answer 7 is not correct"]
    tokens, lengths = mem.pad_ids([arith_tokenizer.encode(t) for t in texts], 16)
    fb_tokens, fb_lengths = mem.pad_ids([arith_tokenizer.encode(f) for f in feedback], 32)
    state, _ = mem.insert_experience_batch(
        mem.init_memory(config),
        config,
        np.asarray([1, 1]),
        tokens,
        lengths,
        np.asarray([1.0, 0.0]),
        fb_tokens,
        fb_lengths,
        _fake_embed(16)(texts),
        0,
    )
    experience, _ = mem.read_problem(state, np.asarray([0, 1]))
    assert reflect_module.experience_attempts(experience, 0, arith_tokenizer) == []
    expected = [Attempt(texts[0], 1.0, ""), Attempt(texts[1], 0.0, feedback[1])]
    assert reflect_module.experience_attempts(experience, 1, arith_tokenizer) == expected


@settings(max_examples=150, deadline=None)
@given(json_ish_text(), st.text(max_size=200))
def test_parse_and_filter_never_raise_on_json_ish_output(text, question):
    for output_format in ("json", "lines"):
        parsed = parse_reflection(text, output_format)
        assert parsed.ok == bool(parsed.items) and (parsed.ok or parsed.error)
        for item in parsed.items:
            assert item.kind in KINDS and any(char.isalpha() for char in item.title)
            assert len(item.content.split()) >= 3
        kept, counts = filter_shortcuts(parsed.items, question)
        assert set(counts) == set(SHORTCUT_REASONS)
        assert len(kept) + sum(counts.values()) == len(parsed.items)


@settings(max_examples=100, deadline=None)
@given(json_values.map(json.dumps).filter(lambda bare: "```" not in bare))
def test_json_in_a_fence_with_prose_parses_like_the_bare_json(bare):
    wrapped = f"Here are my insights:\n```json\n{bare}\n```\nThat is all."
    assert parse_reflection(wrapped, "json").items == parse_reflection(bare, "json").items
