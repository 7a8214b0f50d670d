"""Soak: many steps of the tiny run with small memory capacities; is anything growing?

Each step records the process RSS (/proc/self/statm), the number of XLA programs lowered so far
(jax.monitoring's jaxpr->MLIR event: one per executable built in this process, persistent-cache
hits included, in-memory cache hits not) and the memory level sizes against their capacities.
The capacities are small (1 success + 1 failure slot and 1 insight slot per problem, 4 behaviour
slots) so the levels fill early and later steps exercise replacement. The problem set stays
tiny's 64 (so tiny's cached warm start is reused): a problem comes round every 16 steps.

    python -m benchmarks.soak --steps 200            # -> benchmarks/results/soak.{json,png}
    python -m benchmarks.soak --steps 20 --warm-start-steps 0 --out /tmp/soak  # smoke

Run it as its own process: the RSS is this process's.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import resource
import tempfile
import time

import jax

from benchmarks.common import RESULTS_DIR, machine_description
from pmd_jax.config import TrainConfig, apply_overrides, load_experiment

LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
PAGE_MIB = resource.getpagesize() / 2**20
WARMUP_STEPS = 5  # compiles and first allocations: sampler, update, memory ops, first save


def soak_config(steps: int, warm_start_steps: int) -> TrainConfig:
    """experiments/tiny with `steps` steps and small memory capacities."""
    return apply_overrides(
        load_experiment("tiny"),
        [
            f"total_steps={steps}",
            f"model.warm_start_steps={warm_start_steps}",
            "memory.success_slots=1",
            "memory.failure_slots=1",
            "memory.insight_slots=1",
            "memory.behaviour_slots=4",
            "checkpoint.every_steps=50",
            "eval.final=false",
            "progress=false",
            "tensorboard=false",
        ],
    )


def memory_caps(config: TrainConfig) -> dict[str, int]:
    """The most each memory metric can hold: {"memory/experience": P x (S + F), ...}."""
    problems = config.data.arith.train_size if config.data.subset is None else config.data.subset
    memory = config.memory
    return {
        "memory/experience_successes": problems * memory.success_slots,
        "memory/experience_failures": problems * memory.failure_slots,
        "memory/experience": problems * (memory.success_slots + memory.failure_slots),
        "memory/insight": problems * memory.insight_slots,
        "memory/behaviour": memory.behaviour_slots,
    }


def rss_mib() -> float:
    """Resident set size of this process in MiB."""
    resident_pages = int(pathlib.Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * PAGE_MIB


def run_soak(config: TrainConfig, workdir: pathlib.Path) -> dict:
    """Train `config` in a fresh `workdir`; one record per step (rss, compiles, memory sizes)."""
    from pmd_jax.train import train

    if workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(f"{workdir} is not empty: a soak starts fresh (it would resume)")
    lowered: list[str] = []  # function name of every program lowered, in order

    def count(event: str, duration: float, **kwargs) -> None:
        if event == LOWERING_EVENT:
            lowered.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(count)
    records: list[dict] = []
    seen = [0]  # programs lowered up to the previous step
    start = time.perf_counter()

    def on_step(step: int, metrics: dict[str, float]) -> None:
        sizes = {k: metrics[k] for k in memory_caps(config) if k in metrics}
        records.append(
            {
                "step": step,
                "rss_mib": round(rss_mib(), 1),
                "programs_lowered": len(lowered),
                "new_programs": lowered[seen[0] :],
                "step_s": round(metrics.get("time/step", 0.0), 3),
                "elapsed_s": round(time.perf_counter() - start, 1),
                **sizes,
            }
        )
        seen[0] = len(lowered)

    train(config, workdir, on_step=on_step)
    return {"records": records, "caps": memory_caps(config), **summarize(records)}


def summarize(records: list[dict], warmup: int = WARMUP_STEPS) -> dict:
    """RSS and program counts after warm-up; steps at which each level first hit its cap."""
    after = [r for r in records if r["step"] > warmup]
    if not after:
        raise ValueError(f"{len(records)} steps: need more than the {warmup} warm-up steps")
    rss = [r["rss_mib"] for r in after]
    counts = [r["programs_lowered"] for r in records]
    grew = [
        r["step"] for r, c in zip(records[1:], counts, strict=False) if r["programs_lowered"] > c
    ]
    return {
        "warmup_steps": warmup,
        "rss_after_warmup_mib": {"first": rss[0], "max": max(rss), "last": rss[-1]},
        "rss_growth_after_warmup_mib": round(max(rss) - rss[0], 1),
        "programs_lowered_after_warmup": after[-1]["programs_lowered"]
        - after[0]["programs_lowered"],
        "programs_lowered_total": records[-1]["programs_lowered"],
        "last_step_with_new_programs": grew[-1] if grew else records[0]["step"],
    }


def plot(result: dict, path: pathlib.Path) -> None:
    """RSS and programs lowered per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in result["records"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(steps, [r["rss_mib"] for r in result["records"]])
    top.set_ylabel("RSS (MiB)")
    top.set_title(f"soak: tiny, {len(steps)} steps")
    bottom.plot(steps, [r["programs_lowered"] for r in result["records"]], color="tab:orange")
    bottom.set_ylabel("XLA programs lowered")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warm-start-steps", type=int, default=400, help="tiny's default: 400")
    parser.add_argument("--workdir", type=pathlib.Path, default=None, help="default: a temp dir")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS_DIR, help="soak.json/.png")
    args = parser.parse_args()
    config = soak_config(args.steps, args.warm_start_steps)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or pathlib.Path(scratch) / "run"
        result = run_soak(config, workdir)
    result = {"config": dataclasses.asdict(config), "machine": machine_description(), **result}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "soak.png")
    keys = ("rss_after_warmup_mib", "rss_growth_after_warmup_mib", "last_step_with_new_programs")
    print(json.dumps({k: result[k] for k in keys}))


if __name__ == "__main__":
    main()
