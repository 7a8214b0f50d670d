"""XLA flags for the CPU backend, set when pmd_jax is imported (measured in BENCHMARKS.md).

`--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK fusions) sends the sampler's small
matmuls ([32, 576] x [576, 1536]-sized, one per layer and token) to XLA's Eigen dots, which split
each one across the cores; YNNPACK ran each on one core. Measured with SmolLM2-135M, 32 rows,
64 + 64 tokens, greedy `sample` (best of 3, two rounds): 12.9 / 13.9 s with the flag, 17.7 /
19.4 s without; the train step is unchanged (76 vs 72 tokens/s, within noise).

Measured but not adopted: with no YNNPACK fusion at all, XLA also rewrites reductions into trees
that materialise their input (`logsumexp` over [4096, 49152] float32 allocates a 0.77 GiB
exp(logits - max) buffer); `--xla_cpu_experimental_ynn_fusion_type=reduce` (YNNPACK reductions,
Eigen dots) allocates nothing that size at the same sampler and train-step speed (within noise),
but it changes the reductions' float results, and with them the seeded tiny runs the tests check
(the tiny PMD run ended with an empty behaviour bank).

XLA reads XLA_FLAGS once, when JAX creates its CPU client, so this only takes effect when pmd_jax
is imported before the first JAX computation. A flag the user already put in XLA_FLAGS is left as
they set it; PMD_XLA_CPU_FLAGS=0 turns the whole thing off. GPU and TPU backends ignore CPU flags.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)
OPT_OUT_ENV = "PMD_XLA_CPU_FLAGS"


def add_cpu_xla_flags(env: MutableMapping[str, str] = os.environ) -> str:
    """Append each CPU_XLA_FLAGS entry whose name is not already in env["XLA_FLAGS"]; returns it."""
    current = env.get("XLA_FLAGS", "")
    if env.get(OPT_OUT_ENV, "1") == "0":
        return current
    chosen = {part.split("=", 1)[0] for part in current.split()}
    added = [flag for flag in CPU_XLA_FLAGS if flag.split("=", 1)[0] not in chosen]
    if added:
        env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return env.get("XLA_FLAGS", "")
