"""Multi-host training on one machine (slow): 2 local processes x 2 CPU devices over gloo
(`python -m pmd_jax.launch`) against one process with 4 devices, same config and mesh (4, 1, 1).

Tolerance: the rollouts and the memory are equal exactly; metrics and params agree to 1e-6
(relative and absolute), not bitwise, because gloo sums the gradient all-reduce across the two
processes in another order than the in-process CPU all-reduce does (measured: params 4.6e-7,
losses 2e-7 relative after 4 tiny PMD steps). The resumed 2-process run equals the uninterrupted
2-process run bitwise (measured while building this test).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_train import REPO_ROOT, _metrics, assert_same_run, train_env  # noqa: F401

pytestmark = pytest.mark.slow

TOLERANCE = 1e-6


def _sets(*overrides: str) -> list[str]:
    return [f"--set={o}" for o in ("progress=false", "eval.final=false", *overrides)]


def _single(env, workdir, *overrides):
    env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    command = [sys.executable, "-m", "pmd_jax.train", "--exp", "tiny", "--workdir", str(workdir)]
    return subprocess.run(
        command + _sets(*overrides),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _two_processes(env, workdir, *overrides, crash_at: str | None = None):
    env = dict(env)
    env.pop("XLA_FLAGS", None)
    if crash_at:
        env["PMD_CRASH_AT"] = crash_at
    command = [sys.executable, "-m", "pmd_jax.launch", "--processes", "2"]
    command += ["--devices-per-process", "2", "--timeout", "800", "--"]
    command += ["--exp", "tiny", "--workdir", str(workdir), *_sets(*overrides)]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )


def _ok(done):
    assert done.returncode == 0, (done.stdout[-6000:], done.stderr[-3000:])


def test_pmd_two_processes_killed_and_resumed_equals_one_process(
    train_env,  # noqa: F811
    tmp_path,
):
    overrides = ("total_steps=4", "checkpoint.every_steps=2")
    reference = tmp_path / "one_process"
    _ok(_single(train_env, reference, *overrides))
    workdir = tmp_path / "two_processes"
    # Process 1 SIGKILLs itself in step 4 (after step 3; the last checkpoint is step 2).
    killed = _two_processes(train_env, workdir, *overrides, crash_at="mid_step:4:1")
    assert killed.returncode == 137, killed.stdout[-4000:]
    assert "process 1 was killed by signal 9" in killed.stdout
    assert max(r["step"] for r in _metrics(workdir)) == 3
    _ok(_two_processes(train_env, workdir, *overrides))
    assert_same_run(workdir, reference, last_step=4, tolerance=TOLERANCE)
    # Process 0 alone wrote the run's files; every line of metrics.jsonl once.
    assert [r["step"] for r in _metrics(workdir)] == [1, 2, 3, 4]


def test_grpo_two_processes_equals_one_process(
    train_env,  # noqa: F811
    tmp_path,
):
    overrides = ("algorithm=grpo", "total_steps=2", "checkpoint.every_steps=2")
    reference = tmp_path / "one_process"
    _ok(_single(train_env, reference, *overrides))
    workdir = tmp_path / "two_processes"
    _ok(_two_processes(train_env, workdir, *overrides))
    assert_same_run(workdir, reference, last_step=2, tolerance=TOLERANCE)
