"""PMD vs SDPO step time on the arith experiment (SmolLM2-135M-Instruct, CPU), split into phases.

Runs `python -m pmd_jax.train --exp arith` for a few steps with each algorithm (no evaluation, no
progress bar) and reads the per-step phase times the loop logs in metrics.jsonl: time/sample,
time/verify, time/memory (experience inserts, reflection, behaviour evolution; SDPO has none;
split into time/memory_remember, time/memory_reflect, time/memory_evolve),
time/teacher (teacher prompts) and time/update (the jit'd train step). Step 1 compiles, so the
figures are means over steps 2..total_steps; behaviour evolution runs at steps 1 and 3, so its
compile falls in step 1 and the counted steps evolve every second step (arith's own cadence is
every third: the figure overstates evolution's share). `--quick` shrinks the batch and generation
lengths (same model and phases) so the whole benchmark takes a few minutes on 2 cores.
Writes benchmarks/results/step_overhead.json.  Run: `python -m benchmarks.step_overhead [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from benchmarks.common import machine_description, write_result

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PHASES = ("sample", "verify", "memory", "teacher", "update")
MEMORY_PARTS = ("memory_remember", "memory_reflect", "memory_evolve")  # split time/memory
COMMON = (
    "eval.initial=false",
    "eval.final=false",
    "progress=false",
    "tensorboard=false",
    "checkpoint.every_steps=0",  # one save, at the end (not in any phase time)
    "checkpoint.keep_best=0",  # ranks by eval, and there is none
    # Behaviour evolution at steps 1 and 3 (arith: 2, 5, 8): its sampler compiles in step 1, which
    # is not counted, and the counted steps 2-3 hold one evolution (arith: one step in three).
    "behaviours.warmup_steps=1",
    "behaviours.every_steps=2",
)
# Smaller rollouts and generations for a run that fits the `make bench` budget; same phases.
QUICK = (
    "rollout.num_samples=2",
    "rollout.max_new_tokens=32",
    "reflect.max_new_tokens=48",
    "reflect.batch_size=2",
    "behaviours.max_new_tokens=64",
    "teacher.max_prompt_tokens=192",
)


def run_steps(algorithm: str, steps: int, overrides: tuple[str, ...], workdir: pathlib.Path, env):
    """Train `steps` steps of arith with `algorithm` in `workdir` -> (metrics records, seconds)."""
    sets = [f"--set={o}" for o in (f"algorithm={algorithm}", f"total_steps={steps}", *overrides)]
    command = [sys.executable, "-m", "pmd_jax.train", "--exp", "arith", "--workdir", str(workdir)]
    start = time.perf_counter()
    done = subprocess.run(
        [*command, *sets], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"step_overhead: {algorithm} run failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], seconds


def phase_means(records: list[dict], first_step: int) -> dict[str, float]:
    """Mean seconds per phase (and whole step) over records with step >= first_step."""
    kept = [r for r in records if r["step"] >= first_step and "time/step" in r]
    if not kept:
        raise ValueError(f"step_overhead: no step >= {first_step} with time/* metrics")
    keys = [f"time/{phase}" for phase in (*PHASES, *MEMORY_PARTS)] + ["time/step"]
    return {key.split("/")[1]: sum(r.get(key, 0.0) for r in kept) / len(kept) for key in keys}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 rollouts per problem, short gens")
    parser.add_argument("--set", action="append", default=[], help="extra train overrides")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (step 1 compiles and is not counted)")
    overrides = (*COMMON, *(QUICK if args.quick else ()), *args.set)
    result = {
        "benchmark": "step_overhead",
        "experiment": "arith",
        "overrides": list(overrides),
        "steps": args.steps,
        "averaged_steps": list(range(2, args.steps + 1)),
        "machine": machine_description(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        # Both runs compile the same sampler and embedder: share them through JAX's disk cache.
        env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"))
        for algorithm in ("sdpo", "pmd"):
            print(f"[step_overhead] {algorithm}: {args.steps} steps of arith...", flush=True)
            records, seconds = run_steps(algorithm, args.steps, overrides, root / algorithm, env)
            means = phase_means(records, first_step=2)
            result[algorithm] = {"phases_s": means, "run_seconds": seconds}
            print(
                f"[step_overhead] {algorithm}: {means['step']:.1f} s/step ("
                + ", ".join(f"{p} {means[p]:.1f}" for p in (*PHASES, *MEMORY_PARTS))
                + f"); whole run {seconds:.0f} s",
                flush=True,
            )
    result["pmd_over_sdpo"] = result["pmd"]["phases_s"]["step"] / result["sdpo"]["phases_s"]["step"]
    print(f"[step_overhead] PMD / SDPO step time: {result['pmd_over_sdpo']:.2f}")
    print(f"[step_overhead] wrote {write_result('step_overhead', result)}")
    return result


if __name__ == "__main__":
    main()
