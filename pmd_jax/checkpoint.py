"""Orbax checkpoints of a training run: everything needed to continue exactly.

One step directory holds four items:
- `params`: the student parameters alone (what `restore_params` reads for memory-free eval);
- `train`: optimizer state, teacher parameters, step counters;
- `memory`: the MemoryState pytree (absent for GRPO/SDPO runs; an older checkpoint's extra
  `frozen` leaf is read and dropped);
- `meta`: JSON: data iterator state, RNG key, the step's metrics, the run config.

Saves are asynchronous (orbax writes in a background thread; the next save or `close` waits).
Retention keeps the newest `keep_last` steps plus the `keep_best` steps with the best eval metric.

A step becomes visible only when complete: orbax writes into `<step>.orbax-checkpoint-tmp-*` and
renames it to `<step>` (with its `_CHECKPOINT_METADATA`) once every item is on disk, so a killed
save leaves a tmp directory that restore ignores. A complete step damaged later (a truncated or
deleted file) makes `restore` warn, move it aside to `<step>.corrupt` and fall back to the next
newest step; `restore_params` on it raises a `CheckpointError` naming it.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

ITEMS = ("params", "train", "memory", "meta")
CORRUPT_SUFFIX = ".corrupt"  # a step directory that failed to restore is renamed, never deleted


class CheckpointError(RuntimeError):
    """A checkpoint directory exists but cannot be read (missing or truncated files)."""


def _describe(err: Exception) -> str:
    """`Type: first line` of an error, cut to 300 characters (tensorstore appends its spec)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:300]}"


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
        # Host (numpy) values: the memory is host state, equal on every process of a multi-host
        # run, so process 0 writes it (a process-local device array is not a global array).
        args["memory"] = ocp.args.StandardSave(jax.tree.map(np.asarray, memory))
    return mngr.save(
        step,
        args=ocp.args.Composite(**args),
        metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
    )


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _restore_step(mngr: ocp.CheckpointManager, step: int, *, params, train, memory):
    args = {
        "params": ocp.args.StandardRestore(_abstract(params)),
        "train": ocp.args.StandardRestore(_abstract(train)),
        "meta": ocp.args.JsonRestore(),
    }
    legacy = memory is not None and _has_frozen_leaf(mngr, step)
    if memory is not None:
        target = jax.tree.map(np.asarray, memory)
        if legacy:  # restore into plain dicts with the old leaf, then drop it
            target = {**flax.serialization.to_state_dict(target), LEGACY_FROZEN: np.asarray(False)}
        args["memory"] = ocp.args.StandardRestore(target)
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
    memory_out = None
    if memory is not None:  # back on this process's default device, as a fresh memory is
        values = restored["memory"]
        if legacy:
            values = {k: v for k, v in values.items() if k != LEGACY_FROZEN}
            values = flax.serialization.from_state_dict(memory, values)
        memory_out = jax.tree.map(jnp.asarray, values)
    return restored["params"], restored["train"], memory_out, restored["meta"]


# Checkpoints written before the RunPlan decided memory updates hold a scalar `frozen` leaf in
# the memory item (MemoryState.frozen, since removed): restore reads it and drops it.
LEGACY_FROZEN = "frozen"


def _has_frozen_leaf(mngr: ocp.CheckpointManager, step: int) -> bool:
    tree = mngr.item_metadata(step)["memory"]
    tree = getattr(tree, "tree", tree)
    return isinstance(tree, dict) and LEGACY_FROZEN in tree


def _set_aside(mngr: ocp.CheckpointManager, step: int) -> pathlib.Path:
    """Rename a step directory that failed to restore to `<step>.corrupt[.N]` (kept for a
    post-mortem; out of the manager's sight so the step can be saved again)."""
    source = pathlib.Path(mngr.directory) / str(step)
    target = source.with_name(f"{step}{CORRUPT_SUFFIX}")
    n = 1
    while target.exists():
        target, n = source.with_name(f"{step}{CORRUPT_SUFFIX}.{n}"), n + 1
    if jax.process_index() == 0:
        source.rename(target)
    mngr.reload()
    return target


def restore(
    mngr: ocp.CheckpointManager, step: int | None, *, params, train, memory
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Restore (params, train, memory, meta) at `step` into the structures, shapes, dtypes and
    shardings of the given targets.

    `step=None` takes the newest step that restores. Newer steps that fail (orbax raises on a
    missing or truncated file) while an older one restores are logged as warnings naming the
    directory and the error, and renamed to `<step>.corrupt`. When no step restores, nothing is
    moved and CheckpointError lists every step's error."""
    if step is not None:
        return _restore_step(mngr, step, params=params, train=train, memory=memory)
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
    failed = []  # (step, error) of newer steps that did not restore
    for candidate in steps:
        try:
            restored = _restore_step(mngr, candidate, params=params, train=train, memory=memory)
        except Exception as err:  # orbax/tensorstore raise many types for damaged files
            failed.append((candidate, err))
            continue
        # An older step restores with the same targets, so the newer ones are damaged (not a
        # changed config): move them aside so their steps can be saved again.
        for bad, err in failed:
            moved = _set_aside(mngr, bad)
            logging.warning(
                "checkpoint %s cannot be restored (%s); moved it to %s, resuming from step %d",
                pathlib.Path(mngr.directory) / str(bad),
                _describe(err),
                moved,
                candidate,
            )
        return restored
    raise CheckpointError(
        f"no checkpoint in {mngr.directory} restores into this run's structures (a changed "
        "config or damaged files):\n"
        + "\n".join(f"step {bad}: {_describe(err)}" for bad, err in failed)
    )


def _steps(run_dir: pathlib.Path) -> list[int]:
    """Complete step directories (in-progress saves are `<step>.orbax-checkpoint-tmp-*`)."""
    return sorted(
        int(p.name) for p in run_dir.iterdir() if p.name.isdigit() and (p / "params").is_dir()
    )


def _step_dir(path: pathlib.Path, step: int | None) -> tuple[pathlib.Path, int]:
    """A run's checkpoint directory (or one step directory) -> (run directory, step)."""
    if (path / "params").is_dir() and path.name.isdigit():
        return path.parent, int(path.name)
    steps = _steps(path)
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
    try:
        if target is None:  # host numpy, whatever mesh saved it (a pod's checkpoint on a laptop)
            metadata = checkpointer.metadata(item).item_metadata.tree
            as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
            return ocp.PyTreeCheckpointer().restore(item, restore_args=as_numpy)
        return checkpointer.restore(item, _abstract(target))
    except Exception as err:  # a damaged step: say which one
        raise CheckpointError(
            f"checkpoint {item} cannot be restored ({_describe(err)}); "
            f"a file is missing or truncated: use another step (have {_steps(run_dir)})"
        ) from err


def read_meta(ckpt_dir: str | pathlib.Path, step: int | None = None) -> dict[str, Any]:
    """The JSON `meta` item (data state, rng, metrics, config) of a step."""
    run_dir, step = _step_dir(pathlib.Path(ckpt_dir), step)
    return ocp.JsonCheckpointHandler().restore(run_dir / str(step) / "meta")
