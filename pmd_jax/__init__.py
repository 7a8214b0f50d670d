"""pmd_jax: Procedural Memory Distillation in JAX."""

import glob
import os
import sys


def _no_accelerator_devices() -> bool:
    """True when the host has no TPU (/dev/accel*, /dev/vfio/N), NVIDIA (/dev/nvidia0...) or AMD
    (/dev/kfd) device nodes."""
    patterns = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")
    return not any(glob.glob(pattern) for pattern in patterns)


# libtpu (in the test extra, for ahead-of-time TPU compiles) makes jax try a TPU first on every
# host: on one without accelerators that logs pages of TPU init errors and costs ~2 s at start.
# There the only backend is the CPU anyway; JAX_PLATFORMS set by the user always wins.
if "JAX_PLATFORMS" not in os.environ and "jax" not in sys.modules and _no_accelerator_devices():
    os.environ["JAX_PLATFORMS"] = "cpu"
