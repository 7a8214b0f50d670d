"""Device mesh and partition rules: one `jax.sharding.Mesh` with axes (data, fsdp, tensor).

The train step is a single `jax.jit` whose inputs carry `NamedSharding`s built here: the batch is
split over (data, fsdp), every weight matrix over fsdp on one side and tensor on the other
(Megatron-style: column-parallel q/k/v/gate/up, row-parallel o/down), norms replicated. GSPMD
inserts the collectives. A dimension that an axis does not divide stays unsplit on that axis (a
2-layer test model on 8 devices still runs); `partition_report` lists every such leaf.

Sampling (rollouts, reflection, evaluation, embeddings) runs on the same mesh in a second layout,
`sampling_param_shardings`: the training rules with fsdp dropped, so each weight is gathered over
fsdp once per sampling call (rows are split over data x fsdp and every device decodes its own rows
with whole matrices) and stays split over tensor.

Multi-host: every process holds the same host values (the host phases are deterministic and run
on every process), and `put` / `replicate` / `put_rows` build global arrays from them
(`jax.make_array_from_callback`: each process fills its own devices' shards, nothing is sent);
`to_host` gathers a global array back to every process.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape; one of data/fsdp/tensor may be -1 (= all remaining devices)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # Multi-host (pmd_jax/multihost.py). distributed=True with the three below unset: JAX finds
    # the cluster itself (TPU VMs, SLURM). Set them (or $PMD_COORDINATOR_ADDRESS,
    # $PMD_NUM_PROCESSES, $PMD_PROCESS_ID, as `pmd_jax.launch` does) to name it.
    distributed: bool = False
    coordinator_address: str = ""  # host:port of process 0's coordinator
    num_processes: int = 0  # 0: unset
    process_id: int = -1  # -1: unset

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise ValueError(f"MeshConfig: at most one axis may be -1, got {sizes}")
        if any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"MeshConfig: axis sizes must be positive or -1, got {sizes}")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"MeshConfig {sizes}: {num_devices} devices not divisible by {known}"
                )
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"MeshConfig {tuple(sizes)} needs {math.prod(sizes)} devices, have {num_devices}"
            )
        return tuple(sizes)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all, in jax.devices() order)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = config.shape(len(devices))
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), AXES)


# Rules by parameter path (first match wins). Kernels are stacked over layers: [L, in, out].
_RULES: tuple[tuple[str, P], ...] = (
    (r"embed/embedding$", P("tensor", "fsdp")),  # [V, D]
    (r"lm_head/kernel$", P("fsdp", "tensor")),  # [D, V]
    (r"layers/(q|k|v|gate|up)_proj/kernel$", P(None, "fsdp", "tensor")),  # column-parallel
    (r"layers/(o|down)_proj/kernel$", P(None, "tensor", "fsdp")),  # row-parallel
    (r"layers/(q|k|v|gate|up)_proj/bias$", P(None, "tensor")),
    (r".*", P()),  # norms, o/down biases: replicated
)


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drop mesh axes that do not divide their dimension (that dimension is then replicated)."""
    axes = list(spec) + [None] * (len(shape) - len(spec))
    fitted = []
    for dim, axis in zip(shape, axes[: len(shape)], strict=True):
        names = axis if isinstance(axis, tuple) else (axis,)
        size = math.prod(mesh.shape[name] for name in names if name is not None)
        fitted.append(axis if axis is None or dim % size == 0 else None)
    while fitted and fitted[-1] is None:  # P(None, None) and P() mean the same: keep one form
        fitted.pop()
    return P(*fitted)


def param_spec(name: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """PartitionSpec of one parameter from its '/'-joined path and shape."""
    for pattern, spec in _RULES:
        if re.search(pattern, name):
            return _fit(spec, shape, mesh)
    raise AssertionError("the catch-all rule always matches")


def layer_param_spec(name: str, layer_shape: tuple[int, ...], mesh: Mesh) -> P:
    """The training PartitionSpec of one layer's slice of a stacked weight: `name` is its path
    inside the layer ('q_proj/kernel'), `layer_shape` its shape without the leading L. The
    scanned layers pin each slice to it inside the train step (`platform.on_mesh`)."""
    stacked = param_spec(f"layers/{name}", (1, *layer_shape), mesh)
    return P(*tuple(stacked)[1:])


def param_shardings(params, mesh: Mesh):
    """A pytree of NamedSharding matching `params` (arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, param_spec(_path_name(path), tuple(x.shape), mesh)),
        params,
    )


def partition_report(params, mesh: Mesh) -> list[str]:
    """Leaves whose rule asked for an axis that did not divide the dimension (kept replicated)."""
    notes = []
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = _path_name(path)
        wanted = next(spec for pattern, spec in _RULES if re.search(pattern, name))
        got = param_spec(name, tuple(x.shape), mesh)
        if tuple(wanted) != tuple(got)[: len(tuple(wanted))]:
            notes.append(f"{name} {tuple(x.shape)}: wanted {wanted}, using {got}")
    return notes


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis split over (data, fsdp); the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def batch_divisor(mesh: Mesh) -> int:
    """Batch rows must be a multiple of this (the product of the batch axes)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def put(tree, shardings):
    """Global arrays from host values (numpy or local jax arrays) that every process holds alike:
    each process fills only its own devices' shards (`jax.make_array_from_callback`), so this
    works on one process and on many. `shardings`: one Sharding or a pytree matching `tree`."""
    leaves, treedef = jax.tree.flatten(tree)
    if isinstance(shardings, jax.sharding.Sharding):
        targets = [shardings] * len(leaves)
    else:
        targets = treedef.flatten_up_to(shardings)

    def one(x, target):
        if isinstance(x, jax.Array) and x.sharding == target:
            return x
        host = np.asarray(x)
        if not isinstance(x, jax.Array):
            return jax.make_array_from_callback(host.shape, target, lambda index: host[index])
        # A jax array's host value is a view of its buffer, and shards made from a view alias it:
        # nothing placed so could be donated in place (the first SmolLM2 train step allocated a
        # second 2.15 GB state beside the first) and arrays placed from one source (the memory
        # encoder and the policy) shared memory. A copy per shard gives each its own buffers.
        return jax.make_array_from_callback(host.shape, target, lambda index: np.array(host[index]))

    return treedef.unflatten([one(x, t) for x, t in zip(leaves, targets, strict=True)])


def replicate(tree, mesh: Mesh):
    """`put` every leaf fully replicated on the mesh (None leaves stay None)."""
    return put(tree, replicated(mesh))


def put_rows(tree, mesh: Mesh):
    """`put` every array with its leading (row) axis split over (data, fsdp); scalars replicated."""
    divisor = batch_divisor(mesh)

    def target(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim == 0:
            return replicated(mesh)
        if x.shape[0] % divisor:
            raise ValueError(f"batch axis {x.shape[0]} is not a multiple of data*fsdp={divisor}")
        return batch_sharding(mesh, x.ndim)

    return put(tree, jax.tree.map(target, tree))


def shard_batch(batch, mesh: Mesh):
    """A host batch pytree on the mesh, leading axis over (data, fsdp) (= `put_rows`)."""
    return put_rows(batch, mesh)


def shard_params(params, mesh: Mesh):
    """Place a params (or optimizer-state-like) pytree on the mesh by the partition rules."""
    return put(params, param_shardings(params, mesh))


def to_host(tree):
    """numpy copies of a pytree of (possibly multi-process) arrays, whole on every process."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def _without_fsdp(spec: P) -> P:
    """A spec with the fsdp axis removed (also from a tuple of axes)."""

    def drop(axis):
        if isinstance(axis, tuple):
            kept = tuple(a for a in axis if a != "fsdp")
            return kept if len(kept) > 1 else (kept[0] if kept else None)
        return None if axis == "fsdp" else axis

    return P(*(drop(axis) for axis in spec))


def sampling_param_spec(name: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The sampling layout of one parameter: its training rule with fsdp dropped (whole over fsdp,
    still split over tensor), so decoding gathers nothing inside its loop."""
    for pattern, spec in _RULES:
        if re.search(pattern, name):
            return _fit(_without_fsdp(spec), shape, mesh)
    raise AssertionError("the catch-all rule always matches")


def sampling_param_shardings(params, mesh: Mesh):
    """A pytree of NamedSharding for `params` in the sampling layout."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(
            mesh, sampling_param_spec(_path_name(path), tuple(x.shape), mesh)
        ),
        params,
    )


def bytes_per_device(params, mesh, spec_fn=param_spec) -> int:
    """Bytes one device holds of `params` (arrays or ShapeDtypeStructs) laid out by `spec_fn`
    (`param_spec`: training, `sampling_param_spec`: sampling) on `mesh` (anything with a
    `.shape` dict of axis sizes; no devices needed). Replicated dimensions count whole."""
    total = 0
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        spec = spec_fn(_path_name(path), tuple(x.shape), mesh)
        split = 1
        for axis in spec:
            names = axis if isinstance(axis, tuple) else (axis,)
            split *= math.prod(mesh.shape[name] for name in names if name is not None)
        total += math.prod(x.shape) * np.dtype(x.dtype).itemsize // split
    return total


def constrain(x: jax.Array, mesh: Mesh | None, spec: P) -> jax.Array:
    """`with_sharding_constraint` of x to `spec` on `mesh` (axes that do not divide their dimension
    dropped); x unchanged when mesh is None (the single-device program)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, _fit(spec, x.shape, mesh)))


def rows_spec(ndim: int) -> P:
    """Leading axis over the batch axes (data, fsdp), the rest whole."""
    return P(BATCH_AXES, *([None] * (ndim - 1)))
