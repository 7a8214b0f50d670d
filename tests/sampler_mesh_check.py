"""The sampler on fake CPU devices vs one device; run by tests/test_sampler_mesh.py as a script
(XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before JAX starts).

Prints one JSON object: per (architecture, temperature, mesh) whether the tokens equal the
1-device run, the rows each device holds, and the collectives inside the compiled while-loop
bodies; the per-device flops of the 1-device and the data=8 programs.
"""

from __future__ import annotations

import json
import re
import sys

import jax
import numpy as np
from test_sampling import _tiny  # the sampling tests' small models (this script runs from tests/)

from pmd_jax import sharding
from pmd_jax.model.config import ModelConfig
from pmd_jax.model.transformer import init_params
from pmd_jax.sampling import SampleConfig, left_pad, sample_program

MESHES = ((8, 1, 1), (2, 4, 1), (2, 2, 2), (4, 1, 2))
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def model(architecture: str) -> tuple[ModelConfig, dict]:
    config = _tiny(architecture, vocab_size=256, tie_embeddings=architecture == "llama")
    params = init_params(config, jax.random.PRNGKey(0))
    # Norm scales off 1 as well, so every weight matters.
    noise = jax.random.PRNGKey(1)
    params = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(noise, x.shape), params)
    return config, params


def computations(hlo: str) -> dict[str, list[str]]:
    """HLO text -> {computation name: its instruction lines}."""
    comps: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if header and not line.startswith(" "):
            name = header.group(1)
            comps[name] = []
        elif line.startswith("}"):
            name = None
        elif name is not None:
            comps[name].append(line)
    return comps


def loop_collectives(hlo: str) -> list[list[str]]:
    """[op, result shape] of every collective in a while-loop body (and what the body calls)."""
    comps = computations(hlo)
    stack = [
        body
        for lines in comps.values()
        for line in lines
        for body in re.findall(r"\bwhile\(.*body=%?([\w.\-]+)", line)
    ]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            for refs in re.findall(
                r"(?:calls|to_apply|body|condition|branch_computations)=\{?([%\w.\-, ]+)\}?", line
            ):
                stack.extend(ref.strip().lstrip("%") for ref in refs.split(","))
    found = []
    pattern = r"=\s*(\S+)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\("
    for name in sorted(seen):
        for line in comps[name]:
            match = re.search(pattern, line)
            if match:
                found.append([match.group(2), match.group(1)])
    return found


def compile_on(mesh, params, config, tokens, mask, sample_config):
    args = (
        sharding.shard_params(params, mesh),
        config,
        *sharding.replicate((tokens, mask, jax.random.PRNGKey(5)), mesh),
        sample_config,
        None,
        mesh,
    )
    compiled = sample_program.lower(*args).compile()
    dynamic = [a for i, a in enumerate(args) if i not in (1, 5, 7)]
    return compiled, dynamic


def main() -> None:
    assert jax.device_count() == 8, "run with --xla_force_host_platform_device_count=8"
    single = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), jax.devices()[:1])
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 256, size=int(rng.integers(3, 20))).tolist() for _ in range(8)]
    tokens, mask = left_pad(prompts, 0, bucket=16)
    report: dict = {"runs": [], "flops": {}}
    for architecture in ("llama", "qwen3"):
        config, params = model(architecture)
        for temperature in (0.0, 1.0):
            sample_config = SampleConfig(
                max_new_tokens=12, temperature=temperature, num_samples=4, prefill_bucket=0
            )
            compiled, dynamic = compile_on(single, params, config, tokens, mask, sample_config)
            reference = np.asarray(compiled(*dynamic).tokens)
            if architecture == "llama" and temperature == 1.0:
                report["flops"]["one_device"] = compiled.cost_analysis()["flops"]
            for shape in MESHES:
                mesh = sharding.make_mesh(sharding.MeshConfig(*shape))
                compiled, dynamic = compile_on(mesh, params, config, tokens, mask, sample_config)
                out = compiled(*dynamic)
                if architecture == "llama" and temperature == 1.0 and shape == (8, 1, 1):
                    report["flops"]["data8"] = compiled.cost_analysis()["flops"]
                report["runs"].append(
                    {
                        "architecture": architecture,
                        "temperature": temperature,
                        "mesh": shape,
                        "rows": int(reference.shape[0]),
                        "equal": bool(np.array_equal(np.asarray(out.tokens), reference)),
                        "shard_rows": sorted(
                            {s.data.shape[0] for s in out.tokens.addressable_shards}
                        ),
                        "loop_collectives": loop_collectives(compiled.as_text()),
                    }
                )
            # Rows that do not divide data x fsdp: 3 prompts x 4 on 8 devices, padded and dropped.
            if architecture == "llama":
                mesh = sharding.make_mesh(sharding.MeshConfig(8, 1, 1))
                few = compile_on(single, params, config, tokens[:3], mask[:3], sample_config)
                padded = compile_on(mesh, params, config, tokens[:3], mask[:3], sample_config)
                a, b = (np.asarray(c(*d).tokens) for c, d in (few, padded))
                report.setdefault("padded", []).append(
                    {
                        "temperature": temperature,
                        "rows": a.shape[0],
                        "equal": bool(np.array_equal(a, b)),
                    }
                )
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
