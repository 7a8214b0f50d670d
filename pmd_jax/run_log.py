"""What a run writes and says besides checkpoints: the metrics log (metrics.jsonl, one JSON object
per step, and TensorBoard), the expected-cost line printed at start, the summary printed at the
end, and the memory report next to the metrics.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from pmd_jax.config import TrainConfig
from pmd_jax.sampling import bucket_length


class NullWriter:
    """What processes other than 0 of a multi-host run write: nothing."""

    def write(self, step: int, metrics: dict[str, float]) -> None:
        del step, metrics

    def close(self) -> None:
        pass


class MetricsWriter:
    """metrics.jsonl (+ TensorBoard). On resume, lines after the restored step are dropped."""

    def __init__(self, workdir: pathlib.Path, resume_step: int, tensorboard: bool):
        self.path = workdir / "metrics.jsonl"
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))
        self.file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        self.tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in sorted(metrics.items())}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(key, float(value), step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


# Sustained float32 rates measured on the 2-core development machine (SmolLM2-135M): batched
# decode ~30 GFLOP/s (memory bound), forward + backward ~60 GFLOP/s. Only for the CPU estimate.
CPU_DECODE_FLOPS = 30e9
CPU_TRAIN_FLOPS = 60e9


def expected_cost(
    config: TrainConfig, params, prompt_width: int, teacher_width: int, num_questions: int
) -> str:
    """One line on the work of a step (and, on CPU, how long it will take roughly), printed
    before setup's one heavy part: embedding every train question for the memory keys."""
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    rows = config.data.batch_size * config.rollout.num_samples
    new = config.rollout.max_new_tokens
    decode = 2 * num_params * rows * new
    train = 6 * num_params * rows * (prompt_width + new)
    if config.algorithm != "grpo":
        train += 2 * num_params * rows * (teacher_width + new)  # teacher forward
    if config.algorithm == "pmd":  # reflection: one request per problem, in sampler batches
        batch = config.reflect.batch_size
        requests = -(-config.data.batch_size // batch) * batch
        decode += 2 * num_params * requests * config.reflect.max_new_tokens
    text = (
        f"{config.name}: {num_params / 1e6:.0f}M params, {rows} rollouts x <= {new} new tokens "
        f"per step, {config.total_steps} steps on {jax.device_count()} {jax.default_backend()} "
        f"device(s)"
    )
    if jax.default_backend() != "cpu":
        return text
    seconds = decode / CPU_DECODE_FLOPS + train / CPU_TRAIN_FLOPS
    # Questions are embedded alone (no chat template), cut to memory.response_len tokens.
    embed_width = min(prompt_width, bucket_length(config.memory.response_len))
    embed = 2 * num_params * num_questions * embed_width / CPU_TRAIN_FLOPS
    return (
        f"{text}. On this CPU expect roughly {seconds / 60:.1f} min per step (sampling, "
        f"reflection decode, update; behaviour evolution and evals extra: "
        f"~{seconds * config.total_steps / 3600:.1f} h for the steps), after "
        f"~{embed / 60:.0f} min embedding the {num_questions} train questions: CPU runs are "
        f"for smoke tests; use an accelerator for real runs (README: accelerators)"
    )


def write_memory_report(workdir: pathlib.Path) -> None:
    """The memory report of the newest snapshot, next to the run's metrics."""
    from pmd_jax.memory.report import find_memory_json, write_report

    memory_path = find_memory_json(workdir)
    write_report(memory_path, workdir / "report.html", workdir / "metrics.jsonl")


def summary(workdir: pathlib.Path, config: TrainConfig) -> str:
    """What a finished run printed last: held-out accuracy at the start and the end, and paths."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/avg_at_k" in r]
    schedule = config.eval
    how = f"avg@{schedule.num_samples} at T={schedule.temperature} top-p {schedule.top_p}"
    if schedule.temperature == 0:
        how = "greedy"
    lines = [f"run {config.name} ({config.algorithm}) finished: {workdir}"]
    if evals:
        lines.append(
            f"held-out memory-free accuracy ({config.data.task} {schedule.split}, "
            f"{int(evals[-1].get('eval/num_problems', 0))} problems, {how}):"
        )
        for record in evals:
            label = "base   " if record["step"] == 0 else f"step {record['step']:<3d}"
            lines.append(f"  {label} {100 * record['eval/avg_at_k']:5.1f}%")
        if len(evals) > 1 and evals[0]["step"] == 0:
            lines.extend(_change_lines(workdir, evals[-1]["step"]))
    lines.append(
        f"metrics: {workdir / 'metrics.jsonl'} (TensorBoard: {workdir / 'tb'}), "
        f"checkpoints: {workdir / 'checkpoints'}"
    )
    if (workdir / "report.html").exists():
        lines.append(f"memory report: {workdir / 'report.html'}")
    return "\n".join(lines)


# Above this half-width (points) the summary says the change cannot be told from noise.
NOISE_HALF_WIDTH = 6.0


def _change_lines(workdir: pathlib.Path, step: int) -> list[str]:
    """The base -> `step` change with its paired 95% interval, also written to summary.json."""
    from pmd_jax.evaluate import paired_change, read_records

    base_path, final_path = workdir / "eval" / "step_0.jsonl", workdir / "eval" / f"step_{step}.jsonl"
    if not (base_path.exists() and final_path.exists()):
        return [f"  change: no per-problem records under {workdir / 'eval'}"]
    change = paired_change(read_records(base_path), read_records(final_path))
    change["step"] = step
    (workdir / "summary.json").write_text(json.dumps(change, indent=2) + "\n")
    delta, low, high = (100 * change[key] for key in ("change", "low", "high"))
    lines = [
        f"  change {delta:+5.1f} points (base -> step {step}), 95% interval [{low:+.1f}, "
        f"{high:+.1f}] (paired bootstrap over {change['num_problems']} problems: "
        f"{change['up']} up, {change['down']} down)"
    ]
    half_width = (high - low) / 2
    if low <= 0 <= high:
        lines.append("  the interval holds 0: this change is within noise")
    if half_width > NOISE_HALF_WIDTH:
        lines.append(
            f"  the interval is +-{half_width:.1f} points, wider than +-{NOISE_HALF_WIDTH:.0f}: "
            f"evaluate more problems (--set eval.num_problems=N) to resolve a change this size"
        )
    return lines
