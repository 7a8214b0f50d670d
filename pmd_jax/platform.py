"""The platform programs are traced for: the default backend, or the target of an ahead-of-time
compile (`pmd_jax.plan` lowers for a TPU topology from a CPU host).

Platform-dependent choices made while tracing (splash vs cudnn attention, a Pallas kernel compiled
or run in interpret mode) read `target_backend()`, so they follow the devices being compiled for
rather than the host's backend.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("pmd_target", default=None)


def target_backend() -> str:
    """ "tpu" | "gpu" | "cpu": the compile target when one is set, else jax.default_backend()."""
    return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def compile_for(platform: str):
    """Trace the enclosed programs for `platform` ("tpu", "gpu" or "cpu")."""
    if platform not in ("tpu", "gpu", "cpu"):
        raise ValueError(f"compile_for({platform!r}): expected tpu, gpu or cpu")
    token = _TARGET.set(platform)
    try:
        yield
    finally:
        _TARGET.reset(token)


_MESH: contextvars.ContextVar = contextvars.ContextVar("pmd_mesh", default=None)


def traced_mesh():
    """The device mesh the program being traced is laid out on (None: one device, or not set).
    Kernels that XLA cannot partition (Pallas/Mosaic) read it to run per shard (shard_map)."""
    return _MESH.get()


_LAYER_SPEC: contextvars.ContextVar = contextvars.ContextVar("pmd_layer_spec", default=None)


def traced_layer_spec():
    """How the scanned layers pin their weights (see `on_mesh`); None: no pin."""
    return _LAYER_SPEC.get()


@contextlib.contextmanager
def on_mesh(mesh, layer_spec=None):
    """Trace the enclosed code as part of a program on `mesh` (None: nothing changes). Unlike
    `jax.set_mesh` it may be entered inside `jax.jit`.

    layer_spec: (name, one layer's shape, mesh) -> PartitionSpec of one layer's slice of a
    stacked weight (`sharding.layer_param_spec`). The scanned layers constrain each slice to it,
    so the layout inside the layer loop is ours rather than the partitioner's guess: an FSDP-split
    layer is gathered where it is used, one layer at a time (the lean Qwen3-8B step on v4-8: 0.22
    GiB fewer temporaries per chip, one all-gather fewer; docs/PLANS.md)."""
    token = _MESH.set(mesh)
    spec_token = _LAYER_SPEC.set(layer_spec if mesh is not None else None)
    try:
        yield
    finally:
        _LAYER_SPEC.reset(spec_token)
        _MESH.reset(token)
