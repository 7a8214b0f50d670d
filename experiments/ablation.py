"""The ablation study of the paper in miniature: every run type on the arith curriculum with
SmolLM2-135M, the same budget and seeds, then a table and curves of held-out accuracy.

    make ablation                                  # all run types x seeds 0,1,2 (hours on a CPU)
    make ablation ARGS="--seeds 0 --steps 6"       # a smaller budget
    make ablation ARGS="--report-only"             # table + curves from the runs already done

Run types (METHOD section 7): base (the starting model: every run's step-0 evaluation), GRPO,
SDPO, PMD, PMD-transient (memory cleared every step), evolving memory + frozen policy (evaluated
with and without retrieved behaviours in the prompt), frozen memory + evolving policy (the memory
the frozen-policy run built with the same seed, frozen while the policy trains), and PMD's memory
granularity (exp, exp+ins; the full exp+ins+beh is PMD itself).

Each run is `python -m pmd_jax.train --exp arith` in its own directory `WORKDIR/TYPE/seedS`, so an
interrupted study resumes: finished runs are skipped, unfinished ones resume from their last
checkpoint. Each start or resume appends the code's commit to the run's code_version.txt and the
table names them. Writes RESULTS/table.md, RESULTS/curves.png and RESULTS/runs.json, the record
of every run reported so far (curves, budget, commits, wall time): with --merge-recorded the
table also counts recorded runs of the same budget, so a study can be spread over machines
whose workdirs do not survive (a run finished in --workdir replaces its record).

    make ablation ARGS="--seeds 3"                                  # seed 3 on this machine
    make ablation ARGS="--seeds 0,1,2,3 --merge-recorded --report-only"  # + recorded seeds 0-2
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import hashlib
import json
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "arith"
CODE_PATHS = ("pmd_jax", "kernels", "experiments/arith.py", "experiments/ablation.py", "setup.py")
EXPERIMENT = "arith"
RECORDS_FORMAT = 2  # of RESULTS/runs.json: {"format": 2, "runs": {"TYPE/seedS": record}}

# Run type -> overrides on top of experiments/arith.py ({memory} = the final memory of the frozen
# policy run of the same seed: METHOD section 7 builds the frozen memory with the frozen policy).
RUN_TYPES: dict[str, tuple[str, ...]] = {
    "pmd": (),
    "sdpo": ("algorithm=sdpo",),
    "grpo": ("algorithm=grpo",),
    "pmd_transient": ("ablation=pmd_transient",),
    "frozen_memory": ("ablation=frozen_memory", "frozen_memory_path={memory}"),
    "frozen_policy": ("ablation=frozen_policy", "eval.with_memory=true"),
    "pmd_exp": ("granularity=exp",),
    "pmd_exp_ins": ("granularity=exp+ins",),
}
LABELS = {
    "base": "Base (no training)",
    "grpo": "GRPO",
    "sdpo": "SDPO",
    "pmd": "PMD (exp+ins+beh)",
    "pmd_transient": "PMD-transient",
    "frozen_memory": "Frozen memory + evolving policy",
    "frozen_policy": "Evolving memory + frozen policy",
    "pmd_exp": "PMD granularity: exp",
    "pmd_exp_ins": "PMD granularity: exp+ins",
}


@dataclasses.dataclass(frozen=True)
class Study:
    """What the study runs: which run types and seeds, with what budget, where."""

    run_types: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    eval_every: int
    workdir: pathlib.Path
    extra: tuple[str, ...] = ()  # more --set overrides for every run
    # A finished run's orbax checkpoints (params, Adam moments, teacher: ~2.2 GB each at 135M,
    # up to three a run) are dropped unless kept: the table needs only metrics and memory JSON.
    keep_checkpoints: bool = False

    def run_dir(self, run_type: str, seed: int) -> pathlib.Path:
        return self.workdir / run_type / f"seed{seed}"


def overrides(study: Study, run_type: str, seed: int) -> list[str]:
    """The --set overrides of one run."""
    memory = study.run_dir("frozen_policy", seed) / "memory" / f"memory_step_{study.steps}.json"
    items = [
        f"seed={seed}",
        f"total_steps={study.steps}",
        f"eval.every_steps={study.eval_every}",
        *(item.format(memory=memory) for item in RUN_TYPES[run_type]),
        *study.extra,
    ]
    return items


def read_metrics(run_dir: pathlib.Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash; the resumed run rewrites it
    return records


def is_finished(run_dir: pathlib.Path, steps: int) -> bool:
    return any(r["step"] == steps and "eval/avg_at_k" in r for r in read_metrics(run_dir))


def code_version(root: pathlib.Path = ROOT) -> str:
    """The short commit of `root`, "+changes" when tracked code differs from it; "unknown"
    outside a git checkout."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)

    try:
        head = git("rev-parse", "--short", "HEAD")
        changes = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    except OSError:  # no git
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+changes" if changes.stdout.strip() else "")


def run_versions(run_dir: pathlib.Path) -> list[str]:
    """The code versions a run was started (or resumed) with, in order; [] if not recorded."""
    path = run_dir / "code_version.txt"
    return path.read_text().split() if path.exists() else []


def _wall_seconds(run_dir: pathlib.Path) -> float:
    path = run_dir / "wall_seconds.json"
    return json.loads(path.read_text())["seconds"] if path.exists() else 0.0


def run_one(study: Study, run_type: str, seed: int, log) -> None:
    """Train (or resume) one run in a subprocess; its output goes to run_dir/train.log."""
    run_dir = study.run_dir(run_type, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pmd_jax.train",
        "--exp",
        EXPERIMENT,
        "--workdir",
        str(run_dir),
    ]
    for item in overrides(study, run_type, seed):
        command += ["--set", item]
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(study.workdir / "jax_cache"))
    with open(run_dir / "code_version.txt", "a") as out:  # one line per start or resume
        out.write(code_version() + "\n")
    start = time.perf_counter()
    with open(run_dir / "train.log", "a") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    seconds = _wall_seconds(run_dir) + time.perf_counter() - start
    (run_dir / "wall_seconds.json").write_text(json.dumps({"seconds": seconds}) + "\n")
    if code != 0:
        raise RuntimeError(f"{run_type} seed {seed} failed (exit {code}); see {run_dir}/train.log")
    log(f"  {run_type} seed {seed}: done in {seconds / 60:.1f} min")


def run_study(study: Study, log=print) -> None:
    """Every (seed, run type) not finished yet; PMD first, frozen memory after the frozen-policy
    run whose memory it reads."""
    order = sorted(study.run_types, key=lambda t: (t == "frozen_memory", t != "pmd"))
    todo = [
        (s, t)
        for s in study.seeds
        for t in order
        if not is_finished(study.run_dir(t, s), study.steps)
    ]
    log(f"ablation: {len(todo)} runs to do in {study.workdir} ({study.steps} steps each)")
    start = time.perf_counter()
    for done, (seed, run_type) in enumerate(todo):
        source = study.run_dir("frozen_policy", seed)
        if run_type == "frozen_memory" and not is_finished(source, study.steps):
            raise RuntimeError(f"frozen_memory seed {seed} needs the finished frozen_policy run")
        log(f"[{done + 1}/{len(todo)}] {run_type} seed {seed} ...")
        run_one(study, run_type, seed, log)
        run_dir = study.run_dir(run_type, seed)
        finished = is_finished(run_dir, study.steps)
        if finished and not study.keep_checkpoints and (run_dir / "checkpoints").exists():
            shutil.rmtree(run_dir / "checkpoints")
        elapsed = time.perf_counter() - start
        eta = elapsed / (done + 1) * (len(todo) - done - 1)
        log(f"  elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min")


def _evals(records: list[dict], key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records if key in r}


def run_record(study: Study, run_type: str, seed: int) -> dict | None:
    """What the results keep of one finished run (None if it is not finished): its held-out
    curve(s), the budget it ran with, the code versions it ran and its wall time."""
    run_dir = study.run_dir(run_type, seed)
    records = read_metrics(run_dir)
    evals = _evals(records, "eval/avg_at_k")
    if study.steps not in evals:
        return None
    record = {
        "run_type": run_type,
        "seed": seed,
        "budget": _budget(study),
        "evals": evals,
        "code": list(dict.fromkeys(run_versions(run_dir))),
        "wall_seconds": _wall_seconds(run_dir) or None,
    }
    if run_type == "frozen_policy":
        record["memory_evals"] = _evals(records, "eval/memory_avg_at_k")
    return record


def _budget(study: Study) -> dict:
    """What must match for runs to share a table: steps, eval cadence, extra overrides and the
    default run's config."""
    return {
        "steps": study.steps,
        "eval_every": study.eval_every,
        "extra": list(study.extra),
        "experiment": experiment_digest(),
    }


@functools.cache
def experiment_digest() -> str:
    """12 hex digits of experiments/arith.py's config as this code loads it. A change to the
    default run (the loss temperature on 2026-12-06, a new config field) gives later runs another
    budget, so --merge-recorded never tables them with runs of the old config; records made
    before the digest existed have none and join no new study."""
    from pmd_jax.config import load_experiment, to_dict

    text = json.dumps(to_dict(load_experiment(EXPERIMENT)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def workdir_records(study: Study) -> dict[str, dict]:
    """'TYPE/seedS' -> record of every finished run of the study's workdir."""
    records = {}
    for run_type in study.run_types:
        for seed in study.seeds:
            record = run_record(study, run_type, seed)
            if record is not None:
                records[f"{run_type}/seed{seed}"] = record
    return records


def load_records(path: pathlib.Path) -> dict[str, dict]:
    """The runs recorded in a results runs.json ({} when there is none)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if data.get("format") != RECORDS_FORMAT:
        raise SystemExit(
            f"{path}: format {data.get('format')!r} is not {RECORDS_FORMAT}; rebuild it from "
            "run directories with --report-only"
        )
    for key, record in data["runs"].items():
        for name in ("evals", "memory_evals"):
            if name in record:
                record[name] = {int(step): value for step, value in record[name].items()}
        if key != f"{record['run_type']}/seed{record['seed']}":
            raise SystemExit(
                f"{path}: run {key!r} records {record['run_type']} seed {record['seed']}"
            )
    return data["runs"]


def study_records(study: Study, recorded: dict[str, dict]) -> dict[str, dict]:
    """The study's runs: recorded ones of its run types, seeds and budget (runs made elsewhere,
    e.g. on another machine), then its workdir's finished runs, which replace a recorded one."""
    budget = _budget(study)
    kept = {
        key: record
        for key, record in recorded.items()
        if record["run_type"] in study.run_types
        and record["seed"] in study.seeds
        and record["budget"] == budget
    }
    return {**kept, **workdir_records(study)}


def curves_of(records: dict[str, dict]) -> dict[str, dict[int, dict[int, float]]]:
    """run type -> seed -> {step: held-out accuracy}; plus "base" (step 0 of every run) and
    "frozen_policy+memory" (the frozen policy evaluated with behaviours in its prompt)."""
    curves: dict[str, dict[int, dict[int, float]]] = {}
    for record in sorted(records.values(), key=lambda r: (r["seed"], r["run_type"])):
        run_type, seed, evals = record["run_type"], record["seed"], record["evals"]
        curves.setdefault(run_type, {})[seed] = evals
        if 0 in evals:
            curves.setdefault("base", {}).setdefault(seed, {0: evals[0]})
        if run_type == "frozen_policy":
            curves.setdefault("frozen_policy+memory", {})[seed] = record.get("memory_evals", {})
    return curves


def collect(study: Study) -> dict[str, dict[int, dict[int, float]]]:
    """The curves of the study's finished runs in its workdir (see `curves_of`)."""
    return curves_of(workdir_records(study))


def _mean_std(values: Sequence[float]) -> str:
    values = 100 * np.asarray(values, float)
    return f"{values.mean():.1f} +- {values.std():.1f}"


def _per_seed(finals: dict[int, float]) -> str:
    """'28.1, 25.0 (seeds 0, 1)': the final accuracy % of each seed, in seed order."""
    seeds = sorted(finals)
    values = ", ".join(f"{100 * finals[s]:.1f}" for s in seeds)
    return f"{values} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"


def table_rows(curves: dict, steps: int) -> list[tuple[str, int, str, str, str]]:
    """(label, seeds, final mean +- std, best mean +- std, final per seed) per run type, in
    LABELS order."""
    rows = []
    labels = {**LABELS, "frozen_policy+memory": "Evolving memory + frozen policy, memory in prompt"}
    for run_type, label in labels.items():
        seeds = curves.get(run_type, {})
        if not seeds:
            continue
        finals = {seed: evals[max(evals)] for seed, evals in seeds.items()}
        trained = [[v for s, v in evals.items() if s > 0] for evals in seeds.values()]
        best = _mean_std([max(v) for v in trained]) if all(trained) else "-"
        rows.append((label, len(seeds), _mean_std(list(finals.values())), best, _per_seed(finals)))
    return rows


def write_table(study: Study, records: dict[str, dict], path: pathlib.Path, command: str) -> None:
    curves = curves_of(records)
    rows = table_rows(curves, study.steps)
    lines = [
        "# Ablation on the arith curriculum (SmolLM2-135M-Instruct, CPU)",
        "",
        f"Command: `{command}`  ",
        f"Budget per run: {study.steps} steps of experiments/arith.py (4 problems x 4 rollouts "
        f"at T=0.6); held-out memory-free accuracy, greedy, on the arith test problems the "
        f"experiment evaluates, every {study.eval_every} steps.  ",
        f"Seeds asked: {', '.join(map(str, study.seeds))}; the seeds column says how many "
        f"finished.  ",
        f"Code: {_versions_line(records)}.  ",
        f"Wall time of the runs (sum): {_wall_line(records)} on {_machine()}; "
        f"written {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "| Run type | Seeds | Final accuracy % (mean +- std) | Best eval after step 0 % "
        "| Final accuracy % per seed |",
        "|---|---|---|---|---|",
        *(f"| {label} | {n} | {final} | {best} | {each} |" for label, n, final, best, each in rows),
        "",
        "Base = every run's step-0 evaluation (greedy, so identical across seeds).",
    ]
    missing = [t for t in study.run_types if t not in curves]
    if missing:
        lines.append(f"Asked but not finished (no row): {', '.join(missing)}.")
    path.write_text("\n".join(lines) + "\n")


def _versions_line(records: dict[str, dict]) -> str:
    """Which commits the finished runs were started or resumed with."""
    runs: dict[str, list[str]] = {}
    for key, record in sorted(records.items(), key=lambda kv: (kv[1]["seed"], kv[0])):
        for version in record["code"] or ["not recorded"]:
            runs.setdefault(version, []).append(key)
    if len(runs) == 1:
        return f"{next(iter(runs))} (every finished run)"
    return "; ".join(f"{version} ({', '.join(names)})" for version, names in runs.items())


def _wall_line(records: dict[str, dict]) -> str:
    walls = [r["wall_seconds"] for r in records.values() if r["wall_seconds"]]
    line = f"{sum(walls) / 3600:.2f} h"
    if len(walls) < len(records):
        line += f" (not recorded for {len(records) - len(walls)} of the {len(records)} runs)"
    return line


def _machine() -> str:
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}"


def plot_curves(curves: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for run_type in [t for t in LABELS if t in curves and t != "base"]:
        seeds = curves[run_type]
        steps = sorted(set.intersection(*(set(e) for e in seeds.values())))
        values = 100 * np.array([[e[s] for s in steps] for e in seeds.values()])
        mean, std = values.mean(0), values.std(0)
        (line,) = axes.plot(steps, mean, marker="o", label=f"{LABELS[run_type]} (n={len(seeds)})")
        axes.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    axes.set_xlabel("training step")
    axes.set_ylabel("held-out accuracy % (greedy, memory-free)")
    axes.set_title("arith curriculum, SmolLM2-135M-Instruct")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(study: Study, results: pathlib.Path, command: str, merge_recorded: bool = False) -> None:
    """table.md and curves.png of the study's finished runs in `results`, and runs.json, the
    record of every run reported there so far (a workdir's run replaces its earlier record).
    merge_recorded: the table also counts recorded runs of the study's types, seeds and budget
    (e.g. made in another workdir or on another machine)."""
    recorded = load_records(results / "runs.json")
    records = study_records(study, recorded if merge_recorded else {})
    if not records:
        raise SystemExit(f"no finished runs under {study.workdir}: nothing to report")
    results.mkdir(parents=True, exist_ok=True)
    write_table(study, records, results / "table.md", command)
    plot_curves(curves_of(records), results / "curves.png")
    kept = {**recorded, **workdir_records(study)}
    ordered = dict(sorted(kept.items(), key=lambda kv: (kv[1]["seed"], kv[0])))
    data = {"format": RECORDS_FORMAT, "runs": ordered}
    (results / "runs.json").write_text(json.dumps(data, indent=1) + "\n")
    print((results / "table.md").read_text())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--runs", default=",".join(RUN_TYPES), help="comma-separated run types")
    parser.add_argument("--steps", type=int, default=None, help="default: the experiment's")
    parser.add_argument("--eval-every", type=int, default=None, help="default: steps // 2")
    parser.add_argument("--workdir", type=pathlib.Path, default=ROOT / "workdir" / "ablation")
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--set", action="append", default=[], help="override for every run")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each finished run's checkpoints (~6 GB a run at 135M; by default a finished "
        "run keeps metrics, evals and memory snapshots only; unfinished runs always keep theirs)",
    )
    parser.add_argument(
        "--merge-recorded",
        action="store_true",
        help="also count the runs recorded in RESULTS/runs.json (made in another workdir or on "
        "another machine) that have this budget and are among --seeds and --runs; a run finished "
        "in --workdir replaces its record",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from pmd_jax.config import apply_overrides, load_experiment

    run_types = tuple(t for t in args.runs.split(",") if t)
    unknown = [t for t in run_types if t not in RUN_TYPES]
    if unknown:
        raise SystemExit(f"--runs: unknown run types {unknown}; known: {list(RUN_TYPES)}")
    if "frozen_memory" in run_types and "frozen_policy" not in run_types:
        raise SystemExit("--runs: frozen_memory needs frozen_policy (it freezes that run's memory)")
    config = apply_overrides(load_experiment(EXPERIMENT), args.set)  # fail early on bad --set
    steps = args.steps or config.total_steps
    study = Study(
        run_types=run_types,
        seeds=tuple(int(s) for s in args.seeds.split(",") if s),
        steps=steps,
        eval_every=args.eval_every or max(1, steps // 2),
        workdir=args.workdir.resolve(),
        extra=tuple(args.set),
        keep_checkpoints=args.keep_checkpoints,
    )
    asked = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"]
    command = "make ablation" + (f' ARGS="{shlex.join(asked)}"' if asked else "")
    if args.report_only:
        command += " (this table rebuilt from its finished runs with --report-only)"
    if not args.report_only:
        run_study(study)
    report(study, args.results, command, merge_recorded=args.merge_recorded)


if __name__ == "__main__":
    main()
