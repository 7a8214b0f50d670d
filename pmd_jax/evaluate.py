"""Memory-free evaluation: avg@k and pass@k of a policy over a split, with a per-problem JSONL.

    python -m pmd_jax.evaluate --model smollm2-135m-instruct --task arith --split test --k 4

avg@k is the mean reward over k samples per problem (averaged over problems); pass@k the fraction of
problems with at least one correct sample among the k. Results are also broken down by
(family, num_steps), which is how the arith curriculum is calibrated.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from pmd_jax import sharding
from pmd_jax.data.prompts import PromptConfig, format_prompts
from pmd_jax.model.config import ModelConfig
from pmd_jax.sampling import (
    SampleConfig,
    answer_line_stop_table,
    left_pad,
    response_token_lists,
    sample,
)
from pmd_jax.verify import VerifierConfig, verify_batch


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How to sample and score one evaluation."""

    num_samples: int = 4  # k
    temperature: float = 1.0  # 0.0 = greedy (k is then forced to 1)
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 16  # prompts per sampler call
    answer_format: str = "hash"
    seed: int = 0
    prompt_bucket: int = 64
    stop_at_answer: bool = True  # end a response after its '#### <answer>' line ("hash" format)

    def sample_config(self, tokenizer) -> SampleConfig:
        return SampleConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            num_samples=1 if self.temperature == 0.0 else self.num_samples,
            stop_ids=tuple(tokenizer.stop_ids),
            pad_id=tokenizer.pad_id,
        )


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """avg@k / pass@k overall and per (family, num_steps) from per-problem records with `rewards`."""

    def stats(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
        rewards = [np.asarray(r["rewards"], np.float64) for r in group]
        return {
            "num_problems": len(group),
            "avg_at_k": float(np.mean([r.mean() for r in rewards])) if group else float("nan"),
            "pass_at_k": float(np.mean([r.max() > 0 for r in rewards])) if group else float("nan"),
        }

    groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for record in records:
        groups[f"{record.get('family', '?')}/steps={record.get('num_steps', '?')}"].append(record)
    by_steps: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for record in records:
        by_steps[f"steps={record.get('num_steps', '?')}"].append(record)
    return {
        **stats(records),
        "k": len(records[0]["rewards"]) if records else 0,
        "by_steps": {key: stats(by_steps[key]) for key in sorted(by_steps)},
        "by_group": {key: stats(groups[key]) for key in sorted(groups)},
    }


def paired_change(
    base: Sequence[dict[str, Any]],
    final: Sequence[dict[str, Any]],
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """The change of avg@k from `base` to `final` on the same problems, with a paired interval.

    Each problem's score is its mean reward over its k samples; the change is the mean over problems
    of final - base, and its interval the percentile interval of a paired bootstrap (problems
    resampled with replacement, both scores of a problem kept together; fixed seed, so the same
    records give the same interval). `discordant` counts problems whose score went up / down: with
    greedy eval those are McNemar's b and c. Problems are matched by id; a problem missing from
    either side is an error, since an unpaired comparison would mix noise into the change.
    """
    by_id = {int(r["id"]): float(np.mean(r["rewards"])) for r in base}
    after = {int(r["id"]): float(np.mean(r["rewards"])) for r in final}
    if set(by_id) != set(after):
        raise ValueError(
            f"paired_change: the two evaluations hold different problems "
            f"({len(set(by_id) ^ set(after))} ids on one side only)"
        )
    ids = sorted(by_id)
    diff = np.array([after[i] - by_id[i] for i in ids], np.float64)  # [n]
    n = len(ids)
    if n == 0:
        raise ValueError("paired_change: no problems")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(resamples, n))  # [resamples, n]
    means = diff[picks].mean(axis=1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {
        "num_problems": n,
        "base": float(np.mean([by_id[i] for i in ids])),
        "final": float(np.mean([after[i] for i in ids])),
        "change": float(diff.mean()),
        "low": float(low),
        "high": float(high),
        "confidence": confidence,
        "up": int(np.sum(diff > 0)),
        "down": int(np.sum(diff < 0)),
    }


def read_records(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """The per-problem records of an evaluation JSONL (as `evaluate(..., jsonl_path=)` writes)."""
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line]


def evaluate(
    params: dict,
    model_config: ModelConfig,
    tokenizer,
    problems: Sequence[dict[str, Any]],
    config: EvalConfig = EvalConfig(),
    *,
    jsonl_path: str | pathlib.Path | None = None,
    progress: bool = True,
    mesh=None,
) -> dict[str, Any]:
    """Sample k responses per problem (dicts with id, question, answer, ...), verify, summarise
    (sampling on `mesh` when given: `sampling.sample`).

    Every sampler call has the same shape (prompts padded to the longest of the whole set, the last
    batch filled with repeats that are dropped), so the sampler compiles once per evaluation.
    """
    if not problems:
        raise ValueError("evaluate: no problems to evaluate")
    sample_config = config.sample_config(tokenizer)
    k = sample_config.num_samples
    prompt_config = PromptConfig(answer_format=config.answer_format)
    prompts = format_prompts(tokenizer, [p["question"] for p in problems], prompt_config)
    prompt_ids = [list(prompt.ids) for prompt in prompts]
    width = left_pad(prompt_ids, tokenizer.pad_id, bucket=config.prompt_bucket)[0].shape[1]
    verifier = VerifierConfig(answer_format=config.answer_format)
    stop_table = None
    if config.stop_at_answer and config.answer_format == "hash":
        stop_table = answer_line_stop_table(tokenizer)
    rng = jax.random.PRNGKey(config.seed)
    records: list[dict[str, Any]] = []
    out_file = None
    if jsonl_path is not None:
        pathlib.Path(jsonl_path).parent.mkdir(parents=True, exist_ok=True)
        out_file = open(jsonl_path, "w")  # noqa: SIM115 - closed below
    bar = tqdm(
        total=len(problems), desc="eval", unit="problem", disable=not progress, file=sys.stdout
    )
    try:
        for start in range(0, len(problems), config.batch_size):
            chunk = list(range(start, min(start + config.batch_size, len(problems))))
            rows = chunk + [chunk[0]] * (config.batch_size - len(chunk))
            tokens, mask = left_pad([prompt_ids[i] for i in rows], tokenizer.pad_id, length=width)
            rng, call_rng = jax.random.split(rng)
            output = sample(
                params, model_config, tokens, mask, call_rng, sample_config, stop_table, mesh
            )
            responses = [tokenizer.decode(ids) for ids in response_token_lists(output)]
            lengths = sharding.to_host(output.lengths)
            for slot, index in enumerate(chunk):
                problem = problems[index]
                group = responses[slot * k : (slot + 1) * k]
                rewards, feedback = verify_batch(group, [problem["answer"]] * k, verifier)
                record = {
                    "id": int(problem["id"]),
                    "family": problem.get("family"),
                    "num_steps": int(problem.get("num_steps", 0)),
                    "question": problem["question"],
                    "answer": problem["answer"],
                    "responses": group,
                    "rewards": [float(r) for r in rewards],
                    "feedback": feedback,
                    "lengths": lengths[slot * k : (slot + 1) * k].tolist(),
                }
                records.append(record)
                if out_file is not None:
                    out_file.write(json.dumps(record) + "\n")
            bar.update(len(chunk))
            running = summarise(records)
            bar.set_postfix(avg=f"{running['avg_at_k']:.3f}", pass_=f"{running['pass_at_k']:.3f}")
    finally:
        bar.close()
        if out_file is not None:
            out_file.close()
    return summarise(records)


def load_problems(task: str, split: str, subset: int | None, **data_overrides: Any) -> list[dict]:
    """Problems of a split in id order (first `subset` only when given)."""
    from pmd_jax.data.pipeline import DataConfig, load_split

    config = DataConfig(task=task, subset=subset, shuffle=False, **data_overrides)
    source = load_split(config, split)
    return [source[i] for i in range(len(source))]


def format_summary(summary: dict[str, Any]) -> str:
    """A small text table of a summary."""
    lines = [
        f"problems: {summary['num_problems']}  k: {summary['k']}  "
        f"avg@k: {summary['avg_at_k']:.3f}  pass@k: {summary['pass_at_k']:.3f}"
    ]
    for key, row in summary["by_steps"].items():
        lines.append(
            f"  {key:<10} n={row['num_problems']:<5} avg@k={row['avg_at_k']:.3f} "
            f"pass@k={row['pass_at_k']:.3f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="name, HF dir or .gguf")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a training run (workdir, checkpoints or step dir): evaluate its student policy",
    )
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--task", default="arith", choices=("arith", "gsm8k"))
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--subset", type=int, default=None, help="first n problems by id")
    parser.add_argument("--k", type=int, default=4, help="samples per problem")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--answer-format", default="hash", choices=("hash", "boxed"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir")
    parser.add_argument("--gsm8k-dir", default=None, help="local GSM8K jsonl dir (offline)")
    parser.add_argument(
        "--out", default=None, help="per-problem JSONL (summary goes to .summary.json)"
    )
    parser.add_argument(
        "--no-stop-at-answer",
        action="store_true",
        help="keep generating after the '#### <answer>' line",
    )
    args = parser.parse_args(argv)

    from pmd_jax.model.registry import load

    started = time.time()
    if args.checkpoint:
        from pmd_jax.trained import load_trained

        model = load_trained(args.checkpoint, args.step)
    else:
        model = load(args.model)
    problems = load_problems(
        args.task, args.split, args.subset, data_dir=args.data_dir, gsm8k_dir=args.gsm8k_dir
    )
    config = EvalConfig(
        num_samples=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        answer_format=args.answer_format,
        seed=args.seed,
        stop_at_answer=not args.no_stop_at_answer,
    )
    summary = evaluate(
        model.params, model.config, model.tokenizer, problems, config, jsonl_path=args.out
    )
    summary.update(
        model=args.checkpoint or args.model,
        task=args.task,
        split=args.split,
        config=dataclasses.asdict(config),
        wall_seconds=time.time() - started,
    )
    print(format_summary(summary))
    if args.out:
        summary_path = pathlib.Path(args.out).with_suffix(".summary.json")
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.out} and {summary_path}")
    return summary


if __name__ == "__main__":
    main()
