"""Multi-host runs: join the runtime, let one process prepare shared files, and check every step
that all processes hold the same host state.

How a multi-host step works: every process runs the whole loop. The host phases (verify, memory,
prompts, teacher contexts) run on every process on the same global batch and are deterministic,
so their results are equal everywhere; the device phases (sampling, embeddings, the update) run
once on the global mesh, with inputs built from those equal host values (`sharding.put`, each
process filling its own devices) and outputs gathered back to every host (`sharding.to_host`).
`check_consistent` makes "equal everywhere" a checked fact rather than an assumption: a mismatch
stops the run with the step and the field that differ.

Joining (`initialize`): explicit coordinator settings from `MeshConfig` or the environment
($PMD_COORDINATOR_ADDRESS, $PMD_NUM_PROCESSES, $PMD_PROCESS_ID: what `pmd_jax.launch` sets), else
`mesh.distributed=true` lets JAX detect the cluster (TPU VMs, SLURM). $PMD_CPU_COLLECTIVES picks
the CPU collectives (gloo) for multi-process CPU runs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import numpy as np

from pmd_jax.sharding import MeshConfig

ENV_VARS = {
    "coordinator_address": "PMD_COORDINATOR_ADDRESS",
    "num_processes": "PMD_NUM_PROCESSES",
    "process_id": "PMD_PROCESS_ID",
}
CPU_COLLECTIVES_ENV = "PMD_CPU_COLLECTIVES"

T = TypeVar("T")


class InconsistentHostsError(RuntimeError):
    """Processes of one run hold different host state (rollouts, memory, ...)."""


def cluster_args(config: MeshConfig, environ: Mapping[str, str] = os.environ) -> dict | None:
    """The arguments for `jax.distributed.initialize`: None when the run is single-process,
    {} to let JAX detect the cluster (mesh.distributed with nothing named), else all three of
    coordinator_address, num_processes, process_id (config fields first, then the environment)."""
    address = config.coordinator_address or environ.get(ENV_VARS["coordinator_address"], "")
    try:
        count = config.num_processes or int(environ.get(ENV_VARS["num_processes"], "0"))
        index = (
            config.process_id
            if config.process_id >= 0
            else int(environ.get(ENV_VARS["process_id"], "-1"))
        )
    except ValueError as err:
        raise ValueError(f"multi-host settings: {err} (in {sorted(ENV_VARS.values())})") from None
    given = {
        "coordinator_address": bool(address),
        "num_processes": count > 0,
        "process_id": index >= 0,
    }
    if any(given.values()) and not all(given.values()):
        missing = [f"mesh.{k} (or ${ENV_VARS[k]})" for k, ok in given.items() if not ok]
        raise ValueError(f"multi-host settings: set {', '.join(missing)} as well, or none of them")
    if all(given.values()):
        if not index < count:
            raise ValueError(f"mesh.process_id={index} must be < mesh.num_processes={count}")
        return {"coordinator_address": address, "num_processes": count, "process_id": index}
    return {} if config.distributed else None


def initialize(config: MeshConfig) -> None:
    """Join the multi-host runtime when the run is configured for one (idempotent)."""
    args = cluster_args(config)
    if args is None or jax.distributed.is_initialized():
        return
    collectives = os.environ.get(CPU_COLLECTIVES_ENV)
    if collectives:
        jax.config.update("jax_cpu_collectives_implementation", collectives)
    jax.distributed.initialize(**args)


def is_primary() -> bool:
    """Process 0: the one that writes logs, metrics and reports."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def primary_first(name: str, fn: Callable[[], T]) -> T:
    """Run `fn` on process 0, then on the others once it is done (datasets, caches, tokenizers:
    process 0 writes the files, the others find them ready)."""
    if jax.process_count() == 1:
        return fn()
    if is_primary():
        result = fn()
        barrier(name)
        return result
    barrier(name)
    return fn()


def _leaves(name: str, tree: Any) -> list[tuple[str, np.ndarray]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = []
    for path, leaf in flat:
        suffix = "".join(
            f".{getattr(k, 'name', getattr(k, 'key', getattr(k, 'idx', k)))}" for k in path
        )
        out.append((name + suffix, np.asarray(leaf)))
    return out


def digest(array: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint of an array's dtype, shape and bytes, as [2] uint32."""
    array = np.ascontiguousarray(array)
    hasher = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    hasher.update(array.tobytes())
    return np.frombuffer(hasher.digest()[:8], np.uint32).copy()


def fingerprints(fields: Mapping[str, Any]) -> tuple[list[str], np.ndarray]:
    """Leaf names ("memory.experience.tokens", ...) and their digests [F, 2] uint32."""
    named = [leaf for name, tree in fields.items() for leaf in _leaves(name, tree)]
    names = [name for name, _ in named]
    return names, np.stack([digest(a) for _, a in named]) if named else np.zeros((0, 2), np.uint32)


def check_consistent(step: int, fields: Mapping[str, Any]) -> None:
    """Raise InconsistentHostsError naming the step and the first field whose value differs
    between processes. fields: name -> array or pytree of arrays (host values)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    names, local = fingerprints(fields)
    table = np.asarray(multihost_utils.process_allgather(local))  # [P, F, 2]
    for index, name in enumerate(names):
        differ = [
            p for p in range(table.shape[0]) if not np.array_equal(table[p, index], table[0, index])
        ]
        if differ:
            raise InconsistentHostsError(
                f"step {step}: {name} differs across processes (processes {differ} vs process 0); "
                "the host phases must be deterministic and see the same data on every process"
            )
