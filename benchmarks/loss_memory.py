"""Compiled memory of the distillation divergence: Pallas kernel vs the pure-JAX reference.

For N token rows and vocabulary V, compiles (never runs) the loss value and its gradient w.r.t.
the student logits, as the train step uses it (teacher under stop-gradient, LossConfig defaults:
top_k=100, alpha=1), for `distill_divergence(impl="jax")` and `impl="pallas"`, and reads XLA's
`memory_analysis()`: temp bytes (scratch the computation allocates) and total = arguments + outputs
+ temp. On CPU the kernel is lowered in Pallas interpret mode (a loop over the grid), so its numbers
are those of that loop, an upper bound for a compiled TPU/GPU kernel.
Writes benchmarks/results/loss_memory.json.  Run: `python -m benchmarks.loss_memory`.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from benchmarks.common import machine_description, write_result
from pmd_jax.losses import LossConfig, distill_divergence
from pmd_jax.platform import compile_for

GIB = 2**30


def loss_and_grad_fn(impl: str, config: LossConfig):
    """(student, teacher) logits [N, V] -> (mean divergence, d/d student [N, V]). The kernel is
    compiled or interpreted by the platform traced for (`pmd_jax.platform.compile_for`)."""

    def loss(student_logits, teacher_logits):
        divergence = distill_divergence(
            student_logits,
            teacher_logits,
            alpha=config.alpha,
            top_k=config.top_k,
            temperature=config.temperature,
            tail_epsilon=config.tail_epsilon,
            impl=impl,
        )
        return jnp.mean(divergence)

    return jax.value_and_grad(loss)


def compiled_memory(
    impl: str, rows: int, vocab: int, dtype: str, config: LossConfig, device=None
) -> dict:
    """memory_analysis() of the jit'd loss+grad for logits [rows, vocab] of `dtype`, in bytes,
    compiled for `device` (default: the first local one; a TPU topology's device compiles with
    the TPU compiler and the kernel lowered by Mosaic, not interpreted)."""
    device = device or jax.devices()[0]
    logits = jax.ShapeDtypeStruct(
        (rows, vocab), jnp.dtype(dtype), sharding=SingleDeviceSharding(device)
    )
    start = time.perf_counter()
    with compile_for(device.platform):
        compiled = jax.jit(loss_and_grad_fn(impl, config)).lower(logits, logits).compile()
    compile_s = time.perf_counter() - start
    stats = compiled.memory_analysis()
    argument, output, temp = (
        stats.argument_size_in_bytes,
        stats.output_size_in_bytes,
        stats.temp_size_in_bytes,
    )
    return {
        "argument_bytes": argument,
        "output_bytes": output,
        "temp_bytes": temp,
        "total_bytes": argument + output + temp,
        "compile_seconds": compile_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--vocab", type=int, nargs="+", default=[49152, 151936])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument(
        "--topology", help="compile for one chip of this TPU topology (e.g. v5e:2x4; needs libtpu)"
    )
    args = parser.parse_args()
    config = LossConfig()
    device = None
    if args.topology:
        from pmd_jax.plan import tpu_target

        device = tpu_target(args.topology).devices[0]
    platform = device.platform if device else jax.default_backend()
    cases = []
    for vocab in args.vocab:
        for dtype in args.dtype:
            case = {"rows": args.rows, "vocab": vocab, "dtype": dtype}
            for impl in ("jax", "pallas"):
                case[impl] = compiled_memory(impl, args.rows, vocab, dtype, config, device)
            case["temp_ratio"] = case["pallas"]["temp_bytes"] / max(case["jax"]["temp_bytes"], 1)
            case["total_ratio"] = case["pallas"]["total_bytes"] / case["jax"]["total_bytes"]
            print(
                f"[loss_memory] N={args.rows} V={vocab} {dtype}: temp GiB jax "
                f"{case['jax']['temp_bytes'] / GIB:.2f} pallas {case['pallas']['temp_bytes'] / GIB:.2f}"
                f" | total GiB jax {case['jax']['total_bytes'] / GIB:.2f} pallas "
                f"{case['pallas']['total_bytes'] / GIB:.2f} (ratio {case['total_ratio']:.2f})"
            )
            cases.append(case)
    result = {
        "benchmark": "loss_memory",
        "what": "jit(value_and_grad(mean distill_divergence)) w.r.t. student logits, compiled only",
        "loss_config": {"top_k": config.top_k, "alpha": config.alpha},
        "target": args.topology or jax.default_backend(),
        "backend_note": (
            f"compiled for {device.device_kind} by the TPU compiler (Mosaic kernel, not interpreted)"
            if platform == "tpu"
            else f"backend {platform}: Pallas interpret mode carries every kernel input "
            "through a while loop (and pads it to whole blocks), so each pallas_call copies its "
            "input; these are not the numbers of a compiled TPU/GPU kernel"
        ),
        "machine": machine_description(),
        "cases": cases,
    }
    name = "loss_memory" if platform != "tpu" else "loss_memory_tpu"
    print(f"[loss_memory] wrote {write_result(name, result)}")


if __name__ == "__main__":
    main()
