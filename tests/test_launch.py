"""pmd_jax.launch: child environments, output prefixes, failure/timeout/SIGTERM handling, and a
real 2-process jax.distributed run over gloo on CPU.

The children are tests/launch_child.py (`--module launch_child`, tests/ on PYTHONPATH).
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from pmd_jax import launch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS_DIR = REPO_ROOT / "tests"


def _env() -> dict[str, str]:
    """The launcher's environment: ours with tests/ first on PYTHONPATH (for launch_child)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    return env


def _command(*launcher_args: str, child_args: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pmd_jax.launch",
        "--module",
        "launch_child",
        *launcher_args,
        "--",
        *child_args,
    ]


def run_launcher(
    *launcher_args: str, child_args: tuple[str, ...], timeout: float
) -> tuple[subprocess.CompletedProcess, float]:
    """Run the launcher to completion; (result with stdout+stderr in .stdout, seconds taken)."""
    start = time.monotonic()
    result = subprocess.run(
        _command(*launcher_args, child_args=child_args),
        cwd=REPO_ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    return result, time.monotonic() - start


def read_pid(path: pathlib.Path, output: str) -> int:
    assert path.exists(), f"{path.name} was not written; launcher output:\n{output}"
    return int(path.read_text())


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie holds no resources)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def assert_reaped(pid: int) -> None:
    """A direct child of the launcher: killed and waited for, so the pid is gone entirely."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_child_env_exact():
    base = {"PATH": "/bin", "XLA_FLAGS": "--xla_a=1 --xla_force_host_platform_device_count=8 --b"}
    env = launch.child_env(base, process_id=1, num_processes=2, devices_per_process=2, port=1234)
    assert env == {
        "PATH": "/bin",
        "XLA_FLAGS": "--xla_a=1 --b --xla_force_host_platform_device_count=2",
        "PMD_COORDINATOR_ADDRESS": "127.0.0.1:1234",
        "JAX_COORDINATOR_BIND_ADDRESS": "127.0.0.1:1234",
        "PMD_NUM_PROCESSES": "2",
        "PMD_PROCESS_ID": "1",
        "JAX_PLATFORMS": "cpu",
        "PMD_CPU_COLLECTIVES": "gloo",
        "PYTHONUNBUFFERED": "1",
    }
    assert base["XLA_FLAGS"].endswith("=8 --b")  # not mutated
    env = launch.child_env({"JAX_PLATFORMS": "tpu"}, 0, 4, 3, 99)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
    assert env["JAX_PLATFORMS"] == "cpu" and env["PMD_PROCESS_ID"] == "0"


def test_with_device_count_replaces_only_that_flag():
    flags = "--xla_force_host_platform_device_count=8 --xla_force_host_platform_device_count_x=1"
    assert launch.with_device_count(flags, 2) == (
        "--xla_force_host_platform_device_count_x=1 --xla_force_host_platform_device_count=2"
    )
    assert launch.with_device_count("", 4) == "--xla_force_host_platform_device_count=4"


def test_parse_args_splits_at_double_dash():
    args = launch.parse_args(
        ["--processes", "2", "--devices-per-process", "2", "--", "--exp", "tiny", "--timeout", "1"]
    )
    assert args == launch.LaunchArgs(
        2, 2, "pmd_jax.train", None, ("--exp", "tiny", "--timeout", "1")
    )
    args = launch.parse_args(["--processes", "3", "--module", "m", "--timeout", "5"])
    assert (args.processes, args.module, args.timeout, args.child_args) == (3, "m", 5.0, ())


def test_exit_code_and_free_port():
    assert launch.exit_code(0) == 0 and launch.exit_code(3) == 3
    assert launch.exit_code(-signal.SIGKILL) == 137
    port = launch.free_port()
    assert 0 < port < 65536


def test_success_prefixes_every_line():
    result, _ = run_launcher(
        "--processes", "2", "--devices-per-process", "2", child_args=("env",), timeout=30
    )
    out = result.stdout
    assert result.returncode == 0, out
    lines = out.splitlines()
    for i in range(2):
        assert f"[p{i}] PMD_PROCESS_ID={i}" in lines
        assert f"[p{i}] PMD_NUM_PROCESSES=2" in lines
        assert f"[p{i}] PMD_CPU_COLLECTIVES=gloo" in lines
        assert f"[p{i}] JAX_PLATFORMS=cpu" in lines
        assert f"[p{i}] PYTHONUNBUFFERED=1" in lines
        assert f"[p{i}] stderr from {i}" in lines
        xla = [line for line in lines if line.startswith(f"[p{i}] XLA_FLAGS=")]
        assert len(xla) == 1 and "--xla_force_host_platform_device_count=2" in xla[0]
    addresses = {line.split("=", 1)[1] for line in lines if "PMD_COORDINATOR_ADDRESS=" in line}
    assert len(addresses) == 1 and addresses.pop().startswith("127.0.0.1:")
    child_lines = [line for line in lines if not line.startswith("launch: ")]
    assert child_lines and all(line[:5] in ("[p0] ", "[p1] ") for line in child_lines), out
    assert lines[-1] == "launch: all 2 processes exited with 0"


def test_failure_stops_the_others(tmp_path):
    result, elapsed = run_launcher(
        "--processes", "2", child_args=("fail", str(tmp_path)), timeout=30
    )
    out = result.stdout
    assert result.returncode == 1, out
    assert elapsed < 12, out
    assert "[p1] process 1 failing" in out and "[p0] process 0 sleeping" in out
    assert out.splitlines()[-1] == "launch: process 1 exited with 1; stopped the others"
    assert_reaped(read_pid(tmp_path / "p0.pid", out))


def test_child_killed_by_signal_exits_128_plus_signal():
    result, elapsed = run_launcher("--processes", "2", child_args=("selfkill",), timeout=30)
    out = result.stdout
    assert result.returncode == 128 + signal.SIGKILL, out
    assert elapsed < 12, out
    assert out.splitlines()[-1] == (
        "launch: process 1 was killed by signal 9 (exit 137); stopped the others"
    )


def test_timeout_sigkills_what_ignores_sigterm(tmp_path):
    result, elapsed = run_launcher(
        "--processes", "2", "--timeout", "3", child_args=("stubborn", str(tmp_path)), timeout=40
    )
    out = result.stdout
    assert result.returncode == launch.TIMEOUT_EXIT, out
    assert 3 + launch.KILL_GRACE_S - 0.5 <= elapsed < 25, out
    assert out.splitlines()[-1] == "launch: timed out after 3 s; stopped all processes"
    for i in range(2):
        assert_reaped(read_pid(tmp_path / f"p{i}.pid", out))
    grandchild = read_pid(tmp_path / "grandchild.pid", out)  # reaped by init, maybe not yet
    deadline = time.monotonic() + 5
    while is_running(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_running(grandchild)


def test_sigterm_to_launcher_stops_children(tmp_path):
    proc = subprocess.Popen(
        _command("--processes", "2", child_args=("sleep", str(tmp_path))),
        cwd=REPO_ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
            (tmp_path / f"p{i}.pid").exists() for i in range(2)
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert out.splitlines()[-1] == "launch: terminated; stopped all processes"
    for i in range(2):
        assert_reaped(read_pid(tmp_path / f"p{i}.pid", out))


def test_jax_distributed_two_processes_gloo():
    pytest.importorskip("jax")
    result, _ = run_launcher(
        "--processes", "2", "--devices-per-process", "2", "--timeout", "80",
        child_args=("jax",), timeout=90,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out
    for i in range(2):
        assert f"[p{i}] device_count=4" in out, out
        assert f"[p{i}] local_device_count=2" in out, out
        assert f"[p{i}] process_count=2" in out, out
        assert f"[p{i}] process_index={i}" in out, out
        assert f"[p{i}] allgather=[10, 11]" in out, out
