"""Behaviour-evolver output parsing: a table of model outputs with the exact expected actions."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_output_strategies import json_ish_text, json_values

from pmd_jax.memory.behaviour_parse import Action, normalise_name, parse_behaviour_actions

NEW_A = '{"op": "new", "name": "check_units", "instruction": "Check the units."}'
REMOVE_B = '{"op": "remove", "name": "guess_first"}'

# (model output, expected actions as (op, name, instruction), ok, dropped)
CASES = [
    (  # cold-start list shape: no "op" means new
        '[{"name": "check_units", "instruction": "Check the units."}, '
        '{"name": "Avoid Rounding Early", "instruction": "Keep exact values."}]',
        [
            ("new", "check_units", "Check the units."),
            ("new", "avoid_rounding_early", "Keep exact values."),
        ],
        True,
        0,
    ),
    (
        f'{{"actions": [{NEW_A}, {REMOVE_B}]}}',
        [("new", "check_units", "Check the units."), ("remove", "guess_first", "")],
        True,
        0,
    ),
    (
        f'```json\n{{"actions": [{NEW_A}]}}\n```',
        [("new", "check_units", "Check the units.")],
        True,
        0,
    ),
    (  # prose around, with a stray brace before the JSON
        f'Here are my {{changes}}:\n{{"actions": [{REMOVE_B}]}}\nHope this helps!',
        [("remove", "guess_first", "")],
        True,
        0,
    ),
    (  # truncated by the token limit: complete items kept
        f'{{"actions": [{NEW_A}, {REMOVE_B}, {{"op": "new", "name": "draw_a_tab',
        [("new", "check_units", "Check the units."), ("remove", "guess_first", "")],
        True,
        0,
    ),
    ('[{"name": "check_units", "instruction": "Check the u', [], False, 0),  # nothing complete
    (
        f'{{"actions": [{NEW_A},]}}',
        [("new", "check_units", "Check the units.")],
        True,
        0,
    ),  # trailing comma
    ('{"actions": []}', [], True, 0),  # a valid "no change"
    ('{"verdict": "fine"}', [], False, 0),  # wrong schema
    ('["check_units", "write_steps"]', [], False, 0),  # a list of strings
    (  # the degenerate bank SmolLM2-135M wrote in the ablation (README): all dropped, counted
        '[{"name": "pow_pow", "instruction": "###"}, {"name": "10", "instruction": "10 + 10 = 20"},'
        ' {"name": "mistake", "instruction": "###"}, {"name": "Check Units", "instruction": '
        '"check units"}, {"name": "check_units", "instruction": "Check the units."}]',
        [("new", "check_units", "Check the units.")],
        True,
        4,
    ),
    (  # nothing but degenerate items: no usable action
        '{"actions": [{"op": "update", "name": "pow_pow", "instruction": "## 2"}]}',
        [],
        False,
        1,
    ),
    ("", [], False, 0),
    ("I think the library is fine as it is.", [], False, 0),
    (  # bad items dropped: empty name, missing instruction, unknown op, name not a string
        '{"actions": [{"op": "new", "name": "!!!", "instruction": "x"}, '
        '{"op": "update", "name": "a"}, {"op": "explode", "name": "b", "instruction": "y"}, '
        '{"op": "new", "name": 7, "instruction": "z"}, {"op": "remove", "name": "c"}]}',
        [("remove", "c", "")],
        True,
        4,
    ),
    (  # op synonyms and "behaviours" key; instruction whitespace collapsed
        '{"behaviours": [{"op": "Add", "name": "x", "instruction": " Do\\n  it. "}, '
        '{"op": "edit", "name": "y", "instruction": "Show each step."}, {"op": "delete", "name": "z"}]}',
        [("new", "x", "Do it."), ("update", "y", "Show each step."), ("remove", "z", "")],
        True,
        0,
    ),
    (
        '{"name": "solo_item", "instruction": "One item."}',
        [("new", "solo_item", "One item.")],
        True,
        0,
    ),
    (  # first container wins when the model repeats itself
        f'{{"actions": [{NEW_A}]}} or maybe {{"actions": [{REMOVE_B}]}}',
        [("new", "check_units", "Check the units.")],
        True,
        0,
    ),
    ("{'name': 'python_dict', 'instruction': 'not JSON'}", [], False, 0),  # never eval'd
    (  # seen from SmolLM2: no comma between items, so the list fails and the items are kept
        '[{"name": "a", "instruction": "Step one."} {"name": "b", "instruction": "Step two."}]',
        [("new", "a", "Step one."), ("new", "b", "Step two.")],
        True,
        0,
    ),
    (  # seen from SmolLM2: an unescaped quote inside the instruction, nothing complete
        '[{"name": "steps", "instruction": "Write "one step" per line."}]',
        [],
        False,
        0,
    ),
]


@pytest.mark.parametrize(("text", "expected", "ok", "dropped"), CASES)
def test_parse_table(text, expected, ok, dropped):
    parsed = parse_behaviour_actions(text)
    assert parsed.actions == tuple(Action(*item) for item in expected)
    assert parsed.ok is ok
    assert parsed.dropped == dropped
    assert (parsed.error is None) is ok


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("Check Units-First!", "check_units_first"),
        ("__already_snake__", "already_snake"),
        ("CamelCase words", "camelcase_words"),
        ("ünïcödé", "n_c_d"),
        ("a" * 70, "a" * 64),
        ("word_" * 20, ("word_" * 13)[:-1]),  # 64 chars: 13 whole words
        ("abcdefghij_" * 7, "_".join(["abcdefghij"] * 5)),  # cut before a partial word
    ],
)
def test_normalise_name(raw, name):
    assert normalise_name(raw) == name
    assert len(name) <= 64


@given(st.text(max_size=300))
def test_parser_never_raises_and_names_are_snake_case(text):
    parsed = parse_behaviour_actions(text)
    assert parsed.ok or not parsed.actions
    for action in parsed.actions:
        assert action.name and set(action.name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_")


def _check_actions(parsed):
    assert parsed.ok or not parsed.actions
    assert parsed.dropped >= 0 and (parsed.ok or parsed.error)
    for action in parsed.actions:
        assert action.op in ("new", "update", "remove")
        assert 0 < len(action.name) <= 64
        assert set(action.name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_")
        assert (action.instruction == "") == (action.op == "remove")


@settings(max_examples=150, deadline=None)
@given(json_ish_text())
def test_parser_never_raises_on_json_ish_output(text):
    _check_actions(parse_behaviour_actions(text))


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_json_in_a_fence_with_prose_parses_like_the_bare_json(value):
    bare = json.dumps(value)
    assert parse_behaviour_actions(f"Here you go:\n```json\n{bare}\n```\nDone.") == (
        parse_behaviour_actions(bare)
    )


def test_deep_nesting_is_no_json_not_a_recursion_error():
    # The decoder recursed past Python's limit and raised RecursionError (found by the fuzzing).
    parsed = parse_behaviour_actions("[" * 1500 + NEW_A)
    assert parsed.actions == (Action("new", "check_units", "Check the units."),)
