"""Run configs: experiments load, overrides parse by field type, bad keys fail before compute."""

from __future__ import annotations

import pytest

from pmd_jax.config import TrainConfig, apply_overrides, load_experiment, to_dict
from pmd_jax.memory.teacher import DROPPABLE_BLOCKS, MODE_BLOCKS
from pmd_jax.run_plan import describe, run_plan


def test_overrides_parse_each_field_type():
    config = apply_overrides(
        TrainConfig(),
        [
            "algorithm=sdpo",
            "total_steps=7",
            "loss.alpha=0.5",
            "loss.top_k=none",
            "rollout.stop_at_answer=false",
            "data.arith.families=add_sub,rate_time",
            "data.subset=12",
        ],
    )
    assert config.algorithm == "sdpo" and config.total_steps == 7
    assert config.loss.alpha == 0.5 and config.loss.top_k is None
    assert config.rollout.stop_at_answer is False
    assert config.data.arith.families == ("add_sub", "rate_time")
    assert config.data.subset == 12
    assert TrainConfig().loss.top_k == 100  # the default is untouched (frozen dataclasses)


@pytest.mark.parametrize(
    "override, error, match",
    [
        ("loss.alpah=0.5", KeyError, "unknown key 'alpah' in LossConfig"),
        ("nope=1", KeyError, "unknown key 'nope' in TrainConfig"),
        ("total_steps=ten", ValueError, r"total_steps='ten': expected an int"),
        ("rollout.stop_at_answer=maybe", ValueError, "expected a bool"),
        ("loss=1", KeyError, "'loss' is a section"),
        ("algorithm", ValueError, "expected key=value"),
        ("algorithm=ppo", ValueError, r"TrainConfig.algorithm='ppo'"),
        ("loss.alpha=2", ValueError, r"alpha must be in \[0, 1\]"),
    ],
)
def test_bad_overrides_name_the_key_and_value(override, error, match):
    with pytest.raises(error, match=match):
        apply_overrides(TrainConfig(), [override])


def test_ablations_check_their_requirements():
    with pytest.raises(ValueError, match="needs algorithm 'pmd'"):
        TrainConfig(algorithm="sdpo", ablation="pmd_transient")
    with pytest.raises(ValueError, match="frozen_memory_path"):
        TrainConfig(ablation="frozen_memory")
    plan = run_plan(TrainConfig(granularity="exp+ins"))
    assert plan.reflect and not plan.evolve and "behaviours" not in plan.teacher_blocks
    grpo = run_plan(TrainConfig(algorithm="grpo"))
    assert not (grpo.uses_memory or grpo.remember) and grpo.teacher_blocks is None


def test_experiments_load_and_unknown_ones_are_listed():
    tiny = load_experiment("tiny")
    assert tiny.model.name == "scratch" and tiny.total_steps >= 4
    assert to_dict(tiny)["rollout"]["num_samples"] == tiny.rollout.num_samples
    with pytest.raises(FileNotFoundError, match=r"known: \[.*'tiny'.*\]"):
        load_experiment("tinyy")


def test_overrides_validate_together_not_one_by_one():
    config = apply_overrides(
        TrainConfig(), ["ablation=frozen_memory", "frozen_memory_path=/tmp/m.json"]
    )
    assert config.ablation == "frozen_memory" and config.frozen_memory_path == "/tmp/m.json"
    assert apply_overrides(TrainConfig(), ["seed=1", "seed=2"]).seed == 2


EXP_BLOCKS = ("stored_solution", "sibling_solution", "feedback")


@pytest.mark.parametrize(
    "overrides, want",
    [
        (["algorithm=grpo"], dict(loss="grpo", uses_memory=False, teacher_blocks=None)),
        (
            ["algorithm=sdpo"],
            dict(loss="distill", uses_memory=False, remember=False, reflect=False, evolve=False,
                 teacher_blocks=MODE_BLOCKS["sdpo"], teacher_reads_memory=False),
        ),
        (
            [],
            dict(loss="distill", uses_memory=True, remember=True, reflect=True, evolve=True,
                 teacher_blocks=DROPPABLE_BLOCKS, reset_memory_each_step=False,
                 update_policy=True, load_memory_from=""),
        ),
        (["ablation=pmd_transient"], dict(reset_memory_each_step=True, remember=True)),
        (["ablation=frozen_policy"], dict(update_policy=False, remember=True)),
        (
            ["ablation=frozen_memory", "frozen_memory_path=/m.json"],
            dict(load_memory_from="/m.json", remember=False, reflect=False, evolve=False,
                 update_policy=True, teacher_blocks=DROPPABLE_BLOCKS),
        ),
        (["granularity=exp"], dict(reflect=False, evolve=False, teacher_blocks=EXP_BLOCKS)),
        (
            ["granularity=exp+ins"],
            dict(reflect=True, evolve=False,
                 teacher_blocks=("stored_solution", "lessons", "strategies", *EXP_BLOCKS[1:])),
        ),
        (["eval.with_memory=true"], dict(eval_with_memory=True)),
        (["memory.success_reward=0.9"], dict(success_reward=0.9)),
    ],
)  # fmt: skip
def test_run_plan_of_each_run_type(overrides, want):
    plan = run_plan(apply_overrides(TrainConfig(), overrides))
    assert {key: getattr(plan, key) for key in want} == want
    assert len(describe(plan)) >= 4


def test_removed_keys_are_refused_naming_the_replacement():
    with pytest.raises(KeyError, match=r"teacher.mode: this key was removed.*granularity="):
        apply_overrides(TrainConfig(), ["teacher.mode=sdpo"])
    with pytest.raises(KeyError, match="log_every: this key was removed"):
        apply_overrides(TrainConfig(), ["log_every=5"])
