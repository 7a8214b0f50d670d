"""Run configs: experiments load, overrides parse by field type, bad keys fail before compute."""

from __future__ import annotations

import pytest

from pmd_jax.config import TrainConfig, apply_overrides, load_experiment, to_dict


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
    config = TrainConfig(granularity="exp+ins")
    assert config.level_enabled("ins") and not config.level_enabled("beh")
    assert not TrainConfig(algorithm="grpo").level_enabled("exp")


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
