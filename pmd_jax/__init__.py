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


def _bind_checkout_kernels() -> None:
    """Make the checkout's top-level `kernels/` folder the subpackage `pmd_jax.kernels`.

    A wheel installs `kernels/` as `pmd_jax/kernels/` (setup.py `package_dir`), so nothing named
    `kernels` reaches site-packages. In a checkout (an editable install, or code run from its
    root) there is no `pmd_jax/kernels/` directory: bind the folder here, so that both read
    `pmd_jax.kernels.*`. `kernels/` has no `__init__.py` on purpose: with the checkout's root on
    sys.path, a regular package there would shadow Hugging Face's `kernels` (transformers
    imports it).
    """
    import importlib.machinery
    import importlib.util
    import pathlib

    here = pathlib.Path(__file__).resolve().parent
    folder = here.parent / "kernels"
    if "pmd_jax.kernels" in sys.modules or (here / "kernels").is_dir() or not folder.is_dir():
        return
    spec = importlib.machinery.ModuleSpec("pmd_jax.kernels", None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    sys.modules["pmd_jax.kernels"] = importlib.util.module_from_spec(spec)


_bind_checkout_kernels()
