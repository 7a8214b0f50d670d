"""Orbax checkpoints of a training run: everything needed to continue exactly.

One step directory holds four items:
- `params`: the student parameters alone (what `restore_params` reads for memory-free eval);
- `train`: optimizer state, teacher parameters, step counters;
- `memory`: the MemoryState pytree (absent for GRPO/SDPO runs);
- `meta`: JSON: data iterator state, RNG key, the step's metrics, the run config.

Saves are asynchronous (orbax writes in a background thread; the next save or `close` waits).
Retention keeps the newest `keep_last` steps plus the `keep_best` steps with the best eval metric.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

ITEMS = ("params", "train", "memory", "meta")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to save and what to keep."""

    every_steps: int = 50  # 0 = only at the end
    keep_last: int = 3
    keep_best: int = 1  # 0 = no best-by-metric retention
    best_metric: str = "eval/avg_at_k"
    best_mode: str = "max"  # "max" or "min"
    async_save: bool = True

    def __post_init__(self):
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"CheckpointConfig.best_mode={self.best_mode!r}; expected max or min")
        if self.every_steps < 0 or self.keep_last < 1 or self.keep_best < 0:
            raise ValueError("CheckpointConfig: every_steps >= 0, keep_last >= 1, keep_best >= 0")


def _preservation(config: CheckpointConfig):
    policies = [checkpoint_managers.LatestN(n=config.keep_last)]
    if config.keep_best:
        policies.append(
            checkpoint_managers.BestN(
                get_metric_fn=lambda metrics: metrics[config.best_metric],
                reverse=config.best_mode == "min",
                n=config.keep_best,
                keep_checkpoints_without_metrics=False,
            )
        )
    return checkpoint_managers.AnyPreservationPolicy(policies)


def manager(directory: str | pathlib.Path, config: CheckpointConfig = CheckpointConfig()):
    """A CheckpointManager over `directory` (created if missing) with our items and retention."""
    options = ocp.CheckpointManagerOptions(
        preservation_policy=_preservation(config),
        enable_async_checkpointing=config.async_save,
        create=True,
    )
    return ocp.CheckpointManager(
        pathlib.Path(directory).absolute(), options=options, item_names=ITEMS
    )


def _to_json(value: Any) -> Any:
    """numpy/jax scalars and arrays -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save(
    mngr: ocp.CheckpointManager,
    step: int,
    *,
    params,
    train,
    memory,
    meta: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> bool:
    """Save one step (asynchronously when configured). `metrics` (e.g. the eval result) rank
    checkpoints for best-N retention; pass None when the step was not evaluated."""
    args = {
        "params": ocp.args.StandardSave(params),
        "train": ocp.args.StandardSave(train),
        "meta": ocp.args.JsonSave(_to_json(meta)),
    }
    if memory is not None:
        args["memory"] = ocp.args.StandardSave(memory)
    return mngr.save(
        step,
        args=ocp.args.Composite(**args),
        metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
    )


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore(
    mngr: ocp.CheckpointManager, step: int | None, *, params, train, memory
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Restore (params, train, memory, meta) at `step` (None = latest) into the structures,
    shapes, dtypes and shardings of the given targets."""
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
    args = {
        "params": ocp.args.StandardRestore(_abstract(params)),
        "train": ocp.args.StandardRestore(_abstract(train)),
        "meta": ocp.args.JsonRestore(),
    }
    if memory is not None:
        args["memory"] = ocp.args.StandardRestore(_abstract(memory))
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
    memory_out = restored["memory"] if memory is not None else None
    return restored["params"], restored["train"], memory_out, restored["meta"]


def _step_dir(path: pathlib.Path, step: int | None) -> tuple[pathlib.Path, int]:
    """A run's checkpoint directory (or one step directory) -> (run directory, step)."""
    if (path / "params").is_dir() and path.name.isdigit():
        return path.parent, int(path.name)
    steps = sorted(
        int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / "params").is_dir()
    )
    if not steps:
        raise FileNotFoundError(f"{path}: no checkpoint steps (directories <step>/params)")
    if step is None:
        return path, steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"{path}: no step {step}; have {steps}")
    return path, step


def restore_params(ckpt_dir: str | pathlib.Path, step: int | None = None, target=None):
    """The student parameters alone from a run's checkpoint dir (latest step by default) or a step
    dir. With `target` (a params pytree or ShapeDtypeStructs) the arrays take its dtypes and
    shardings; without, they come back as host numpy arrays."""
    path = pathlib.Path(ckpt_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    run_dir, step = _step_dir(path, step)
    checkpointer = ocp.StandardCheckpointer()
    item = run_dir / str(step) / "params"
    if target is None:
        return checkpointer.restore(item)
    return checkpointer.restore(item, _abstract(target))


def read_meta(ckpt_dir: str | pathlib.Path, step: int | None = None) -> dict[str, Any]:
    """The JSON `meta` item (data state, rng, metrics, config) of a step."""
    run_dir, step = _step_dir(pathlib.Path(ckpt_dir), step)
    return ocp.JsonCheckpointHandler().restore(run_dir / str(step) / "meta")
