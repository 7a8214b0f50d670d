"""A seeded, graded curriculum of arithmetic word problems with GSM8K-style gold solutions.

Each family is one procedure (a fixed template of steps with varied names, objects and numbers;
the builders live in pmd_jax.data.arith_families), so behaviours learned on one problem transfer
to others of the same family:
- add_sub: a starting amount, then gains and losses;
- multiply_adjust: packs of items (multiply), then give-aways and extra packs;
- unit_price: items at a unit price, extra items, a coupon, change from a bill;
- rate_time: an amount per hour/day times a duration, then extra time and give-aways;
- percent: a discount of x% on a price, the sale price, several items, fees, a second change;
- share_remainder: gather items, then divide with a remainder (each share, leftovers, vans needed).

A problem with `num_steps` = k has exactly k solution lines, each with one computation
('a + b = c', 'a * b = c', 'a * b / 100 = c', 'a / b = q with r left over', 'q + 1 = c'),
then '#### <answer>'. Answers are non-negative integers by construction. Difficulty grows with
k and with `max_operand`, which scales the amounts, prices and rates (multipliers and group
sizes stay below 10). Solutions carry no '<<a*b=c>>' calculator annotations.
"""

from __future__ import annotations

import argparse
import dataclasses
import random

import numpy as np

from pmd_jax.data.arith_families import BUILDERS

FAMILIES: tuple[str, ...] = tuple(BUILDERS)
DEFAULT_FAMILIES: tuple[str, ...] = ("add_sub", "multiply_adjust", "unit_price", "rate_time")
SPLITS = ("train", "test")
_MAX_ATTEMPTS = 200  # per problem, to find a question not generated before


@dataclasses.dataclass(frozen=True)
class ArithConfig:
    """Which problems a curriculum holds and how many."""

    max_steps: int = 4  # K: problems have 1..K steps
    # Calibrated on SmolLM2-135M-Instruct (greedy, default prompt): see docs/RESULTS.md "Base accuracy".
    # percent and share_remainder stay available for harder curricula; at 1 step the base
    # model solved none of them, so they would only add unlearnable problems to the default.
    families: tuple[str, ...] = DEFAULT_FAMILIES
    max_operand: int = 10  # magnitude: the largest amount, price or rate drawn
    train_size: int = 2000
    test_size: int = 200  # per split; balanced over (family, steps)
    seed: int = 0

    def __post_init__(self):
        unknown = [family for family in self.families if family not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(
                f"ArithConfig.families={self.families!r}: unknown {unknown}; "
                f"expected a non-empty subset of {FAMILIES}"
            )
        if self.max_steps < 1:
            raise ValueError(f"ArithConfig.max_steps={self.max_steps} must be >= 1")
        if self.max_operand < 5:
            raise ValueError(f"ArithConfig.max_operand={self.max_operand} must be >= 5")
        combos = len(self.families) * self.max_steps
        for name in ("train_size", "test_size"):
            if getattr(self, name) < combos:
                raise ValueError(
                    f"ArithConfig.{name}={getattr(self, name)} must be >= {combos} "
                    f"(families x max_steps) so that every (family, steps) pair appears"
                )


@dataclasses.dataclass(frozen=True)
class ArithProblem:
    """One word problem with its gold solution."""

    question: str
    solution: str  # k computation lines, then '#### <answer>'
    answer: str  # a normalised integer string, e.g. "42"
    family: str
    num_steps: int


def generate_problem(
    rng: np.random.Generator | random.Random, family: str, num_steps: int, config: ArithConfig
) -> ArithProblem:
    """One problem of `family` with exactly `num_steps` solution lines (1..config.max_steps)."""
    if family not in BUILDERS:
        raise ValueError(f"unknown arith family {family!r}; expected one of {FAMILIES}")
    if not 1 <= num_steps <= config.max_steps:
        raise ValueError(f"num_steps={num_steps} is out of range 1..{config.max_steps}")
    if isinstance(rng, np.random.Generator):
        rng = random.Random(int(rng.integers(2**63)))
    facts, lines, ask, answer = BUILDERS[family](rng, num_steps, config.max_operand)
    if len(lines) != num_steps or answer < 0:  # a bug in a builder, not bad input
        raise RuntimeError(f"{family} built {len(lines)} lines for {num_steps} steps, {answer=}")
    return ArithProblem(
        question=" ".join([*facts, ask]),
        solution="\n".join([*lines, f"#### {answer}"]),
        answer=str(answer),
        family=family,
        num_steps=num_steps,
    )


def _build_split(config: ArithConfig, split: str, size: int, taken: set[str]) -> list[ArithProblem]:
    """`size` problems cycling through (family, steps) pairs, none with a question in `taken`."""
    rng = random.Random(f"pmd_jax.arith/{split}/{config.seed}")
    combos = [
        (family, steps) for steps in range(1, config.max_steps + 1) for family in config.families
    ]
    seen, problems = set(taken), []
    for index in range(size):
        family, steps = combos[index % len(combos)]
        for _ in range(_MAX_ATTEMPTS):
            problem = generate_problem(rng, family, steps, config)
            if problem.question not in seen:
                break
        else:
            raise ValueError(
                f"could not find a new {family} problem with {steps} steps after "
                f"{_MAX_ATTEMPTS} tries; raise max_operand or lower the split sizes ({config})"
            )
        seen.add(problem.question)
        problems.append(problem)
    return problems


def generate_split(config: ArithConfig, split: str) -> list[ArithProblem]:
    """The deterministic list of problems of a split ("train" or "test").

    The test split is built first; train skips every test question, so the splits share no
    question by construction (train therefore also depends on test_size). No question repeats
    within a split. Problems cycle through (family, steps) pairs in a fixed order.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    test = _build_split(config, "test", config.test_size, set())
    if split == "test":
        return test
    return _build_split(config, "train", config.train_size, {p.question for p in test})


def main() -> None:
    """Prints a few examples per family and level."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--max-operand", type=int, default=20)
    parser.add_argument("--per-level", type=int, default=1, help="examples per family and level")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = ArithConfig(max_steps=args.max_steps, max_operand=args.max_operand)
    rng = random.Random(args.seed)
    for family in FAMILIES:
        for steps in range(1, config.max_steps + 1):
            for _ in range(args.per_level):
                problem = generate_problem(rng, family, steps, config)
                print(f"--- {family}, {steps} step(s)\n{problem.question}\n{problem.solution}\n")


if __name__ == "__main__":
    main()
