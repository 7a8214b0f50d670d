"""The run configuration: one frozen dataclass tree, experiments, and `--set a.b=value` overrides.

An experiment is a file `experiments/NAME.py` that defines `CONFIG: TrainConfig`. Overrides are
parsed against the field types before anything is computed, so a typo or a wrong type fails at
once with the key and the value in the message.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pmd_jax.checkpoint import CheckpointConfig
from pmd_jax.data.pipeline import DataConfig
from pmd_jax.data.prompts import PromptConfig
from pmd_jax.losses import LossConfig
from pmd_jax.memory.behaviours import BehaviourConfig
from pmd_jax.memory.reflect import ReflectConfig
from pmd_jax.memory.state import MemoryConfig
from pmd_jax.memory.teacher import TeacherConfig
from pmd_jax.optimizer import OptimizerConfig
from pmd_jax.sharding import MeshConfig
from pmd_jax.verify import VerifierConfig

ALGORITHMS = ("grpo", "sdpo", "pmd")
ABLATIONS = ("none", "pmd_transient", "frozen_memory", "frozen_policy")
GRANULARITIES = ("exp", "exp+ins", "exp+ins+beh")
EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parent.parent / "experiments"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which policy to start from: a registry name / HF dir / .gguf, or "scratch" (a random
    model of the sizes below with a SentencePiece tokenizer trained on the task's train split)."""

    name: str = "smollm2-135m-instruct"
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype; "bfloat16" keeps float32 master weights
    remat: str = "none"  # what each layer recomputes in the backward pass: none | dots | full
    attention_impl: str = (
        "xla"  # training/prefill attention: naive | xla | cudnn (GPU) | splash (TPU)
    )
    # scratch only
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    warm_start_steps: int = 0  # supervised steps on task solutions + format demonstrations
    warm_start_lr: float = 3e-3
    warm_start_batch: int = 16

    def __post_init__(self):
        from pmd_jax.model.transformer import REMAT_POLICIES

        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat={self.remat!r}; expected one of {REMAT_POLICIES}")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How the policy samples its J rollouts per prompt (METHOD section 2, step 1)."""

    num_samples: int = 8  # J
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop_at_answer: bool = True  # end a rollout after its '#### <answer>' line
    prompt_bucket: int = 64
    # Sample the batch in this many sequential sampler calls of batch_size / waves prompts each:
    # the KV cache is that much smaller (`make plan` says when the full batch does not fit).
    waves: int = 1


@dataclasses.dataclass(frozen=True)
class EvalSchedule:
    """Periodic memory-free evaluation on held-out problems."""

    every_steps: int = 0  # 0 = only at the end (when final is set)
    initial: bool = False  # also evaluate the starting params (logged as step 0) in a fresh run
    final: bool = True
    split: str = "test"
    num_problems: int = 64
    num_samples: int = 4
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 256
    batch_size: int = 16
    with_memory: bool = False  # also evaluate with retrieved behaviours in the prompt


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; `experiments/NAME.py` defines one as CONFIG."""

    name: str = "run"
    algorithm: str = "pmd"  # grpo | sdpo | pmd
    ablation: str = "none"  # none | pmd_transient | frozen_memory | frozen_policy
    granularity: str = "exp+ins+beh"  # memory levels PMD uses: exp | exp+ins | exp+ins+beh
    frozen_memory_path: str = ""  # memory JSON for the frozen_memory ablation
    total_steps: int = 100
    seed: int = 0
    teacher_tau: float = 0.05  # EMA rate of the teacher parameters; 0 = frozen base teacher
    tensorboard: bool = True
    progress: bool = True
    model: ModelSpec = ModelSpec()
    data: DataConfig = DataConfig()
    prompt: PromptConfig = PromptConfig()
    rollout: RolloutConfig = RolloutConfig()
    verifier: VerifierConfig = VerifierConfig()
    memory: MemoryConfig = MemoryConfig()
    reflect: ReflectConfig = ReflectConfig()
    behaviours: BehaviourConfig = BehaviourConfig()
    teacher: TeacherConfig = TeacherConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalSchedule = EvalSchedule()

    def __post_init__(self):
        for field, allowed in (
            ("algorithm", ALGORITHMS),
            ("ablation", ABLATIONS),
            ("granularity", GRANULARITIES),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"TrainConfig.{field}={getattr(self, field)!r}; expected {allowed}"
                )
        if self.ablation != "none" and self.algorithm != "pmd":
            raise ValueError(f"ablation {self.ablation!r} needs algorithm 'pmd'")
        if self.ablation == "frozen_memory" and not self.frozen_memory_path:
            raise ValueError("ablation 'frozen_memory' needs frozen_memory_path (a memory JSON)")
        if self.total_steps < 1:
            raise ValueError(f"TrainConfig.total_steps={self.total_steps} must be >= 1")


def load_experiment(name_or_path: str) -> TrainConfig:
    """CONFIG of experiments/NAME.py (or of a .py file path)."""
    path = pathlib.Path(name_or_path)
    if path.suffix != ".py":
        path = EXPERIMENTS_DIR / f"{name_or_path}.py"
    if not path.is_file():
        known = sorted(
            p.stem
            for p in EXPERIMENTS_DIR.glob("[!_]*.py")
            if "\nCONFIG = " in p.read_text()  # configs, not drivers such as ablation.py
        )
        raise FileNotFoundError(f"experiment {name_or_path!r}: no file {path}; known: {known}")
    spec = importlib.util.spec_from_file_location(f"pmd_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = getattr(module, "CONFIG", None)
    if not isinstance(config, TrainConfig):
        raise TypeError(
            f"{path}: must define CONFIG = TrainConfig(...), got {type(config).__name__}"
        )
    return config


def _parse_value(text: str, kind: Any, key: str) -> Any:
    """Parse an override string as the field's annotated type."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse_value(text, arg, key)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        item_kind = args[0] if args else str
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return tuple(_parse_value(p, item_kind, key) for p in parts)
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"--set {key}={text!r}: expected a bool (true/false)")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--set {key}={text!r}: expected an int") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--set {key}={text!r}: expected a float") from None
    if kind is str:
        return text
    raise ValueError(f"--set {key}: fields of type {kind} cannot be set from the command line")


# Keys that were removed, with what replaces them (`--set` names the replacement).
REMOVED_KEYS = {
    "log_every": "it was read nowhere: every step is logged (metrics.jsonl, TensorBoard)",
    "teacher.mode": (
        "what the teacher sees is decided by the run plan (pmd_jax/run_plan.py) from algorithm "
        "and granularity: set algorithm=sdpo for the SDPO teacher, or granularity=exp | exp+ins "
        "| exp+ins+beh for PMD's levels (--dry-run prints the teacher's blocks)"
    ),
    "reflect.reflector": (
        "it was renamed: set reflect.backend=policy | base | openai for reflection and "
        "behaviours.backend (same values) for evolution, which reflect.reflector also chose"
    ),
}


def _parse_path(config: Any, path: Sequence[str], text: str, key: str) -> Any:
    """The parsed value of `key` (checked against the field types along `path`)."""
    if key in REMOVED_KEYS:
        raise KeyError(f"--set {key}: this key was removed; {REMOVED_KEYS[key]}")
    if not dataclasses.is_dataclass(config):
        raise KeyError(f"--set {key}: {type(config).__name__} has no fields")
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    head = path[0]
    if head not in names:
        raise KeyError(
            f"--set {key}: unknown key {head!r} in {type(config).__name__}; have {names}"
        )
    current = getattr(config, head)
    if len(path) == 1:
        if dataclasses.is_dataclass(current):
            raise KeyError(f"--set {key}: {head!r} is a section; set one of its fields")
        return _parse_value(text, hints[head], key)
    return _parse_path(current, path[1:], text, key)


def _apply(config: Any, changes: dict[str, Any]) -> Any:
    """One dataclasses.replace per section, so each config validates once, with every change
    of the command line in place (e.g. ablation and frozen_memory_path together)."""
    updates = {
        name: _apply(getattr(config, name), value) if isinstance(value, dict) else value
        for name, value in changes.items()
    }
    return dataclasses.replace(config, **updates)


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Apply `a.b=value` strings (later ones win); unknown keys and unparsable values raise."""
    changes: dict[str, Any] = {}
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"--set {override!r}: expected key=value")
        key, text = (part.strip() for part in override.split("=", 1))
        path = key.split(".")
        if path == ["model"]:
            path = ["model", "name"]  # `--set model=NAME`: the model to start from
        value = _parse_path(config, path, text, key)
        node = changes
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return _apply(config, changes)


def to_dict(config: Any) -> Any:
    """A JSON-able dict of a config tree (for the checkpoint meta and the run directory)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (tuple, list)):
        return [to_dict(v) for v in config]
    return config
