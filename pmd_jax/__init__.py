"""pmd_jax: Procedural Memory Distillation in JAX."""

from pmd_jax.cpu_flags import add_cpu_xla_flags

add_cpu_xla_flags()  # before any JAX computation: XLA reads XLA_FLAGS once (see cpu_flags.py)
