"""Parse rate of reflections by SmolLM2-135M-Instruct in both output formats (lines, json).

Problems: the first N arith train problems (4 families x 1-4 steps for N = 16). Groups: 4 real
rollouts per problem sampled with the student prompt (T=0.6, top_p=0.95, stop after the answer
line); with --gold-groups instead, the gold solution as a success plus a corrupted copy (last
number changed) as a failure, which is faster. Then one reflection per problem and format
(ReflectConfig defaults except the format). Reports parse rate (ok / requests), items per request
and shortcut counts per reason; writes benchmarks/results/reflect.json with the raw texts.
Run: `python -m benchmarks.reflect_parse_rate` (about 20 minutes on 2 shared CPU cores: half
rollouts, half reflection; `--rollouts-jsonl` reuses rollouts, `--rescore` only re-parses).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import tempfile
import time

import jax

from benchmarks.common import machine_description, write_result
from pmd_jax.data.arith import ArithConfig, generate_split
from pmd_jax.evaluate import EvalConfig, evaluate
from pmd_jax.memory.reflect import (
    Attempt,
    ReflectConfig,
    build_reflection_requests,
    reflect,
    select_items,
)
from pmd_jax.memory.state import MemoryConfig
from pmd_jax.model import load

SUCCESS_REWARD = MemoryConfig().success_reward  # the training runs' definition of a success


def gold_groups(problems: list[dict]) -> list[list[Attempt]]:
    """A success (the gold solution) and a failure (its final number plus one) per problem."""
    groups = []
    for problem in problems:
        wrong = str(int(problem["answer"]) + 1)
        corrupted = re.sub(r"#### .*$", f"#### {wrong}", problem["solution"])
        feedback = f"the final answer {wrong} is not correct"
        groups.append([Attempt(problem["solution"], 1.0), Attempt(corrupted, 0.0, feedback)])
    return groups


def groups_from_jsonl(path: pathlib.Path, problems: list[dict]) -> list[list[Attempt]]:
    """Groups of an `evaluate` jsonl (responses, rewards, feedback per problem id)."""
    records = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]
    by_id = {record["id"]: record for record in records}
    columns = ("responses", "rewards", "feedback")
    return [
        [Attempt(*a) for a in zip(*(by_id[p["id"]][c] for c in columns), strict=True)]
        for p in problems
    ]


def rollout_groups(model, problems: list[dict], num_samples: int, seed: int) -> list[list]:
    """num_samples real rollouts per problem (T=0.6, top_p=0.95) with rewards and feedback."""
    config = EvalConfig(num_samples=num_samples, temperature=0.6, top_p=0.95, seed=seed)
    config = dataclasses.replace(config, max_new_tokens=192, batch_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "rollouts.jsonl"
        tokenizer = model.tokenizer
        evaluate(model.params, model.config, tokenizer, problems, config, jsonl_path=path)
        return groups_from_jsonl(path, problems)


def rescore(result: dict, prime_response: bool = True) -> None:
    """(Re)compute parse rate, items and shortcut counts of stored raw texts with the current
    parser and filter, in place, and print them."""
    for output_format, summary in result["formats"].items():
        config = ReflectConfig(output_format=output_format, prime_response=prime_response)
        stats: dict[str, int] = {}
        items = []
        for text, question in zip(summary["raw_texts"], result["questions"], strict=True):
            kept, item_stats = select_items(text, question, config)
            items.append([list(item) for item in kept])
            for key, value in item_stats.items():
                stats[key] = stats.get(key, 0) + value
        summary["parse_rate"] = stats["reflect/parsed"] / stats["reflect/requests"]
        summary["items_per_request"] = stats["reflect/items"] / stats["reflect/requests"]
        summary["stats"] = stats
        summary["items"] = items
        shown = {k: summary[k] for k in ("parse_rate", "items_per_request", "stats")}
        print(output_format, json.dumps(shown))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--gold-groups", action="store_true")
    parser.add_argument("--rollouts-jsonl", help="reuse the rollouts of an evaluate jsonl")
    parser.add_argument("--no-prime", action="store_true", help="do not start the response")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=ReflectConfig.max_new_tokens)
    parser.add_argument("--batch-size", type=int, default=ReflectConfig.batch_size)
    parser.add_argument("--out", default="reflect", help="results name (benchmarks/results/)")
    parser.add_argument("--rescore", help="re-parse the raw texts of a results file, no model")
    args = parser.parse_args()
    if args.rescore:
        result = json.loads(pathlib.Path(args.rescore).read_text())
        rescore(result, prime_response=not args.no_prime)
        pathlib.Path(args.rescore).write_text(json.dumps(result, indent=2) + "\n")
        return

    model = load("smollm2-135m-instruct")
    problems = [
        {**dataclasses.asdict(p), "id": index}
        for index, p in enumerate(generate_split(ArithConfig(), "train")[: args.problems])
    ]
    questions = [p["question"] for p in problems]
    start = time.perf_counter()
    if args.rollouts_jsonl:
        groups = groups_from_jsonl(args.rollouts_jsonl, problems)
    elif args.gold_groups:
        groups = gold_groups(problems)
    else:
        groups = rollout_groups(model, problems, args.rollouts, args.seed)
    result = {
        "machine": machine_description(),
        "groups_source": (
            "gold+corrupted"
            if args.gold_groups
            else args.rollouts_jsonl or f"{args.rollouts} rollouts, T=0.6, top_p=0.95"
        ),
        "rollout_seconds": time.perf_counter() - start,
        "groups": [[list(a) for a in g] for g in groups],
        "questions": questions,
        "formats": {},
    }
    for output_format in ("lines", "json"):
        config = ReflectConfig(
            output_format=output_format,
            prime_response=not args.no_prime,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
        )
        requests = build_reflection_requests(
            model.tokenizer, questions, groups, config, success_reward=SUCCESS_REWARD
        )
        start = time.perf_counter()
        rng = jax.random.PRNGKey(args.seed)
        out = reflect(model.params, model.config, model.tokenizer, requests, config, rng)
        result["formats"][output_format] = {
            "seconds": time.perf_counter() - start,
            "prompt_tokens_max": max(len(r.prompt_ids) for r in requests),
            "cases": [r.case for r in requests],
            "raw_texts": out.raw_texts,
        }
    rescore(result, prime_response=not args.no_prime)
    print("wrote", write_result(args.out, result))


if __name__ == "__main__":
    main()
