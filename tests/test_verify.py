"""Tests for pmd_jax.verify: GSM8K gold solutions, an edge-case table, fuzzing with hypothesis."""

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pmd_jax.verify import (
    Verdict,
    VerifierConfig,
    extract_answer,
    parse_number,
    verify,
    verify_batch,
)

BOXED = VerifierConfig(answer_format="boxed")
FINAL_LINE_RE = re.compile(r"#### (.+)$")


def _load_gsm8k(path):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(row["answer"], FINAL_LINE_RE.search(row["answer"]).group(1)) for row in rows]


@pytest.mark.parametrize("split, expected_rows", [("train", 7473), ("test", 1319)])
def test_every_gsm8k_solution_verifies_against_its_own_answer(gsm8k_dir, split, expected_rows):
    solutions, golds = zip(*_load_gsm8k(gsm8k_dir / f"{split}.jsonl"), strict=True)
    assert len(solutions) == expected_rows

    rewards, feedback = verify_batch(solutions, golds)

    assert rewards.dtype == np.float32 and rewards.shape == (expected_rows,)
    assert rewards.sum() == expected_rows, [f for f in feedback if f][:5]
    assert all(f == "" for f in feedback)


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_gsm8k_solution_fails_when_the_gold_is_off_by_one(gsm8k_dir, split):
    solutions, golds = zip(*_load_gsm8k(gsm8k_dir / f"{split}.jsonl"), strict=True)
    # Every GSM8K answer is an integer (some with thousands separators).
    shifted_golds = [str(int(parse_number(gold)) + 1) for gold in golds]
    shifted_solutions = [
        solution[: solution.rindex("####")] + f"#### {int(parse_number(gold)) - 1}"
        for solution, gold in zip(solutions, golds, strict=True)
    ]

    rewards_gold_moved, _ = verify_batch(solutions, shifted_golds)
    rewards_answer_moved, feedback = verify_batch(shifted_solutions, golds)

    assert rewards_gold_moved.sum() == 0
    assert rewards_answer_moved.sum() == 0
    assert all(
        f.startswith("the final answer ") and f.endswith(" is not correct") for f in feedback
    )


# (response, gold, expected reward, config)
EDGE_CASES = [
    ("#### 42", "42", 1.0, None),
    ("Step one.\nStep two.\n#### 42", "42", 1.0, None),
    ("#### 1,234", "1234", 1.0, None),
    ("#### 1234", "1,234", 1.0, None),
    ("#### 1,234,567.5", "1234567.5", 1.0, None),
    ("#### 1,23", "123", 0.0, None),
    ("#### $18", "18", 1.0, None),
    ("#### €18", "18", 1.0, None),
    ("#### £7.50", "7.5", 1.0, None),
    ("#### -$5", "-5", 1.0, None),
    ("#### 50%", "50", 1.0, None),
    ("#### 42.", "42", 1.0, None),
    ("#### +42", "42", 1.0, None),
    ("#### 42.0", "42", 1.0, None),
    ("#### 0.5", "1/2", 1.0, None),
    ("#### 3/4", "0.75", 1.0, None),
    ("#### -1/2", "-0.5", 1.0, None),
    ("#### 1/3", "0.333333333", 1.0, None),
    ("#### 0.33", "1/3", 0.0, None),
    ("#### 1,000,001", "1000000", 0.0, None),  # no relative tolerance by default
    ("#### -7", "-7", 1.0, None),
    ("#### \u22127", "-7", 1.0, None),
    ("#### -7", "7", 0.0, None),
    ("#### **42**", "42", 1.0, None),
    ("#### `42`", "42", 1.0, None),
    ("#### 42 dollars", "42", 1.0, None),
    ("#### 12 apples.", "12", 1.0, None),
    ("#### 42 or 43", "42", 0.0, None),
    ("#### The answer is 42", "42", 0.0, None),
    ("#### 2+3", "5", 0.0, None),
    ("#### 1e3", "1000", 0.0, None),
    ("#### 42\n#### 43", "43", 1.0, None),
    ("#### 42\n#### 43", "42", 0.0, None),
    ("#### 42\n#### maybe", "42", 0.0, None),
    ("", "42", 0.0, None),
    ("####", "42", 0.0, None),
    ("The answer is 42.", "42", 0.0, None),
    ("Q: Tom has 42 apples. How many?\nTom has 42 apples.", "42", 0.0, None),
    ("#### \u0664\u0662", "42", 0.0, None),  # Arabic-Indic digits
    ("#### \uff14\uff12", "42", 0.0, None),  # fullwidth digits
    ("#### 4 \u00bd", "4", 0.0, None),  # vulgar fraction after the number
    ("#### " + "9" * 20, "9" * 20, 0.0, None),  # above max_abs
    ("#### " + "9" * 400, "42", 0.0, None),  # float overflow -> inf
    ("#### 999999999999999", "999999999999999", 1.0, None),  # just below max_abs
    ("```\n#### 42\n```", "42", 1.0, None),
    ('```python\nprint("#### 42")\n```', "42", 0.0, None),
    ("So the answer: #### 42", "42", 1.0, None),
    ("#### 42\nI hope this helps!", "42", 1.0, None),
    ("The answer is \\boxed{42}.", "42", 1.0, BOXED),
    ("\\boxed{1} then \\boxed{2}", "2", 1.0, BOXED),
    ("\\boxed{\\frac{3}{4}}", "0.75", 1.0, BOXED),
    ("\\boxed{\\$1{,}234}", "1234", 1.0, BOXED),
    ("\\boxed{42\\%}", "42", 1.0, BOXED),
    ("\\boxed{42 \\text{ dollars}}", "42", 1.0, BOXED),
    ("\\boxed{42", "42", 0.0, BOXED),
    ("#### 42", "42", 0.0, BOXED),
    ("\\boxed{42}", "42", 0.0, None),
    # Space-style thousands grouping: space, thin space, narrow no-break space, no-break space.
    ("#### 1 000", "1000", 1.0, None),
    ("#### 1\u2009000", "1000", 1.0, None),
    ("#### 1\u202f000", "1000", 1.0, None),
    ("#### 1\u00a0000", "1000", 1.0, None),
    ("#### 12 345 678", "12345678", 1.0, None),
    ("#### 1 000.5", "1000.5", 1.0, None),
    ("#### $1 000", "1000", 1.0, None),
    ("#### -1 000", "-1000", 1.0, None),
    ("#### 5 000 apples", "5000", 1.0, None),
    ("#### 1 00", "100", 0.0, None),  # groups after the first have exactly three digits
    ("#### 1 0000", "10000", 0.0, None),
    ("#### 1  000", "1000", 0.0, None),  # one separator, not a run of spaces
    ("#### 1\t000", "1000", 0.0, None),
    ("#### 1,000 000", "1000000", 0.0, None),  # one separator kind per number
    ("#### 1 000,000", "1000000", 0.0, None),
    ("#### 1\u2009000 000", "1000000", 0.0, None),
    ("#### 1 000,5", "1000.5", 0.0, None),  # no decimal comma
    ("#### 0,500", "500", 0.0, None),  # the first group does not start with 0
    ("#### 0 123", "123", 0.0, None),
    ("#### 5 100", "5100", 1.0, None),  # SI grouping: 5100 ...
    ("#### 5 100", "5", 0.0, None),  # ... never 5 ...
    ("#### 5 100", "100", 0.0, None),  # ... and never 100
    ("#### 5 10", "5", 0.0, None),
    ("#### 5 1000", "5", 0.0, None),
    ("#### 12 345/678", "12345", 0.0, None),  # not a mixed number
    ("\\boxed{1\\,000}", "1000", 1.0, BOXED),
    ("\\boxed{1{,}000\\,000}", "1000000", 0.0, BOXED),
    # Only a unit may follow the number: hedges, negations, judgements, scale words score 0.
    ("#### 8 is wrong", "8", 0.0, None),
    ("#### 8 no", "8", 0.0, None),
    ("#### 8 or so", "8", 0.0, None),
    ("#### 8 maybe", "8", 0.0, None),
    ("#### 8 approximately", "8", 0.0, None),
    ("#### 8 about", "8", 0.0, None),
    ("#### 8 not", "8", 0.0, None),
    ("#### 8 (approx.)", "8", 0.0, None),
    ("#### 8 km or so", "8", 0.0, None),
    ("#### 8 apples maybe", "8", 0.0, None),
    ("#### 8 so-so", "8", 0.0, None),
    ("#### 8 forty-two", "8", 0.0, None),
    ("#### 8 million", "8", 0.0, None),  # a scale word would change the value
    ("#### 8 million", "8000000", 0.0, None),
    ("#### 8 dozen", "8", 0.0, None),
    ("#### 8 squared", "8", 0.0, None),
    ("#### 8 square", "8", 0.0, None),
    ("#### 8 per", "8", 0.0, None),
    ("#### 8 a", "8", 0.0, None),
    ("#### 8/no", "8", 0.0, None),
    ("#### 8 x", "8", 0.0, None),  # a single letter that is not a listed unit
    ("#### 8th", "8", 0.0, None),  # only a listed unit may follow without a space
    ("#### 12 red apples", "12", 0.0, None),  # one free word at most
    # Units: listed units, one free word, rates, powers, qualifiers.
    ("#### 8 km\u00b2", "8", 1.0, None),
    ("#### 8 m\u00b3", "8", 1.0, None),
    ("#### 8 m^2", "8", 1.0, None),
    ("#### 8 square feet", "8", 1.0, None),
    ("#### 8 sq. ft.", "8", 1.0, None),
    ("#### 8 meters squared", "8", 1.0, None),
    ("#### 5 km/h", "5", 1.0, None),
    ("#### 9.8 m/s\u00b2", "9.8", 1.0, None),
    ("#### 3 hours", "3", 1.0, None),
    ("#### $5 per hour", "5", 1.0, None),
    ("#### $5/hour", "5", 1.0, None),
    ("#### 60 miles an hour", "60", 1.0, None),
    ("#### 3 apples per person", "3", 1.0, None),
    ("#### 18 years old", "18", 1.0, None),
    ("#### $4 each", "4", 1.0, None),
    ("#### 8km", "8", 1.0, None),
    ("#### 90\u00b0F", "90", 1.0, None),
    ("#### 20 degrees Celsius", "20", 1.0, None),
    ("#### 8 lbs.", "8", 1.0, None),
    ("#### 50 percent", "50", 1.0, None),
    ("#### 50 cents", "50", 1.0, None),  # units are never converted
    ("#### 8 t-shirts", "8", 1.0, None),
    ("#### 3 o'clock", "3", 1.0, None),
    ("#### 3 o\u2019clock", "3", 1.0, None),
    ("#### 8\u00a0km", "8", 1.0, None),
    ("#### 8 km\u00b2 2", "8", 0.0, None),  # a digit elsewhere in the tail
    ("#### 8\u00b2", "8", 0.0, None),  # a superscript needs a listed unit before it
    ("#### 8 apples\u00b2", "8", 0.0, None),
    ("\\boxed{90^\\circ}", "90", 1.0, BOXED),
    ("\\boxed{5\\,\\text{km}}", "5", 1.0, BOXED),
    ("\\boxed{8\\text{ m}^{2}}", "8", 1.0, BOXED),
]


@pytest.mark.parametrize("response, gold, expected_reward, config", EDGE_CASES)
def test_edge_case_reward(response, gold, expected_reward, config):
    verdict = verify(response, gold, config or VerifierConfig())

    assert verdict.reward == expected_reward, verdict
    assert (verdict.feedback == "") == (expected_reward == 1.0)


@pytest.mark.parametrize(
    "response, config, expected_feedback",
    [
        ("no marker here", None, "no line of the form '#### <number>' was found"),
        ("#### 41", None, "the final answer 41 is not correct"),
        ("#### abc", None, "the final answer 'abc' is not a number"),
        (
            "#### \u0664\u0662",
            None,
            "the final answer '\u0664\u0662' is not a number (write it with the digits 0-9)",
        ),
        ("#### ", None, "the final answer is empty"),
        (
            "#### 42 is wrong",
            None,
            "the final answer '42 is wrong' is not a number (only a unit may follow the number)",
        ),
        (
            "#### 42\u00b2",
            None,
            "the final answer '42\u00b2' is not a number (only a unit may follow the number)",
        ),
        ("#### \u00b2", None, "the final answer '\u00b2' is not a number"),
        (
            "#### 4\u0662",
            None,
            "the final answer '4\u0662' is not a number (write it with the digits 0-9)",
        ),
        (
            "#### 1" + "0" * 16,
            None,
            "the final answer 1" + "0" * 16 + " is too large to be accepted",
        ),
        ("42", BOXED, "no final answer of the form \\boxed{<number>} was found"),
    ],
)
def test_feedback_sentence(response, config, expected_feedback):
    assert verify(response, "42", config or VerifierConfig()).feedback == expected_feedback


def test_feedback_shortens_a_long_non_answer():
    verdict = verify("#### " + "x" * 500, "42")

    assert verdict.reward == 0.0 and len(verdict.feedback) < 120
    assert verdict.extracted == "x" * 500


@pytest.mark.parametrize(
    "response, answer_format, expected",
    [
        ("a\n#### 42 \nb", "hash", "42"),
        ("#### 1\n#### 2", "hash", "2"),
        ("no answer", "hash", None),
        ("x \\boxed{\\frac{1}{2}} y", "boxed", "\\frac{1}{2}"),
        ("\\boxed{1} \\boxed{2", "boxed", "1"),
        ("no box", "boxed", None),
    ],
)
def test_extract_answer_returns_raw_text(response, answer_format, expected):
    assert extract_answer(response, answer_format) == expected


def test_verdict_keeps_the_raw_extracted_text():
    assert verify("#### $1,234 dollars", "1234") == Verdict(1.0, "", "$1,234 dollars")


def test_tolerance_comes_from_config():
    loose = VerifierConfig(abs_tol=0.01)
    relative = VerifierConfig(rel_tol=1e-6)

    assert verify("#### 0.333", "1/3", loose).reward == 1.0
    assert verify("#### 0.333", "1/3").reward == 0.0
    assert verify("#### 1000001", "1000000", relative).reward == 1.0
    assert verify("#### 1000001", "1000000").reward == 0.0


@pytest.mark.parametrize(
    "kwargs", [{"answer_format": "json"}, {"rel_tol": -1.0}, {"max_abs": float("nan")}]
)
def test_bad_config_is_a_clear_error(kwargs):
    with pytest.raises(ValueError, match="VerifierConfig"):
        VerifierConfig(**kwargs)


def test_unparseable_gold_is_a_clear_error():
    with pytest.raises(ValueError, match="gold answer 'abc' is not a number"):
        verify("#### 1", "abc")
    with pytest.raises(ValueError, match="item 1: gold answer 'x'"):
        verify_batch(["#### 1", "#### 2"], ["1", "x"])


def test_verify_batch_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 responses but 1 gold answers"):
        verify_batch(["#### 1", "#### 2"], ["1"])


def test_verify_batch_matches_verify_one_by_one():
    responses = ["#### 1", "#### 2", "nothing", "#### x", "#### 3/4"]
    golds = ["1", "1", "1", "1", "0.75"]

    rewards, feedback = verify_batch(responses, golds)

    expected = [verify(r, g) for r, g in zip(responses, golds, strict=True)]
    np.testing.assert_array_equal(rewards, [v.reward for v in expected])
    assert feedback == [v.feedback for v in expected]


def _check_never_raises(text):
    for config in (VerifierConfig(), BOXED):
        verdict = verify(text, "42", config)
        assert verdict.reward in (0.0, 1.0)
        assert (verdict.feedback == "") == (verdict.reward == 1.0)
    value = parse_number(text)
    assert value is None or isinstance(value, float)


# Hypothesis spends about 2 ms per example generating text (the verifier about 20 us), so the
# fast suite fuzzes 1k strings and the slow suite 10k.
@settings(max_examples=1_000, deadline=None)
@given(st.text())
def test_arbitrary_unicode_never_raises(text):
    _check_never_raises(text)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None)
@given(st.text())
def test_arbitrary_unicode_never_raises_10k(text):
    _check_never_raises(text)


@settings(max_examples=1_000, deadline=None)
@given(st.text(alphabet="#$%*,./\\{}-+ 0123456789boxedfrac\n\u0664\u2212"))
def test_answer_like_text_never_raises(text):
    verify(text, "42")
    verify(text, "42", BOXED)


# Pieces of answer syntax and of the reward-hacking attempts the module docstring rules on.
FRAGMENTS = [
    "####",
    "#### ",
    "\n",
    "\\boxed{",
    "{",
    "}",
    "$",
    "**",
    "`",
    "```",
    "-",
    "\u2212",
    ",",
    ".",
    "/",
    "%",
    " ",
    "42",
    "0",
    "7",
    "1,234",
    "1e3",
    "nan",
    "inf",
    "-inf",
    "NaN",
    "Infinity",
    "9" * 400,
    "\u0664\u0662",
    "\uff14\uff12",
    "\u00bd",
    "\u00b2",
    " dollars",
    "\\frac{1}{2}",
    "\\(",
    "\\)",
    "\\$",
    "{,}",
    "\\,",
    "<|im_start|>",
    "\x00",
    "\ufeff",
    "\u200b",
]
adversarial_text = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.text(max_size=8),
        st.integers().map(str),
        st.floats().map(repr),
    ),
    max_size=30,
).map("".join)
golds = st.one_of(
    st.integers(-(10**16), 10**16).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
)


def _check_verdict(response, gold):
    for config in (VerifierConfig(), BOXED):
        verdict = verify(response, gold, config)
        assert isinstance(verdict, Verdict) and verdict.reward in (0.0, 1.0)
        assert (verdict.feedback == "") == (verdict.reward == 1.0)
        if verdict.reward == 1.0:
            value = parse_number(verdict.extracted)
            assert value is not None and abs(value - parse_number(gold)) <= config.abs_tol


@settings(max_examples=1_000, deadline=None)
@given(adversarial_text, golds)
def test_adversarial_responses_never_raise(response, gold):
    _check_verdict(response, gold)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None)
@given(adversarial_text, golds)
def test_adversarial_responses_never_raise_10k(response, gold):
    _check_verdict(response, gold)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(FRAGMENTS + ["\\boxed{1", "a.", "**4"]), st.integers(1, 5_000))
def test_long_repetitive_responses_never_raise(fragment, count):
    _check_verdict(fragment * count, "42")


def test_many_unclosed_boxes_take_linear_time():
    response = "\\boxed{" * 20_000 + "\\boxed{42}" + "\\boxed{" * 20_000
    assert verify(response, "42", BOXED).reward == 1.0  # was 100 s with a rescan per box


def _last_boxed_by_rescan(response):
    """The reference: scan forward from each box, the last first, until one closes."""
    start = response.rfind("\\boxed{")
    while start != -1:
        depth, begin = 1, start + len("\\boxed{")
        for index in range(begin, len(response)):
            depth += {"{": 1, "}": -1}.get(response[index], 0)
            if depth == 0:
                return response[begin:index].strip()
        start = response.rfind("\\boxed{", 0, start)
    return None


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["\\boxed{", "{", "}", "1", " x"]), max_size=40).map("".join))
def test_boxed_extraction_matches_the_rescan_reference(response):
    assert extract_answer(response, "boxed") == _last_boxed_by_rescan(response)


# Reward-hacking rules (module docstring), as properties over arbitrary text.
small_ints = st.integers(-(10**6), 10**6)


@settings(max_examples=200, deadline=None)
@given(adversarial_text, small_ints)
def test_only_the_last_answer_counts_whatever_comes_before(prefix, gold):
    assert verify(f"{prefix}\n#### {gold}", str(gold)).reward == 1.0
    assert verify(f"{prefix}\n#### {gold}\n#### {gold + 1}", str(gold)).reward == 0.0
    assert verify(f"{prefix}\\boxed{{{gold}}}", str(gold), BOXED).reward == 1.0
    assert verify(f"{prefix}\\boxed{{{gold}}} \\boxed{{{gold + 1}}}", str(gold), BOXED).reward == 0


@settings(max_examples=200, deadline=None)
@given(adversarial_text.filter(lambda text: "####" not in text), small_ints)
def test_numbers_without_the_marker_never_score(prose, gold):
    # An echoed question or a prose answer: however many times the gold appears, no '####'.
    verdict = verify(f"{prose} {gold} {prose} The answer is {gold}.", str(gold))
    assert verdict.reward == 0.0
    assert verdict.feedback == "no line of the form '#### <number>' was found"


@settings(max_examples=200, deadline=None)
@given(st.integers(-(10**30), 10**30))
def test_giant_integers_score_only_up_to_max_abs(number):
    verdict = verify(f"#### {number}", str(number))
    assert verdict.reward == float(abs(number) <= 10**15)


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        alphabet=st.characters(categories=["Nd"]).filter(lambda c: not c.isascii()),
        min_size=1,
        max_size=6,
    )
)
def test_unicode_digits_never_score(digits):
    gold = "".join(str(int(char)) for char in digits)
    verdict = verify(f"#### {digits}", gold)
    assert verdict.reward == 0.0 and verdict.feedback.endswith("(write it with the digits 0-9)")


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        alphabet=st.characters(categories=["No"]),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from(["", " ", " km"]),
)
def test_numeric_characters_that_are_not_digits_get_no_digit_hint(chars, before):
    # Superscripts, vulgar fractions, circled numbers (category No) are not decimal digits.
    verdict = verify(f"#### 8{before}{chars}", "8")
    assert "digits 0-9" not in verdict.feedback


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 10**9), st.integers(0, 999), st.sampled_from([" ", "\u2009", "\u202f", "\u00a0"])
)
def test_space_grouping_never_makes_one_of_two_numbers_score(first, rest, separator):
    # '#### a bbb' reads as the grouped number a*1000 + bbb, which is neither a nor bbb.
    grouped_first = f"{first:,}".replace(",", separator)  # '1 000' for 1000: itself grouped
    response = f"#### {grouped_first}{separator}{rest:03d}"
    assert verify(response, str(first * 1000 + rest)).reward == 1.0
    assert verify(response, str(first)).reward == 0.0
    assert verify(response, str(rest)).reward == 0.0
    assert verify(response + " apples", str(first)).reward == 0.0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 10**6).filter(lambda n: n >= 1000 or n < 100))
def test_a_second_number_that_is_not_a_group_of_three_rejects_the_answer(first, second):
    for separator in (" ", "\u2009", "\u202f", "\u00a0"):
        verdict = verify(f"#### {first}{separator}{second}", str(first))
        assert verdict.reward == 0.0


# ('squared' is not here: '8 km squared' is a unit; '8 squared' alone is an edge case above.)
HEDGES = [
    "is wrong",
    "no",
    "not",
    "or so",
    "maybe",
    "perhaps",
    "probably",
    "approximately",
    "approx",
    "about",
    "roughly",
    "nearly",
    "ish",
    "or more",
    "or less",
    "is the answer",
    "isn't right",
    "incorrect",
    "wrong",
    "I think",
    "give or take",
    "plus",
    "minus",
    "million",
    "thousand",
    "dozen",
    "half",
    "and a half",
]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-(10**6), 10**6),
    st.sampled_from(HEDGES),
    st.sampled_from(["", " km", " apples", " dollars"]),
    st.sampled_from(["lower", "upper", "title"]),
)
def test_hedges_after_the_number_never_score(gold, hedge, unit, case):
    hedge = getattr(hedge, case)()
    for tail in (f"{unit} {hedge}", f" {hedge}{unit}"):
        assert verify(f"#### {gold}{tail}", str(gold)).reward == 0.0, tail


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 10**6),
    st.sampled_from(["km", "km²", "kg", "hours", "minutes", "dollars", "cents", "percent"]),
    st.sampled_from(["", "/h", " per day", " an hour", " each", " per person"]),
    st.sampled_from(["{:,}", "{:d}", "{:_}"]),
)
def test_unit_tails_keep_the_value(gold, unit, rate, style):
    number = style.format(gold).replace("_", " ")  # 1,234 / 1234 / 1 234
    response = f"#### {number} {unit}{rate}"
    assert verify(response, str(gold)).reward == 1.0, response
    assert verify(response, str(gold + 1)).reward == 0.0, response
