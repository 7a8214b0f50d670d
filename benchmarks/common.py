"""Shared helpers for benchmarks: machine description, timing, JSON results."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time
from collections.abc import Callable

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def machine_description() -> dict:
    """Where a number was measured: CPU, cores, library versions."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Run `fn` `repeats` times; return (fastest seconds, all seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), times


def write_result(name: str, result: dict) -> pathlib.Path:
    """Write benchmarks/results/<name>.json and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
