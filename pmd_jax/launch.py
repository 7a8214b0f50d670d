"""A local multi-process launcher: test multi-host training on one machine.

    python -m pmd_jax.launch --processes 2 --devices-per-process 2 -- --exp tiny --workdir W

starts `--processes` copies of `python -m pmd_jax.train <arguments after -->` (or `--module MOD`)
on this machine, each a "host" with `--devices-per-process` CPU devices, all joined through a
coordinator on 127.0.0.1:<free port>. Each child gets in its environment
PMD_COORDINATOR_ADDRESS, PMD_NUM_PROCESSES, PMD_PROCESS_ID (which the training code passes to
`jax.distributed.initialize`), PMD_CPU_COLLECTIVES=gloo, JAX_PLATFORMS=cpu, XLA_FLAGS with
--xla_force_host_platform_device_count=D, and JAX_COORDINATOR_BIND_ADDRESS=127.0.0.1:<port>
(without it jax.distributed's coordinator in process 0 listens on every interface).

Every line a child prints is written to this process's stdout prefixed with `[p<i>] `. When a
child exits non-zero the others are stopped (SIGTERM, then SIGKILL after a grace period) and the
launcher exits with that child's code (128 + N for a child killed by signal N); `--timeout`
stops everything and exits 124. Each child runs in its own session, so stopping it stops its
descendants too.

This is only for testing multi-host code paths locally. On a real TPU pod slice or a SLURM
allocation you run the same train command on every host instead (e.g. `gcloud compute tpus
tpu-vm ssh ... --worker=all --command "python -m pmd_jax.train ..."` or `srun python -m
pmd_jax.train ...`), and `jax.distributed.initialize()` finds its peers from the TPU or SLURM
environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO

HOST = "127.0.0.1"
DEFAULT_MODULE = "pmd_jax.train"
KILL_GRACE_S = 5.0  # SIGTERM -> SIGKILL
POLL_S = 0.05
TIMEOUT_EXIT = 124
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_DEVICE_COUNT_RE = re.compile(r"(?<!\S)" + re.escape(DEVICE_COUNT_FLAG) + r"(=\S*)?(?!\S)")


@dataclasses.dataclass(frozen=True)
class LaunchArgs:
    """Parsed command line: launcher options and the arguments passed on to every child."""

    processes: int
    devices_per_process: int
    module: str
    timeout: float | None
    child_args: tuple[str, ...]


class _Terminated(Exception):
    """Raised in the main thread when the launcher receives SIGTERM."""


def parse_args(argv: Sequence[str]) -> LaunchArgs:
    """Split `argv` at the first `--`: launcher options before it, child arguments after."""
    argv = list(argv)
    if "--" in argv:
        split = argv.index("--")
        own, child_args = argv[:split], argv[split + 1 :]
    else:
        own, child_args = argv, []
    parser = argparse.ArgumentParser(
        prog="python -m pmd_jax.launch",
        description="Run N local processes of a module as a multi-host JAX job on CPU.",
        epilog="Arguments after `--` go to every child, e.g. -- --exp tiny --workdir W",
    )
    parser.add_argument("--processes", type=int, required=True, help="number of processes")
    parser.add_argument(
        "--devices-per-process", type=int, default=1, help="CPU devices in each process"
    )
    parser.add_argument("--module", default=DEFAULT_MODULE, help="python module each child runs")
    parser.add_argument(
        "--timeout", type=float, default=None, help="stop everything after this many seconds"
    )
    ns = parser.parse_args(own)
    if ns.processes < 1:
        parser.error("--processes must be >= 1")
    if ns.devices_per_process < 1:
        parser.error("--devices-per-process must be >= 1")
    if ns.timeout is not None and ns.timeout <= 0:
        parser.error("--timeout must be > 0")
    return LaunchArgs(
        processes=ns.processes,
        devices_per_process=ns.devices_per_process,
        module=ns.module,
        timeout=ns.timeout,
        child_args=tuple(child_args),
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def with_device_count(xla_flags: str, devices: int) -> str:
    """`xla_flags` with --xla_force_host_platform_device_count=devices (any old value replaced)."""
    kept = _DEVICE_COUNT_RE.sub("", xla_flags).split()
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={devices}"])


def child_env(
    base_env: Mapping[str, str],
    process_id: int,
    num_processes: int,
    devices_per_process: int,
    port: int,
) -> dict[str, str]:
    """The environment of child `process_id`: `base_env` plus the multi-host variables."""
    env = dict(base_env)
    env.update(
        PMD_COORDINATOR_ADDRESS=f"{HOST}:{port}",
        # jax.distributed's coordinator (process 0) binds [::]:port, every interface, unless told.
        JAX_COORDINATOR_BIND_ADDRESS=f"{HOST}:{port}",
        PMD_NUM_PROCESSES=str(num_processes),
        PMD_PROCESS_ID=str(process_id),
        PMD_CPU_COLLECTIVES="gloo",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=with_device_count(base_env.get("XLA_FLAGS", ""), devices_per_process),
        PYTHONUNBUFFERED="1",
    )
    return env


def exit_code(returncode: int) -> int:
    """A shell-style exit code: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _describe(returncode: int) -> str:
    """'exited with 1' or 'was killed by signal 9 (exit 137)'."""
    if returncode < 0:
        return f"was killed by signal {-returncode} (exit {exit_code(returncode)})"
    return f"exited with {returncode}"


def _pump(stream: IO[bytes], prefix: str, out: IO[str], lock: threading.Lock) -> None:
    """Copy `stream` to `out` line by line, each line prefixed, until it closes."""
    with stream:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            with lock:
                out.write(f"{prefix}{line}\n")
                out.flush()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the process group (session) of `proc`; gone already is fine."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all(procs: Sequence[subprocess.Popen], grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM every child's group, SIGKILL what is left after `grace_s`, and reap them all."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        _signal_group(proc, signal.SIGKILL)  # also descendants that outlived their parent
    for proc in procs:
        proc.wait()


def start_children(args: LaunchArgs, port: int) -> list[subprocess.Popen]:
    """Start every child in its own session, stdout and stderr merged into one pipe."""
    procs = []
    for i in range(args.processes):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", args.module, *args.child_args],
                env=child_env(os.environ, i, args.processes, args.devices_per_process, port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return procs


def _stop_uninterrupted(procs: Sequence[subprocess.Popen]) -> None:
    """stop_all with Ctrl-C ignored (where we can), so a second one cannot orphan children."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        stop_all(procs)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _first_failure(procs: Sequence[subprocess.Popen]) -> tuple[int, int] | None:
    """(index, returncode) of the first child found exited non-zero, else None."""
    for i, proc in enumerate(procs):
        rc = proc.poll()
        if rc is not None and rc != 0:
            return i, rc
    return None


def supervise(procs: Sequence[subprocess.Popen], timeout: float | None) -> tuple[int, str]:
    """Wait for the children; stop the rest on the first failure or the timeout.

    Returns (launcher exit code, summary line).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        failure = _first_failure(procs)
        if failure is not None:
            i, rc = failure
            stop_all(procs)
            return exit_code(rc), f"launch: process {i} {_describe(rc)}; stopped the others"
        if all(proc.poll() == 0 for proc in procs):
            return 0, f"launch: all {len(procs)} processes exited with 0"
        if deadline is not None and time.monotonic() >= deadline:
            stop_all(procs)
            return TIMEOUT_EXIT, f"launch: timed out after {timeout:g} s; stopped all processes"
        time.sleep(POLL_S)


def _raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM handler: ignore further SIGTERMs while stopping, unwind the main thread."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated()


def run(args: LaunchArgs, out: IO[str] | None = None) -> int:
    """Launch the children, forward their output to `out` (default stdout), return the exit code."""
    out = sys.stdout if out is None else out
    lock = threading.Lock()
    port = free_port()
    with lock:
        out.write(
            f"launch: {args.processes} x `python -m {args.module}` "
            f"({args.devices_per_process} CPU device(s) each), coordinator {HOST}:{port}\n"
        )
        out.flush()
    procs = start_children(args, port)
    readers = [
        threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] ", out, lock), daemon=True)
        for i, p in enumerate(procs)
    ]
    for reader in readers:
        reader.start()
    try:
        code, summary = supervise(procs, args.timeout)
    except (KeyboardInterrupt, _Terminated) as err:
        _stop_uninterrupted(procs)
        interrupted = isinstance(err, KeyboardInterrupt)
        code = 128 + (signal.SIGINT if interrupted else signal.SIGTERM)
        summary = f"launch: {'interrupted' if interrupted else 'terminated'}; stopped all processes"
    for reader in readers:
        reader.join(timeout=KILL_GRACE_S)
    with lock:
        out.write(summary + "\n")
        out.flush()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (see the module docstring)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
