"""pmd_jax: Procedural Memory Distillation in JAX."""
