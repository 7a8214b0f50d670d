"""Tests for pmd_jax.data.arith (and the builders in pmd_jax.data.arith_families)."""

import collections
import random
import re

import numpy as np
import pytest

from pmd_jax.data.arith import (
    FAMILIES,
    ArithConfig,
    ArithProblem,
    generate_problem,
    generate_split,
)
from pmd_jax.data.arith_families import BUILDERS, Draft
from pmd_jax.verify import verify, verify_batch

SMALL = ArithConfig(train_size=600, test_size=120, seed=7)

# The computations a solution line may hold (after removing '$'); checked without eval.
_BINARY_RE = re.compile(r"(\d+) ([+\-*]) (\d+) = (\d+)")
_PERCENT_RE = re.compile(r"(\d+) \* (\d+) / 100 = (\d+)")
_DIVMOD_RE = re.compile(r"(\d+) / (\d+) = (\d+) with (\d+) left over")
_EXACT_DIV_RE = re.compile(r"(\d+) / (\d+) = (\d+),")
_BINARY_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@pytest.fixture(scope="module")
def splits():
    return {split: generate_split(SMALL, split) for split in ("train", "test")}


def _check_line(line: str) -> int:
    """Asserts every computation in a solution line is right; returns how many it holds."""
    line = line.replace("$", "")
    count = 0
    for a, b, result in _PERCENT_RE.findall(line):
        assert int(a) * int(b) == 100 * int(result), line
        count += 1
    for a, b, quotient, remainder in _DIVMOD_RE.findall(line):
        assert int(a) == int(b) * int(quotient) + int(remainder), line
        assert 0 < int(remainder) < int(b) or int(remainder) == 0, line
        count += 1
    for a, b, quotient in _EXACT_DIV_RE.findall(line):
        assert int(a) == int(b) * int(quotient), line
        count += 1
    for a, op, b, result in _BINARY_RE.findall(line):
        assert _BINARY_OPS[op](int(a), int(b)) == int(result), line
        count += 1
    return count


def _check_problem(problem: ArithProblem) -> None:
    *lines, final = problem.solution.split("\n")
    assert final == f"#### {problem.answer}"
    assert len(lines) == problem.num_steps
    assert all(_check_line(line) >= 1 for line in lines), problem.solution
    assert re.findall(r"\d+", lines[-1])[-1] == problem.answer, problem.solution
    assert problem.answer.isdigit() and str(int(problem.answer)) == problem.answer
    assert problem.question.endswith("?") and problem.question.count("?") == 1
    assert problem.question.split(". ")[-1].startswith("How many ")


def test_same_config_gives_identical_splits(splits):
    assert generate_split(SMALL, "train") == splits["train"]
    assert generate_split(SMALL, "test") == splits["test"]


def test_another_seed_gives_other_problems(splits):
    other = generate_split(ArithConfig(train_size=600, test_size=120, seed=8), "test")

    assert len({p.question for p in other} & {p.question for p in splits["test"]}) < 5


def test_train_and_test_share_no_question(splits):
    assert not {p.question for p in splits["train"]} & {p.question for p in splits["test"]}


def test_no_question_repeats_within_a_split(splits):
    for problems in splits.values():
        assert len({p.question for p in problems}) == len(problems)


def test_train_skips_questions_that_test_would_collide_with():
    # A tiny question space (one family, one step, small numbers) forces collisions, which
    # the dedup must remove rather than let through.
    config = ArithConfig(
        families=("add_sub",), max_steps=1, max_operand=5, train_size=300, test_size=100
    )
    train, test = generate_split(config, "train"), generate_split(config, "test")

    assert len(train) == 300 and len(test) == 100
    assert not {p.question for p in train} & {p.question for p in test}


@pytest.mark.parametrize("split, size", [("train", 600), ("test", 120)])
def test_every_family_and_step_count_appears_balanced(splits, split, size):
    counts = collections.Counter((p.family, p.num_steps) for p in splits[split])

    assert len(splits[split]) == size
    assert set(counts) == {(f, k) for f in SMALL.families for k in range(1, SMALL.max_steps + 1)}
    assert max(counts.values()) - min(counts.values()) <= 1


def test_every_gold_solution_verifies_and_a_wrong_answer_does_not(splits):
    problems = splits["train"] + splits["test"]
    solutions = [p.solution for p in problems]

    rewards, feedback = verify_batch(solutions, [p.answer for p in problems])
    wrong_rewards, _ = verify_batch(solutions, [str(int(p.answer) + 1) for p in problems])

    assert rewards.sum() == len(problems), [f for f in feedback if f][:3]
    assert wrong_rewards.sum() == 0


def test_every_solution_line_is_correct_arithmetic_ending_in_the_answer(splits):
    for problem in splits["train"] + splits["test"]:
        _check_problem(problem)


@pytest.mark.parametrize("max_operand", [5, 7, 30, 1000])
def test_builders_stay_valid_over_many_steps_and_magnitudes(max_operand):
    config = ArithConfig(max_steps=8, max_operand=max_operand)
    rng = random.Random(max_operand)
    for family in FAMILIES:
        for num_steps in range(1, 9):
            for _ in range(25):
                problem = generate_problem(rng, family, num_steps, config)
                assert (problem.family, problem.num_steps) == (family, num_steps)
                _check_problem(problem)
                assert verify(problem.solution, problem.answer).reward == 1.0


def test_max_operand_raises_the_magnitude_of_answers():
    def mean_answer(max_operand):
        config = ArithConfig(max_operand=max_operand, train_size=240, test_size=24)
        return np.mean([int(p.answer) for p in generate_split(config, "test")])

    assert mean_answer(10) < mean_answer(50) < mean_answer(200)


def test_same_family_shares_its_procedure():
    # The operators of a one-step solution are fixed by the family, whatever the wording.
    expected = {
        "add_sub": {"+", "-"},
        "multiply_adjust": {"*"},
        "unit_price": {"*"},
        "rate_time": {"*"},
        "percent": {"*/"},
        "share_remainder": {"/", "/+"},
    }
    rng = random.Random(0)
    for family in FAMILIES:
        operators = {
            "".join(re.findall(r" ([+\-*/]) ", generate_problem(rng, family, 1, SMALL).solution))
            for _ in range(50)
        }
        assert operators == expected[family], family


def test_generate_problem_accepts_numpy_and_python_generators():
    from_numpy = [generate_problem(np.random.default_rng(3), f, 2, SMALL) for f in FAMILIES]
    again = [generate_problem(np.random.default_rng(3), f, 2, SMALL) for f in FAMILIES]
    from_python = generate_problem(random.Random(3), "percent", 3, SMALL)

    assert from_numpy == again
    assert from_python == generate_problem(random.Random(3), "percent", 3, SMALL)


def test_unknown_family_is_a_value_error():
    with pytest.raises(ValueError, match="unknown arith family 'algebra'"):
        generate_problem(random.Random(0), "algebra", 1, SMALL)
    with pytest.raises(ValueError, match="families=.*unknown \\['algebra'\\]"):
        ArithConfig(families=("add_sub", "algebra"))


@pytest.mark.parametrize("num_steps", [0, -1, 5])
def test_num_steps_out_of_range_is_a_value_error(num_steps):
    with pytest.raises(ValueError, match=f"num_steps={num_steps} is out of range 1..4"):
        generate_problem(random.Random(0), "add_sub", num_steps, SMALL)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_steps": 0}, "max_steps=0"),
        ({"max_operand": 4}, "max_operand=4"),
        ({"test_size": 10}, "test_size=10 must be >= 16"),
        ({"families": ()}, "non-empty"),
    ],
)
def test_bad_config_is_a_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArithConfig(**kwargs)


def test_unknown_split_is_a_value_error():
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        generate_split(SMALL, "validation")


def test_a_question_space_too_small_for_the_split_is_a_value_error(monkeypatch):
    def constant(rng, num_steps, max_operand):
        return Draft(["Mia has 2 apples."], ["2 + 0 = 2"] * num_steps, "How many?", 2)

    monkeypatch.setitem(BUILDERS, "add_sub", constant)
    config = ArithConfig(families=("add_sub",), max_steps=1, train_size=5, test_size=1)

    assert len(generate_split(config, "test")) == 1
    with pytest.raises(ValueError, match="could not find a new add_sub problem with 1 steps"):
        generate_split(config, "train")
