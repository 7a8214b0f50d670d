"""Problems for training and eval: TFDS builders (gsm8k, arith_tfds), the grain pipeline, prompts.

Import the submodules (`pmd_jax.data.pipeline`, `.prompts`, ...); this package imports nothing so
that `pmd_jax.data.arith` stays light.
"""
