"""A child process for tests/test_launch.py: `python -m launch_child MODE [DIR]`.

Modes (PMD_PROCESS_ID / PMD_NUM_PROCESSES come from pmd_jax.launch):
  env       print the launcher's variables (one to stderr) and exit 0.
  fail DIR  process 0 writes DIR/p0.pid and sleeps 60 s; process 1 waits for that file, exits 1.
  sleep DIR every process writes DIR/p<i>.pid and sleeps 60 s.
  stubborn DIR  every process ignores SIGTERM, process 0 also starts a `sleep` grandchild; pids go
            to DIR/p<i>.pid and DIR/grandchild.pid; then sleep 60 s (for --timeout + SIGKILL).
  selfkill  process 1 SIGKILLs itself; the others sleep 60 s.
  jax       jax.distributed.initialize over gloo; print device/process counts and an allgather.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

VARIABLES = (
    "PMD_PROCESS_ID",
    "PMD_NUM_PROCESSES",
    "PMD_COORDINATOR_ADDRESS",
    "PMD_CPU_COLLECTIVES",
    "JAX_PLATFORMS",
    "XLA_FLAGS",
    "PYTHONUNBUFFERED",
)


def say(text: str) -> None:
    """One write per line, so a C++ thread writing to the same pipe cannot split it."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def process_id() -> int:
    return int(os.environ["PMD_PROCESS_ID"])


def write_pid(path: pathlib.Path, pid: int) -> None:
    """Write atomically, so a reader never sees a half-written file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(pid))
    tmp.rename(path)


def wait_for(path: pathlib.Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def mode_env() -> int:
    for name in VARIABLES:
        print(f"{name}={os.environ.get(name)}")
    print(f"stderr from {process_id()}", file=sys.stderr)
    return 0


def mode_fail(directory: pathlib.Path) -> int:
    if process_id() == 0:
        write_pid(directory / "p0.pid", os.getpid())
        print("process 0 sleeping", flush=True)
        time.sleep(60)
        return 0
    wait_for(directory / "p0.pid")
    print("process 1 failing", flush=True)
    return 1


def mode_sleep(directory: pathlib.Path) -> int:
    write_pid(directory / f"p{process_id()}.pid", os.getpid())
    print(f"process {process_id()} sleeping", flush=True)
    time.sleep(60)
    return 0


def mode_stubborn(directory: pathlib.Path) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if process_id() == 0:
        grandchild = subprocess.Popen(["sleep", "60"])
        write_pid(directory / "grandchild.pid", grandchild.pid)
    write_pid(directory / f"p{process_id()}.pid", os.getpid())
    print(f"process {process_id()} ignoring SIGTERM", flush=True)
    time.sleep(60)
    return 0


def mode_selfkill() -> int:
    if process_id() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
    return 0


def mode_jax() -> int:
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ["PMD_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["PMD_NUM_PROCESSES"]),
        process_id=process_id(),
    )
    say(f"jax {jax.__version__}")
    say(f"device_count={jax.device_count()}")
    say(f"local_device_count={jax.local_device_count()}")
    say(f"process_count={jax.process_count()}")
    say(f"process_index={jax.process_index()}")
    gathered = multihost_utils.process_allgather(np.array([10 + process_id()]))
    say(f"allgather={np.asarray(gathered).ravel().tolist()}")
    jax.distributed.shutdown()
    return 0


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "env":
        return mode_env()
    if mode == "fail":
        return mode_fail(pathlib.Path(argv[1]))
    if mode == "sleep":
        return mode_sleep(pathlib.Path(argv[1]))
    if mode == "stubborn":
        return mode_stubborn(pathlib.Path(argv[1]))
    if mode == "selfkill":
        return mode_selfkill()
    if mode == "jax":
        return mode_jax()
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
