"""The run plan as train.py uses it: one success threshold for teacher, memory and reflection, and
`python -m pmd_jax.train --dry-run` (config + plan printed, nothing written, errors exit non-zero).
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from pmd_jax import memory as mem
from pmd_jax import phases, train
from pmd_jax.config import TrainConfig, apply_overrides
from pmd_jax.memory.reflect import build_reflection_requests
from pmd_jax.run_plan import run_plan

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
# Rewards 0.7 and 1.0: two successes at the default threshold 0.5, one at 0.8.
RESPONSES, REWARDS = ["3 + 4 = 7 apples\n#### 7", "3 + 4 = 7\n#### 7"], [0.7, 1.0]


def _rollouts(tokenizer) -> phases.Rollouts:
    return phases.Rollouts(
        problem_ids=np.array([0], np.int32),
        questions=[QUESTION],
        answers=["7"],
        prompt_tokens=np.zeros((1, 1), np.int32),
        prompt_mask=np.ones((1, 1), bool),
        tokens=np.zeros((2, 1), np.int32),
        logprobs=np.zeros((2, 1), np.float32),
        lengths=np.ones(2, np.int32),
        texts=list(RESPONSES),
        rewards=np.asarray(REWARDS, np.float32),
        feedback=["", ""],
    )


def _successes(config: TrainConfig, tokenizer) -> dict[str, list[bool]]:
    """What each consumer treats as a success, given the run's config -> per rollout."""
    plan = run_plan(config)
    memory_config = mem.MemoryConfig(
        **{**config.memory.__dict__, "num_problems": 1, "embed_dim": 4, "behaviour_slots": 2}
    )
    # memory: the slot pool an experience insert goes to
    state, outcome = mem.insert_experience_batch(
        mem.init_memory(memory_config),
        memory_config,
        np.zeros(2, np.int32),
        np.ones((2, 3), np.int32),
        np.full(2, 3),
        np.asarray(REWARDS),
        np.zeros((2, 1), np.int32),
        np.zeros(2, np.int32),
        np.eye(4, dtype=np.float32)[:2],
        1,
    )
    memory = [int(slot) < memory_config.success_slots for slot in np.asarray(outcome.slot)]
    # teacher (SDPO blocks): a row is shown its sibling only when the sibling is a success
    batch = phases.teacher_prompts(
        tokenizer,
        _rollouts(tokenizer),
        config.teacher,
        config.prompt,
        blocks=plan.teacher_blocks,
        success_reward=plan.success_reward,
    )
    shown = ["sibling_solution" in blocks for blocks in batch.shown_blocks]
    teacher = [shown[1], shown[0]]  # row 1 sees row 0 iff row 0 is a success, and back
    # reflection: "k of n attempts were correct" of the group
    (request,) = build_reflection_requests(
        tokenizer,
        [QUESTION],
        [[(text, reward, "") for text, reward in zip(RESPONSES, REWARDS, strict=True)]],
        config.reflect,
        success_reward=memory_config.success_reward,
    )
    reflection = {"strategies": [True, True], "contrastive": [False, True]}[request.case]
    accuracy = [reward > plan.success_reward for reward in REWARDS]  # train.py's reward/accuracy
    return {"memory": memory, "teacher": teacher, "reflection": reflection, "accuracy": accuracy}


@pytest.mark.parametrize("threshold, want", [(0.5, [True, True]), (0.8, [False, True])])
def test_memory_success_reward_is_one_definition_for_every_consumer(
    arith_tokenizer, threshold, want
):
    config = apply_overrides(
        TrainConfig(), ["algorithm=sdpo", f"memory.success_reward={threshold}"]
    )
    got = _successes(config, arith_tokenizer)
    assert got == {name: want for name in got}


def test_teacher_prompts_refuse_to_guess_the_success_threshold(arith_tokenizer):
    with pytest.raises(ValueError, match="success_reward or memory_config"):
        phases.teacher_prompts(
            arith_tokenizer,
            _rollouts(arith_tokenizer),
            TrainConfig().teacher,
            TrainConfig().prompt,
            blocks=("feedback",),
        )


def test_dry_run_prints_the_config_and_plan_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "pmd_jax.train", "--exp", "tiny", "--workdir", str(workdir),
         "--set", "granularity=exp+ins", "--set", "total_steps=3", "--dry-run"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text, _, plan = done.stdout.partition("\nrun plan of ")
    config = json.loads(text[text.index("{") :])
    assert config["granularity"] == "exp+ins" and config["total_steps"] == 3
    assert "reflect (insights): yes; evolve (behaviours): no" in plan
    assert "teacher sees: stored_solution, lessons, strategies, sibling_solution, feedback" in plan
    assert "not checked" in plan and "tokenizer" in plan
    assert not workdir.exists()


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["algorithm=grpo", "rollout.num_samples=1"], "rollout.num_samples=1: GRPO advantages"),
        (["teacher.mode=sdpo"], "teacher.mode: this key was removed.*algorithm=sdpo"),
        (["ablation=frozen_memory"], "needs frozen_memory_path"),
        (
            ["ablation=frozen_memory", "frozen_memory_path=/no/such.json"],
            "frozen_memory_path='/no/such.json': no such file",
        ),
    ],
)
def test_dry_run_config_errors_exit_non_zero_with_the_message(tmp_path, capsys, overrides, match):
    workdir = tmp_path / "run"
    argv = ["--exp", "tiny", "--workdir", str(workdir), "--dry-run"]
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv + [f"--set={override}" for override in overrides])
    assert exit_info.value.code == 2
    assert re.search(match, capsys.readouterr().err)
    assert not workdir.exists()
