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


@contextlib.contextmanager
def on_mesh(mesh):
    """Trace the enclosed code as part of a program on `mesh` (None: nothing changes). Unlike
    `jax.set_mesh` it may be entered inside `jax.jit`."""
    token = _MESH.set(mesh)
    try:
        yield
    finally:
        _MESH.reset(token)
