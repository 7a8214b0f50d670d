"""Where a reflection call's time goes, on the default run's reflection settings (experiments/arith.py).

Builds the reflection requests of the stored rollout groups in benchmarks/results/reflect.json
(written by benchmarks/reflect_parse_rate.py: 16 arith problems x 4 SmolLM2-135M rollouts), takes
the first `--batch` of them (the default run reflects on 4 problems a step), and times, each after
a warm-up call:
- prefill: the Transformer forward of the left-padded prompts at the fixed width
  (ReflectConfig.prompt_width, 768) and at narrower widths that still hold them;
- the whole reflection sample call (prefill + decode loop up to max_new_tokens), and how many
  tokens each row generated (the loop runs until every row has stopped); once with the sampler's
  windowed prefill (SampleConfig.prefill_bucket, the default) and once prefilling the whole
  fixed width (prefill_bucket=0, the sampler before the window), same rng, same tokens;
- one decode step at that batch, from sample calls of two lengths (difference / extra tokens),
  next to one pass that reads every weight once (a sum over all parameters): a decode step that
  costs about that pass is bound by reading the weights, not by the rows.
Writes benchmarks/results/reflect_cost.json.  Run: `python -m benchmarks.reflect_cost` (~3 min quiet).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import RESULTS_DIR, best_time, machine_description, write_result
from experiments.arith import CONFIG
from pmd_jax.memory.reflect import Attempt, build_reflection_requests, sample_config
from pmd_jax.model import load
from pmd_jax.model.transformer import Transformer, positions_from_mask
from pmd_jax.sampling import SampleConfig, left_pad, sample


def timed(fn, *args) -> tuple[float, object]:
    """(seconds of one call of `fn(*args)` after a warm-up call, the warm-up's output)."""
    output = jax.block_until_ready(fn(*args))  # compiles
    seconds, _ = best_time(lambda: jax.block_until_ready(fn(*args)), repeats=1)
    return seconds, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=CONFIG.reflect.batch_size)
    parser.add_argument("--widths", type=int, nargs="+", default=[768, 640, 512, 384])
    args = parser.parse_args()
    stored = json.loads((RESULTS_DIR / "reflect.json").read_text())
    groups = [[Attempt(*attempt) for attempt in group] for group in stored["groups"]]
    model = load("smollm2-135m-instruct")
    tokenizer, config = model.tokenizer, CONFIG.reflect
    requests = build_reflection_requests(
        tokenizer,
        stored["questions"],
        groups,
        config,
        success_reward=CONFIG.memory.success_reward,
    )
    prompts = [list(r.prompt_ids) for r in requests[: args.batch]]
    longest = max(len(p) for p in prompts)
    print(f"[reflect_cost] prompt tokens {sorted(len(r.prompt_ids) for r in requests)}")

    forward = jax.jit(
        lambda params, tokens, mask: Transformer(model.config).apply(
            {"params": params}, tokens, positions_from_mask(mask), mask
        )
    )
    prefill = {}
    for width in (w for w in args.widths if w >= longest):
        tokens, mask = left_pad(prompts, tokenizer.pad_id, length=width)
        prefill[width], _ = timed(forward, model.params, tokens, mask)
        print(f"[reflect_cost] prefill at width {width}: {prefill[width]:.2f} s")

    tokens, mask = left_pad(prompts, tokenizer.pad_id, length=config.prompt_width)
    rng = jax.random.PRNGKey(0)
    reflect_config = sample_config(tokenizer, config)
    call = lambda c: sample(model.params, model.config, tokens, mask, rng, c)  # noqa: E731
    # Windowed vs whole-width prefill, compiled first, then timed alternately (best of 2 each).
    configs = (reflect_config, dataclasses.replace(reflect_config, prefill_bucket=0))
    outputs = [jax.block_until_ready(call(c)) for c in configs]
    seconds = [math.inf, math.inf]
    for _ in range(2):
        for index, c in enumerate(configs):
            start = time.perf_counter()
            jax.block_until_ready(call(c))
            seconds[index] = min(seconds[index], time.perf_counter() - start)
    (whole, whole_width), (output, reference) = seconds, outputs
    lengths = np.asarray(output.lengths).tolist()
    print(f"[reflect_cost] reflection call {whole:.2f} s, generated tokens per row {lengths}")
    same_tokens = bool(np.array_equal(np.asarray(reference.tokens), np.asarray(output.tokens)))
    print(
        f"[reflect_cost] the same call prefilling the whole width {config.prompt_width}: "
        f"{whole_width:.2f} s ({whole_width / whole:.2f}x the windowed call; same tokens: "
        f"{same_tokens})"
    )

    # No stop ids: every row decodes exactly max_new_tokens, so the difference is decode only.
    short, long = 8, 40
    fixed = lambda n: SampleConfig(max_new_tokens=n, temperature=1.0)  # noqa: E731
    decode_step = (timed(call, fixed(long))[0] - timed(call, fixed(short))[0]) / (long - short)
    leaves = jax.tree_util.tree_leaves(model.params)
    weight_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)
    read_all = jax.jit(lambda params: sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(params)))
    read_seconds, _ = timed(read_all, model.params)
    print(
        f"[reflect_cost] decode step at batch {len(prompts)}: {decode_step * 1e3:.1f} ms; one pass "
        f"over the {weight_bytes / 2**20:.0f} MiB of weights: {read_seconds * 1e3:.1f} ms"
    )
    result = {
        "benchmark": "reflect_cost",
        "batch": len(prompts),
        "prompt_width": config.prompt_width,
        "max_new_tokens": config.max_new_tokens,
        "prompt_tokens": [len(p) for p in prompts],
        "prefill_seconds_by_width": prefill,
        "reflection_call_seconds": whole,
        "prefill_bucket": reflect_config.prefill_bucket,
        "reflection_call_seconds_whole_width_prefill": whole_width,
        "whole_width_tokens_equal": same_tokens,
        "generated_tokens": lengths,
        "decode_step_seconds": decode_step,
        "weight_bytes": weight_bytes,
        "read_all_weights_seconds": read_seconds,
        "machine": machine_description(),
    }
    print(f"[reflect_cost] wrote {write_result('reflect_cost', result)}")


if __name__ == "__main__":
    main()
