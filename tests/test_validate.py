"""Config validation before compute: each bad setting is one line naming the field and the fix."""

import dataclasses
import itertools
import json

import pytest

from pmd_jax.config import EXPERIMENTS_DIR, TrainConfig, apply_overrides, load_experiment
from pmd_jax.data import gsm8k
from pmd_jax.sharding import MeshConfig
from pmd_jax.validate import (
    ConfigError,
    config_errors,
    mesh_shape,
    validate_lengths,
    validate_run,
)

SCRATCH = ("model.name=scratch",)
GOOD_LINE = json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"})


def _config(*overrides: str) -> TrainConfig:
    return apply_overrides(TrainConfig(), [*SCRATCH, *overrides])


# Settings that point at this machine's assets (data, model files), not at the config's logic.
ASSET_FIELDS = ("data.gsm8k_dir", f"${gsm8k.ENV_VAR}", "model.name")


EXPERIMENT_NAMES = sorted(
    p.stem for p in EXPERIMENTS_DIR.glob("[!_]*.py") if "\nCONFIG = " in p.read_text()
)  # experiment configs, not drivers such as ablation.py


@pytest.mark.parametrize("name", EXPERIMENT_NAMES)
def test_every_experiment_and_the_default_validate(name, monkeypatch):
    monkeypatch.setattr(gsm8k, "network_reachable", lambda *args, **kwargs: False)
    for config, num_devices in ((load_experiment(name), 1), (TrainConfig(), 8)):
        errors = config_errors(config, num_devices)
        assert [line for line in errors if not line.startswith(ASSET_FIELDS)] == []


def test_mesh_shape_resolves_like_make_mesh():
    for sizes in itertools.product([-2, -1, 0, 1, 2, 3, 4], repeat=3):
        for num_devices in (1, 4, 6, 8):
            mesh = MeshConfig(*sizes)
            config = dataclasses.replace(TrainConfig(), mesh=mesh)

            shape, errors = mesh_shape(config, num_devices)

            try:
                expected = mesh.shape(num_devices)
            except ValueError:
                assert shape is None and errors and errors[0].startswith("mesh"), sizes
            else:
                assert errors == [] and tuple(shape.values()) == expected, sizes


# (overrides, device count, the one error line's start, a word of its fix)
BAD_CONFIGS = [
    (("mesh.data=3",), 4, "mesh=(3, 1, 1): data x fsdp x tensor = 3 but there are 4", "-1"),
    (("mesh.fsdp=3",), 8, "mesh.data=-1: 8 devices are not divisible by mesh.fsdp=3", "divide"),
    (("mesh.data=-1", "mesh.tensor=-1"), 8, "mesh.tensor=-1: only one axis", "set mesh.tensor"),
    (("mesh.fsdp=0",), 8, "mesh.fsdp=0: axis sizes must be >= 1", "set mesh.fsdp"),
    (
        ("data.batch_size=3", "rollout.num_samples=2"),
        4,
        "data.batch_size=3: data.batch_size x",
        "4",
    ),
    (("data.batch_size=6", "optimizer.micro_batches=4"), 1, "optimizer.micro_batches=4:", "6"),
    (("rollout.top_p=0",), 1, "rollout.top_p=0.0: must be in (0, 1]", "1.0"),
    (("rollout.temperature=-1",), 1, "rollout.temperature=-1.0: must be >= 0", "greedy"),
    (("algorithm=grpo", "rollout.num_samples=1"), 1, "rollout.num_samples=1: GRPO", ">= 2"),
    (("algorithm=grpo", "rollout.temperature=0"), 1, "rollout.temperature=0.0: greedy", "> 0"),
    (("reflect.top_p=1.5",), 1, "reflect.top_p=1.5", "1.0"),
    (("rollout.temperature=0.6",), 1, "loss.temperature=1.0: the sampler records", "=0.6"),
    (("rollout.temperature=0", "loss.temperature=0.6"), 1, "loss.temperature=0.6:", "=1.0"),
    (("model.dtype=float64",), 1, "model.dtype='float64': expected one of", "pick"),
    (("model.num_kv_heads=3",), 1, "model.num_kv_heads=3: must divide model.num_heads=4", "div"),
    (("model.name=./nowhere.gguf",), 1, "model.name='./nowhere.gguf': no such file", "scratch"),
    (("rollout.max_new_tokens=512",), 1, "memory.response_len=256: stored responses", ">= 512"),
    (
        ("teacher.max_prompt_tokens=4000", "memory.response_len=1024"),
        1,
        "rollout.max_new_tokens=256: the padded teacher prompt (4032 tokens) plus 256 new",
        "<= 4096",
    ),
    (("behaviours.max_prompt_tokens=4000",), 1, "behaviours.max_new_tokens=384:", "<= 4096"),
    (("data.subset=5000",), 1, "data.subset=5000: the train split has only 2000", "train_size"),
    (("eval.num_problems=500",), 1, "eval.num_problems=500: the test split has only 200", "<="),
    (("eval.split=valid",), 1, "eval.split='valid': expected one of ('train', 'test')", "pick"),
    (("eval.batch_size=0",), 1, "eval.batch_size=0: must be >= 1", ">= 1"),
    (("algorithm=grpo", "eval.with_memory=true"), 1, "eval.with_memory=True: algorithm", "pmd"),
    (("eval.final=false",), 1, "checkpoint.keep_best=1: ranks checkpoints", "keep_best=0"),
    (("checkpoint.best_metric=loss",), 1, "checkpoint.best_metric='loss': is not", "avg_at_k"),
    (
        ("ablation=frozen_memory", "frozen_memory_path=/no/memory.json"),
        1,
        "frozen_memory_path='/no/memory.json': no such file",
        "memory JSON",
    ),
]


@pytest.mark.parametrize("overrides, num_devices, start, fix", BAD_CONFIGS)
def test_bad_setting_is_one_line_naming_field_value_and_fix(overrides, num_devices, start, fix):
    with pytest.raises(ConfigError) as caught:
        validate_run(_config(*overrides), num_devices)

    assert len(caught.value.errors) == 1, caught.value.errors
    line = caught.value.errors[0]
    assert "\n" not in line and line.startswith(start), line
    assert fix in line.split("; ")[-1], line


def test_every_problem_is_reported_at_once():
    config = _config("mesh.data=3", "rollout.top_p=2", "eval.num_samples=0")

    errors = config_errors(config, 4)

    assert [line.split("=")[0] for line in errors] == ["mesh", "rollout.top_p", "eval.num_samples"]
    with pytest.raises(ValueError, match=r"(?s)^mesh=.*\nrollout\.top_p=.*\neval\.num_samples="):
        validate_run(config, 4)


def test_batch_check_uses_the_batch_axes_only():
    # tensor parallelism does not split the batch: 8 x 8 rows over data 2 x fsdp 2 is fine.
    assert config_errors(_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"), 8) == []
    errors = config_errors(_config("mesh.data=-1", "data.batch_size=3", "rollout.num_samples=3"), 2)
    assert errors and "mesh data x fsdp = 2 devices" in errors[0]


def _gsm8k(tmp_path, monkeypatch, gsm8k_dir=None, env=None, reachable=False) -> list[str]:
    monkeypatch.delenv(gsm8k.ENV_VAR, raising=False)
    if env is not None:
        monkeypatch.setenv(gsm8k.ENV_VAR, str(env))
    monkeypatch.setattr(gsm8k, "network_reachable", lambda *args, **kwargs: reachable)
    overrides = ["data.task=gsm8k", f"data.data_dir={tmp_path / 'tfds'}"]
    if gsm8k_dir is not None:
        overrides.append(f"data.gsm8k_dir={gsm8k_dir}")
    return config_errors(_config(*overrides), 1)


def test_gsm8k_directory_errors_name_the_setting_that_points_there(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    half = tmp_path / "half"
    half.mkdir()
    (half / "train.jsonl").write_text(GOOD_LINE + "\n")

    assert _gsm8k(tmp_path, monkeypatch, gsm8k_dir=missing) == [
        f"data.gsm8k_dir='{missing}': no such directory; point it at the folder holding "
        "GSM8K's train.jsonl and test.jsonl"
    ]
    assert _gsm8k(tmp_path, monkeypatch, env=missing)[0].startswith(f"$PMD_GSM8K_DIR='{missing}'")
    assert _gsm8k(tmp_path, monkeypatch, gsm8k_dir=half) == [
        f"data.gsm8k_dir='{half}': has no test.jsonl; add the file"
    ]
    (half / "test.jsonl").write_text(GOOD_LINE + "\n")
    assert _gsm8k(tmp_path, monkeypatch, gsm8k_dir=half) == []


def test_gsm8k_without_a_directory_needs_a_prepared_copy_or_the_network(tmp_path, monkeypatch):
    offline = _gsm8k(tmp_path, monkeypatch)

    assert len(offline) == 1 and offline[0].startswith("data.gsm8k_dir=None: GSM8K is not prepared")
    assert "set data.gsm8k_dir (or $PMD_GSM8K_DIR) to a folder holding train.jsonl" in offline[0]
    assert "../shared" not in offline[0]  # a user's clone has no such folder
    assert _gsm8k(tmp_path, monkeypatch, reachable=True) == []


def test_lengths_checked_once_the_prompts_and_model_are_known():
    config = _config("teacher.max_prompt_tokens=200")

    validate_lengths(config, longest_prompt=150, max_positions=4096)
    with pytest.raises(ConfigError, match=r"^teacher\.max_prompt_tokens=200: the longest .* 200 "):
        validate_lengths(config, longest_prompt=200, max_positions=4096)
    with pytest.raises(ConfigError) as caught:
        validate_lengths(config, longest_prompt=150, max_positions=400)
    assert [line.split(":")[0] for line in caught.value.errors] == [
        "rollout.max_new_tokens=256",  # the teacher prompt: 256 padded + 256 > 400
        "rollout.max_new_tokens=256",  # the student prompt: 192 padded + 256 > 400
        "eval.max_new_tokens=256",
        "behaviours.max_new_tokens=384",  # 2048 + 384
    ]
    # GRPO has no teacher prompt: a short teacher budget is not its problem.
    validate_lengths(_config("algorithm=grpo", "teacher.max_prompt_tokens=8"), 150, 4096)


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("kl_coef", 0.1, "reference policy"),
        ("entropy_coef", 0.01, "per-token entropies"),
        ("is_clip", 5.0, "on-policy"),
        ("clip_low", 0.1, "on-policy"),
        ("clip_high", 0.4, "on-policy"),
        ("dual_clip", 2.0, "on-policy"),
    ],
)
def test_loss_fields_the_train_step_cannot_honour_are_refused_by_name(field, value, reason):
    errors = config_errors(_config(f"loss.{field}={value}"), 1)
    assert len(errors) == 1 and errors[0].startswith(f"loss.{field}={value!r}: "), errors
    assert reason in errors[0]
    assert config_errors(_config(), 1) == []  # the defaults pass
