"""pmd_jax/run_log.py: the metrics log across a resume, the start line's cost estimate, and the
end-of-run summary."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from experiments.tiny import CONFIG as TINY
from pmd_jax.config import EvalSchedule
from pmd_jax.run_log import MetricsWriter, expected_cost, summary


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_log_keeps_steps_up_to_the_restored_one_and_drops_cut_lines(tmp_path):
    writer = MetricsWriter(tmp_path, resume_step=0, tensorboard=False)
    for step in (1, 2, 3):
        writer.write(step, {"train/loss": np.float32(step / 4), "reward/mean": step})
    writer.close()
    assert _lines(tmp_path / "metrics.jsonl")[0] == {
        "step": 1,
        "reward/mean": 1.0,
        "train/loss": 0.25,
    }
    with open(tmp_path / "metrics.jsonl", "a") as out:
        out.write('{"step": 4, "train/lo')  # a line cut by a crash
    resumed = MetricsWriter(tmp_path, resume_step=2, tensorboard=False)  # checkpoint of step 2
    resumed.write(3, {"train/loss": 9.0})
    resumed.close()
    assert [(r["step"], r["train/loss"]) for r in _lines(tmp_path / "metrics.jsonl")] == [
        (1, 0.25),
        (2, 0.5),
        (3, 9.0),
    ]
    assert not (tmp_path / "tb").exists()


def test_summary_reports_base_and_final_held_out_accuracy(tmp_path):
    records = [
        {"step": 0, "eval/avg_at_k": 0.265625, "eval/num_problems": 64.0},
        {"step": 1, "reward/mean": 0.25},
        {"step": 8, "eval/avg_at_k": 0.25, "eval/num_problems": 64.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = dataclasses.replace(
        TINY, name="arith", eval=EvalSchedule(temperature=0.0, num_samples=1)
    )
    assert summary(tmp_path, config).splitlines()[:5] == [
        f"run arith (pmd) finished: {tmp_path}",
        "held-out memory-free accuracy (arith test, 64 problems, greedy):",
        "  base     26.6%",
        "  step 8    25.0%",
        "  change  -1.6 points (base -> step 8)",
    ]


def _minutes_per_step(config) -> float:
    params = {"w": np.zeros((200_000_000,), np.float32)}
    line = expected_cost(config, params, prompt_width=64, teacher_width=128, num_questions=10)
    assert line.startswith(f"{config.name}: 200M params, ")
    return float(re.search(r"roughly ([0-9.]+) min per step", line).group(1))


def test_cost_estimate_grows_with_the_work_of_a_step():
    big = dataclasses.replace(TINY, data=dataclasses.replace(TINY.data, batch_size=64))
    pmd = _minutes_per_step(big)
    sdpo = _minutes_per_step(dataclasses.replace(big, algorithm="sdpo"))
    grpo = _minutes_per_step(dataclasses.replace(big, algorithm="grpo"))
    assert pmd > sdpo > grpo > 5  # reflection decode, then the teacher forward, on top
    doubled = dataclasses.replace(
        big, rollout=dataclasses.replace(big.rollout, num_samples=2 * big.rollout.num_samples)
    )
    assert _minutes_per_step(dataclasses.replace(doubled, algorithm="grpo")) == pytest.approx(
        2 * grpo, rel=0.02
    )
