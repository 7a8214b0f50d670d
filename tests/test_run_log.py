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
from pmd_jax.evaluate import paired_change
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


def _eval_records(path, scores: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"id": i, "rewards": [s]}) + "\n" for i, s in enumerate(scores))
    )


def test_summary_reports_the_change_with_its_paired_interval(tmp_path):
    base = [1.0] * 17 + [0.0] * 47  # 26.6% of 64
    final = list(base)
    final[0] = 0.0  # one problem lost
    records = [
        {"step": 0, "eval/avg_at_k": float(np.mean(base)), "eval/num_problems": 64.0},
        {"step": 1, "reward/mean": 0.25},
        {"step": 8, "eval/avg_at_k": float(np.mean(final)), "eval/num_problems": 64.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    _eval_records(tmp_path / "eval" / "step_0.jsonl", base)
    _eval_records(tmp_path / "eval" / "step_8.jsonl", final)
    config = dataclasses.replace(
        TINY, name="arith", eval=EvalSchedule(temperature=0.0, num_samples=1)
    )
    lines = summary(tmp_path, config).splitlines()
    assert lines[:4] == [
        f"run arith (pmd) finished: {tmp_path}",
        "held-out memory-free accuracy (arith test, 64 problems, greedy):",
        "  base     26.6%",
        "  step 8    25.0%",
    ]
    # One problem of 64 down, none up: every bootstrap mean is -k/64 for k in 0..64.
    assert re.fullmatch(
        r"  change  -1\.6 points \(base -> step 8\), 95% interval \[-4\.7, \+0\.0\] "
        r"\(paired bootstrap over 64 problems: 0 up, 1 down\)",
        lines[4],
    ), lines[4]
    assert lines[5] == "  the interval holds 0: this change is within noise"
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert (saved["num_problems"], saved["up"], saved["down"], saved["step"]) == (64, 0, 1, 8)


def test_paired_change_interval_matches_the_normal_approximation_and_pairs_by_id():
    rng = np.random.default_rng(3)
    n = 400
    base = rng.random(n) < 0.3
    final = np.where(rng.random(n) < 0.2, ~base, base)  # 20% of problems flip
    as_records = lambda scores, order: [
        {"id": int(i), "rewards": [float(scores[i])]} for i in order
    ]
    change = paired_change(as_records(base, range(n)), as_records(final, rng.permutation(n)))
    diff = final.astype(float) - base.astype(float)
    assert change["change"] == pytest.approx(diff.mean(), abs=1e-12)
    half = 1.96 * diff.std(ddof=1) / np.sqrt(n)
    assert change["low"] == pytest.approx(diff.mean() - half, abs=0.01)
    assert change["high"] == pytest.approx(diff.mean() + half, abs=0.01)
    assert change["up"] == int((diff > 0).sum()) and change["down"] == int((diff < 0).sum())
    with pytest.raises(ValueError, match="different problems"):
        paired_change(as_records(base, range(n)), as_records(final, range(n - 1)))


def test_summary_says_plainly_when_the_interval_is_wider_than_six_points(tmp_path):
    base = [1.0, 0.0] * 16  # 32 problems, 8 flips each way: half-width ~ 1.96 * sqrt(0.5 / 32)
    final = [0.0, 1.0] * 4 + base[8:]
    records = [
        {"step": 0, "eval/avg_at_k": 0.5, "eval/num_problems": 32.0},
        {"step": 4, "eval/avg_at_k": 0.5, "eval/num_problems": 32.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    _eval_records(tmp_path / "eval" / "step_0.jsonl", base)
    _eval_records(tmp_path / "eval" / "step_4.jsonl", final)
    text = summary(tmp_path, dataclasses.replace(TINY, eval=EvalSchedule(temperature=0.0)))
    assert "wider than +-6: evaluate more problems (--set eval.num_problems=N)" in text


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
