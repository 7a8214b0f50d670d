"""pmd_jax: Procedural Memory Distillation in JAX."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "chex>=0.1.92,<0.2",
    "sentencepiece>=0.2.0,<0.3",
    "tensorflow-datasets>=4.9.10,<4.10",
    "grain>=0.2.18,<0.3",
    "array_record>=0.8,<0.9",
    "importlib_resources>=6",
    "tokenizers>=0.22,<0.24",
    "gguf>=0.19,<0.20",
    "safetensors>=0.4",
    "numpy>=1.26,<3",
    "tqdm>=4.66",
    "tensorboardX>=2.6,<3",
    "matplotlib>=3.8",
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-xdist>=3.5",
    "hypothesis>=6.100",
    "torch==2.13.0",
    "transformers>=5.0",
    "accelerate>=1.0",
    "ruff>=0.6",
    "setuptools>=70.1",  # builds wheels without the `wheel` package (tests/test_packaging.py)
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
    # The TPU compiler, for ahead-of-time TPU compiles on any host (tests/test_tpu_compile.py,
    # `make plan`); the version jax 0.10.2's own `jax[tpu]` extra pins. Wheels: Linux x86_64.
    "libtpu==0.0.42.*; platform_system == 'Linux' and platform_machine == 'x86_64'",
]

setup(
    name="pmd_jax",
    version="0.1.0",
    description="Procedural Memory Distillation (PMD) for self-improving LMs, in JAX.",
    # kernels/ (the Pallas kernels, at the top of the checkout) installs as pmd_jax.kernels, so
    # nothing named `kernels` lands in site-packages (Hugging Face's `kernels` package keeps its
    # name); experiments/ stays in the checkout (`--exp NAME` reads experiments/NAME.py there).
    packages=find_packages(include=["pmd_jax", "pmd_jax.*"]) + ["pmd_jax.kernels"],
    package_dir={"pmd_jax.kernels": "kernels"},
    python_requires=">=3.10",
    package_data={"pmd_jax.model": ["presets/*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
)
