"""Checks of a run config before any model load or compile: one line per problem, every one.

    validate_run(config, jax.device_count())            # before loading data or the model
    validate_lengths(config, longest_prompt, max_pos)   # once the tokenizer and model are known

Each problem is one line `field=value: what is wrong; the fix`, with the field as a dotted path
of the TrainConfig tree (`data.batch_size`, `mesh.data`). All problems are collected and raised
together in one `ConfigError` (a ValueError), so a user fixes a config in one go.

What the dataclasses' own __post_init__ checks (one field at a time) is not repeated here; these
are the checks across sections and against the machine: the mesh against the device count, the
rollout batch against the data-parallel axes and the micro-batches, sequence lengths against each
other and the model's positions, data and memory files on disk, and the eval and checkpoint
schedule.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

from pmd_jax.config import TrainConfig
from pmd_jax.data import gsm8k, pipeline
from pmd_jax.losses import LossConfig
from pmd_jax.remote import RemoteConfigError
from pmd_jax.run_plan import run_plan
from pmd_jax.sampling import bucket_length, logprob_temperature
from pmd_jax.sharding import AXES, BATCH_AXES

# pmd_jax/model/scratch.py builds every scratch model with this many positions.
SCRATCH_MAX_POSITIONS = 4096
# Metrics train.py logs at an evaluation (the ones a best-checkpoint policy can rank by).
EVAL_METRICS = ("eval/avg_at_k", "eval/pass_at_k")
MEMORY_EVAL_METRICS = ("eval/memory_avg_at_k", "eval/memory_pass_at_k")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """Config problems found before compute; `errors` holds one line per problem."""

    def __init__(self, errors: Sequence[str]):
        self.errors = tuple(errors)
        super().__init__("\n".join(self.errors))


def _line(field: str, value: Any, problem: str, fix: str) -> str:
    return f"{field}={value!r}: {problem}; {fix}"


def mesh_shape(config: TrainConfig, num_devices: int) -> tuple[dict[str, int] | None, list[str]]:
    """The resolved {axis: size} (as make_mesh resolves -1) or None, and the problems found."""
    sizes = {axis: getattr(config.mesh, axis) for axis in AXES}
    errors = [
        _line(f"mesh.{axis}", size, "axis sizes must be >= 1 or -1", f"set mesh.{axis}=-1 or >= 1")
        for axis, size in sizes.items()
        if size == 0 or size < -1
    ]
    filled = [axis for axis, size in sizes.items() if size == -1]
    if len(filled) > 1:
        errors.append(
            _line(
                f"mesh.{filled[1]}",
                -1,
                f"only one axis may be -1 (mesh.{filled[0]} is too)",
                f"set mesh.{filled[1]} to a size",
            )
        )
    if errors:
        return None, errors
    known = math.prod(size for size in sizes.values() if size != -1)
    if filled:
        if num_devices % known:
            fixed = " x ".join(f"mesh.{a}={s}" for a, s in sizes.items() if s != -1)
            return None, [
                _line(
                    f"mesh.{filled[0]}",
                    -1,
                    f"{num_devices} devices are not divisible by {fixed} = {known}",
                    f"make the fixed axes' product divide {num_devices}",
                )
            ]
        sizes[filled[0]] = num_devices // known
    elif known != num_devices:
        return None, [
            _line(
                "mesh",
                tuple(sizes.values()),
                f"data x fsdp x tensor = {known} but there are {num_devices} devices",
                "make the product equal the device count, or set one axis to -1",
            )
        ]
    return sizes, []


def _batch_errors(config: TrainConfig, mesh: dict[str, int] | None) -> Iterator[str]:
    batch, group = config.data.batch_size, config.rollout.num_samples
    rows = batch * group
    micro = config.optimizer.micro_batches
    if batch % micro:
        yield _line(
            "optimizer.micro_batches",
            micro,
            f"each micro-batch must hold whole groups, but data.batch_size={batch} prompts "
            f"do not split into {micro} parts",
            f"pick a divisor of {batch}",
        )
    waves = config.rollout.waves
    if waves >= 1 and batch % waves:
        yield _line(
            "rollout.waves",
            waves,
            f"data.batch_size={batch} prompts do not split into {waves} equal sampler calls",
            f"pick a divisor of {batch}",
        )
    if mesh is not None:
        divisor = math.prod(mesh[axis] for axis in BATCH_AXES)
        if rows % divisor:
            yield _line(
                "data.batch_size",
                batch,
                f"data.batch_size x rollout.num_samples = {rows} rollouts do not split over "
                f"mesh data x fsdp = {divisor} devices",
                f"make {batch} x {group} a multiple of {divisor}",
            )


def _sampling_errors(prefix: str, section: Any) -> Iterator[str]:
    if section.temperature < 0:
        yield _line(f"{prefix}.temperature", section.temperature, "must be >= 0", "0 is greedy")
    if not 0 < section.top_p <= 1:
        yield _line(f"{prefix}.top_p", section.top_p, "must be in (0, 1]", "1.0 turns it off")
    if section.max_new_tokens < 1:
        yield _line(f"{prefix}.max_new_tokens", section.max_new_tokens, "must be >= 1", "set it")


def _rollout_errors(config: TrainConfig) -> Iterator[str]:
    rollout = config.rollout
    yield from _sampling_errors("rollout", rollout)
    for name in ("num_samples", "prompt_bucket", "waves"):
        if getattr(rollout, name) < 1:
            yield _line(f"rollout.{name}", getattr(rollout, name), "must be >= 1", "set it >= 1")
    plan = run_plan(config)
    if plan.loss == "grpo" and rollout.num_samples < 2:
        yield _line(
            "rollout.num_samples",
            rollout.num_samples,
            "GRPO advantages compare rollouts of a prompt, so one gives zero gradient",
            "set rollout.num_samples >= 2",
        )
    if plan.loss == "grpo" and rollout.temperature == 0 and rollout.num_samples > 1:
        yield _line(
            "rollout.temperature",
            0.0,
            "greedy rollouts of a prompt are identical, so every GRPO advantage is 0",
            "set rollout.temperature > 0",
        )
    for prefix in ("reflect", "behaviours"):
        if plan.uses_memory:
            yield from _sampling_errors(prefix, getattr(config, prefix))
    sampler_temperature = logprob_temperature(rollout.temperature)
    if rollout.temperature >= 0 and config.loss.temperature != sampler_temperature:
        yield _line(
            "loss.temperature",
            config.loss.temperature,
            f"the sampler records each rollout token's log-prob at {sampler_temperature} (the "
            "rollout temperature, 1.0 when greedy) and the rollout correction "
            "min(exp(logp_trainer - logp_sampler), clip) compares it with the trainer's at "
            "loss.temperature, so a different value biases every token weight (METHOD section 6 "
            "has one temperature)",
            f"set loss.temperature={sampler_temperature}",
        )


def _model_errors(config: TrainConfig) -> Iterator[str]:
    spec = config.model
    for name in ("param_dtype", "dtype"):
        if getattr(spec, name) not in DTYPES:
            yield _line(
                f"model.{name}", getattr(spec, name), f"expected one of {DTYPES}", "pick one"
            )
    if spec.warm_start_steps < 0:
        yield _line("model.warm_start_steps", spec.warm_start_steps, "must be >= 0", "0 = none")
    if spec.warm_start_steps > 0 and spec.warm_start_batch < 1:
        yield _line("model.warm_start_batch", spec.warm_start_batch, "must be >= 1", "set it")
    if spec.name == "scratch":
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads")
        for name in (*sizes, "num_kv_heads", "head_dim"):
            if getattr(spec, name) < 1:
                yield _line(f"model.{name}", getattr(spec, name), "must be >= 1", "set it")
        if spec.num_kv_heads >= 1 and spec.num_heads % spec.num_kv_heads:
            yield _line(
                "model.num_kv_heads",
                spec.num_kv_heads,
                f"must divide model.num_heads={spec.num_heads}",
                "pick a divisor",
            )
        return
    from pmd_jax.model import registry  # the loaders import flax; only needed for a named model

    if spec.name.lower() in registry.SMOLLM2_NAMES:
        try:
            registry.find_smollm2_gguf()
        except FileNotFoundError as err:
            yield _line("model.name", spec.name, str(err), "else set model.name=scratch")
        return
    path = pathlib.Path(spec.name).expanduser()
    looks_local = spec.name.endswith(".gguf") or spec.name.startswith(("/", ".", "~"))
    if looks_local and not path.exists():
        yield _line(
            "model.name",
            spec.name,
            f"no such file or directory {path}",
            f"use a known name {list(registry.SMOLLM2_NAMES)}, 'scratch', or an existing path",
        )


def _length_errors(
    config: TrainConfig, max_positions: int | None, longest_prompt: int | None = None
) -> Iterator[str]:
    """Sequence lengths against each other and, when known, the model's positions."""
    new_tokens = config.rollout.max_new_tokens
    teacher_width = bucket_length(config.teacher.max_prompt_tokens, config.teacher.bucket)
    plan = run_plan(config)
    if longest_prompt is not None:
        if plan.teacher and config.teacher.max_prompt_tokens <= longest_prompt:
            # The teacher prompt holds the student's whole problem plus headers and a closing.
            yield _line(
                "teacher.max_prompt_tokens",
                config.teacher.max_prompt_tokens,
                f"the longest student prompt alone takes {longest_prompt} tokens",
                f"set teacher.max_prompt_tokens > {longest_prompt} (with room for memory)",
            )
    if max_positions is None:
        return
    sequences = []
    if plan.teacher:  # GRPO builds no teacher prompt
        sequences.append(
            ("rollout.max_new_tokens", new_tokens, "the padded teacher prompt", teacher_width)
        )
    if longest_prompt is not None:
        width = bucket_length(longest_prompt, config.rollout.prompt_bucket)
        sequences.append(("rollout.max_new_tokens", new_tokens, "the padded student prompt", width))
        sequences.append(
            ("eval.max_new_tokens", config.eval.max_new_tokens, "the padded student prompt", width)
        )
    if plan.evolve:
        behaviours = config.behaviours
        sequences.append(
            (
                "behaviours.max_new_tokens",
                behaviours.max_new_tokens,
                "behaviours.max_prompt_tokens",
                behaviours.max_prompt_tokens,
            )
        )
    for field, new, what, prompt in sequences:
        if prompt + new > max_positions:
            yield _line(
                field,
                new,
                f"{what} ({prompt} tokens) plus {new} new tokens exceed the model's "
                f"{max_positions} positions",
                f"make the sum <= {max_positions}",
            )


def _memory_errors(config: TrainConfig) -> Iterator[str]:
    new_tokens, response_len = config.rollout.max_new_tokens, config.memory.response_len
    if run_plan(config).uses_memory and response_len < new_tokens:
        # fit_ids keeps the head of a response: the '#### answer' line at its end would be cut.
        yield _line(
            "memory.response_len",
            response_len,
            f"stored responses are cut to this many tokens, below rollout.max_new_tokens="
            f"{new_tokens}, so a stored success can lose its answer line",
            f"set memory.response_len >= {new_tokens}",
        )


def _split_size(config: TrainConfig, split: str) -> int | None:
    if config.data.task == "arith":
        return getattr(config.data.arith, f"{split}_size")
    return None


def _data_errors(config: TrainConfig) -> Iterator[str]:
    data = config.data
    train_size = _split_size(config, "train")
    if data.subset is not None and train_size is not None and data.subset > train_size:
        yield _line(
            "data.subset",
            data.subset,
            f"the train split has only {train_size} problems",
            f"set data.subset <= {train_size} or raise data.arith.train_size",
        )
    if data.task == "gsm8k":
        yield from _gsm8k_errors(config)
    path = run_plan(config).load_memory_from
    if path and not pathlib.Path(path).is_file():
        yield _line("frozen_memory_path", path, "no such file", "point it at a memory JSON")


def _gsm8k_errors(config: TrainConfig) -> Iterator[str]:
    local_dir = gsm8k.resolve_local_dir(config.data.gsm8k_dir)
    setting = "data.gsm8k_dir" if config.data.gsm8k_dir is not None else f"${gsm8k.ENV_VAR}"
    if local_dir is not None:
        # A set directory is checked even when a prepared copy exists: a typo stays a typo.
        if not local_dir.is_dir():
            yield _line(
                setting,
                str(local_dir),
                "no such directory",
                "point it at the folder holding GSM8K's train.jsonl and test.jsonl",
            )
            return
        for split in gsm8k.SPLITS:
            if not (local_dir / f"{split}.jsonl").is_file():
                yield _line(setting, str(local_dir), f"has no {split}.jsonl", "add the file")
        return
    if pipeline.make_builder(config.data).is_prepared() or gsm8k.network_reachable(timeout_s=2.0):
        return
    data_dir = pipeline.resolve_data_dir(config.data) or "the default TFDS directory"
    yield _line(
        "data.gsm8k_dir",
        None,
        f"GSM8K is not prepared in {data_dir} and the download host is unreachable",
        f"set data.gsm8k_dir (or ${gsm8k.ENV_VAR}) to a folder holding train.jsonl and test.jsonl",
    )


def _eval_errors(config: TrainConfig) -> Iterator[str]:
    schedule = config.eval
    if schedule.split not in pipeline.SPLITS:
        yield _line("eval.split", schedule.split, f"expected one of {pipeline.SPLITS}", "pick one")
    else:
        size = _split_size(config, schedule.split)
        if size is not None and schedule.num_problems > size:
            yield _line(
                "eval.num_problems",
                schedule.num_problems,
                f"the {schedule.split} split has only {size} problems",
                f"set eval.num_problems <= {size} or raise data.arith.{schedule.split}_size",
            )
    yield from _sampling_errors("eval", schedule)
    for name in ("num_problems", "num_samples", "batch_size"):
        if getattr(schedule, name) < 1:
            yield _line(f"eval.{name}", getattr(schedule, name), "must be >= 1", "set it >= 1")
    if schedule.every_steps < 0:
        yield _line("eval.every_steps", schedule.every_steps, "must be >= 0", "0 = end only")
    if schedule.with_memory and not run_plan(config).uses_memory:
        yield _line(
            "eval.with_memory",
            True,
            f"algorithm {config.algorithm!r} keeps no memory",
            "set eval.with_memory=false or algorithm=pmd",
        )
    checkpoint = config.checkpoint
    if checkpoint.keep_best > 0:
        evaluates = schedule.final or 0 < schedule.every_steps <= config.total_steps
        metrics = EVAL_METRICS + (MEMORY_EVAL_METRICS if schedule.with_memory else ())
        if not evaluates:
            yield _line(
                "checkpoint.keep_best",
                checkpoint.keep_best,
                "ranks checkpoints by an eval metric but no eval runs",
                "set checkpoint.keep_best=0, eval.final=true or eval.every_steps",
            )
        elif checkpoint.best_metric not in metrics:
            yield _line(
                "checkpoint.best_metric",
                checkpoint.best_metric,
                "is not a logged eval metric",
                f"use one of {metrics}",
            )


_REMOTE_FIELD = re.compile(r"^RemoteConfig\.(\w+) (.*)$", re.S)


def _remote_errors(config: TrainConfig) -> Iterator[str]:
    """reflect.remote / behaviours.remote of a section whose backend is "openai": every field as
    RemoteConfig checks it, the key's environment variable set, one process. The key is never
    part of a message (api_key_env's value is shown only once it is a valid variable name)."""
    from pmd_jax import multihost

    for prefix in ("reflect", "behaviours"):
        section = getattr(config, prefix)
        if section.backend != "openai":
            continue
        spec = section.remote
        try:
            spec.config(max_tokens=section.max_new_tokens, temperature=section.temperature)
        except RemoteConfigError as err:
            match = _REMOTE_FIELD.match(str(err))
            field, why = match.groups() if match else ("", str(err))
            section_field = {"max_tokens": "max_new_tokens", "temperature": "temperature"}
            if field in section_field:  # sent from the section's own sampling fields
                name = f"{prefix}.{section_field[field]}"
                value = getattr(section, section_field[field])
            else:
                name = f"{prefix}.remote.{field}" if field else f"{prefix}.remote"
                value = "<hidden>" if field == "api_key_env" else getattr(spec, field, None)
            yield _line(
                name,
                value,
                f"{why} ({prefix}.backend='openai' needs it)",
                f"set {name}, or {prefix}.backend=policy",
            )
            continue
        if spec.api_key_env and not os.environ.get(spec.api_key_env, "").strip():
            yield _line(
                f"{prefix}.remote.api_key_env",
                spec.api_key_env,
                "that environment variable is unset or empty",
                "export it with the API key (the key never goes in the config), or set "
                f"{prefix}.remote.api_key_env='' for a server without a key",
            )
        try:
            multi = multihost.cluster_args(config.mesh) is not None
        except ValueError:
            multi = False  # reported by the mesh checks
        if multi:
            yield _line(
                f"{prefix}.backend",
                "openai",
                "an endpoint backend is single-process only (every process of a multi-host run "
                "would ask the server on its own, and their memories would differ)",
                f"set {prefix}.backend=policy or base, or run on one host",
            )


# LossConfig fields the training step cannot honour. `losses` implements them for callers that
# supply what they need; the train step is on-policy (one update per sampled batch, so the
# importance ratio exp(logp_now - logp_old) is 1 and its clips never bind) and keeps no reference
# model. A non-default value would change nothing or fail while the update is traced.
_UNUSED_LOSS_FIELDS = {
    "kl_coef": "needs a reference policy's log-probs, which the train step does not compute",
    "entropy_coef": "needs per-token entropies, which the train step does not compute",
    "is_clip": "caps exp(logp_now - logp_old), which is 1 in the on-policy train step",
    "clip_low": "clips the importance ratio, which is 1 in the on-policy train step",
    "clip_high": "clips the importance ratio, which is 1 in the on-policy train step",
    "dual_clip": "bounds the importance ratio, which is 1 in the on-policy train step",
}


def _loss_errors(config: TrainConfig) -> Iterator[str]:
    default = LossConfig()
    for name, reason in _UNUSED_LOSS_FIELDS.items():
        value = getattr(config.loss, name)
        if value != getattr(default, name):
            yield _line(f"loss.{name}", value, reason, f"leave it at {getattr(default, name)!r}")


def config_errors(config: TrainConfig, num_devices: int) -> list[str]:
    """Every problem `validate_run` would raise, one line each (empty when the config is fine)."""
    mesh, errors = mesh_shape(config, num_devices)
    errors += _batch_errors(config, mesh)
    errors += _rollout_errors(config)
    errors += _model_errors(config)
    max_positions = SCRATCH_MAX_POSITIONS if config.model.name == "scratch" else None
    errors += _length_errors(config, max_positions)
    errors += _memory_errors(config)
    errors += _data_errors(config)
    errors += _eval_errors(config)
    errors += _remote_errors(config)
    errors += _loss_errors(config)
    return errors


def validate_run(config: TrainConfig, num_devices: int) -> None:
    """Raise ConfigError listing every problem knowable from the config and the device count.

    num_devices: jax.device_count() (after jax.distributed.initialize on multi-host runs).
    Reads only the file system (data and memory paths) and, for GSM8K with no local directory
    and no prepared copy, probes the download host (2 s at most).
    """
    errors = config_errors(config, num_devices)
    if errors:
        raise ConfigError(errors)


def validate_lengths(config: TrainConfig, longest_prompt: int, max_positions: int) -> None:
    """Raise ConfigError when prompt and generation lengths do not fit, once they are known.

    longest_prompt: tokens of the longest student prompt (chat template included, unpadded) of
    the train problems, taken as the bound for eval prompts too;
    max_positions: the loaded model's max_position_embeddings.
    """
    errors = list(_length_errors(config, max_positions, longest_prompt))
    if errors:
        raise ConfigError(errors)
