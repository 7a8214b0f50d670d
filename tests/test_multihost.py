"""Multi-host on one machine: 2 local processes x 2 CPU devices joined over gloo
(`pmd_jax.launch`). The sampler across processes equals one device; a planted difference in one
process's memory is caught by the per-step checksum with the step and the field named."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pmd_jax import multihost
from pmd_jax.sharding import MeshConfig

TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


def launch(mode: str, out: pathlib.Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pmd_jax.launch", "--processes", "2"]
    command += ["--devices-per-process", "2", "--timeout", str(timeout), "--module"]
    command += ["multihost_child", "--", mode, str(out)]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout + 30
    )


def test_cluster_args_from_config_or_environment():
    assert multihost.cluster_args(MeshConfig(), {}) is None
    assert multihost.cluster_args(MeshConfig(distributed=True), {}) == {}
    named = MeshConfig(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1)
    expected = {"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}
    assert multihost.cluster_args(named, {}) == expected
    env = {
        "PMD_COORDINATOR_ADDRESS": "127.0.0.1:1234",
        "PMD_NUM_PROCESSES": "2",
        "PMD_PROCESS_ID": "1",
    }
    assert multihost.cluster_args(MeshConfig(), env) == expected
    with pytest.raises(ValueError, match=r"mesh.num_processes \(or \$PMD_NUM_PROCESSES\)"):
        multihost.cluster_args(MeshConfig(coordinator_address="h:1", process_id=0), {})
    with pytest.raises(ValueError, match="process_id=2 must be < mesh.num_processes=2"):
        multihost.cluster_args(
            MeshConfig(coordinator_address="h:1", num_processes=2, process_id=2), {}
        )


def test_fingerprints_name_every_leaf_and_see_one_changed_entry():
    tree = {"a": np.arange(6).reshape(2, 3), "b": {"c": np.ones(2, np.float32)}}
    names, digests = multihost.fingerprints({"memory": tree})
    assert names == ["memory.a", "memory.b.c"]
    changed = {"a": tree["a"].copy(), "b": tree["b"]}
    changed["a"][1, 2] += 1
    assert not np.array_equal(multihost.fingerprints({"memory": changed})[1][0], digests[0])
    assert np.array_equal(multihost.fingerprints({"memory": changed})[1][1], digests[1])
    # Same bytes, another shape or dtype: another fingerprint.
    assert not np.array_equal(multihost.digest(tree["a"].reshape(3, 2)), digests[0])


def test_sampling_across_two_processes_equals_one_device(tmp_path):
    import jax
    import multihost_child as child

    done = launch("sample", tmp_path)
    assert done.returncode == 0, done.stdout[-4000:]
    config, params = child.tiny_model()
    tokens, mask = child.prompts()
    from pmd_jax.sampling import sample

    single = sample(params, config, tokens, mask, jax.random.PRNGKey(7), child.SAMPLE_CONFIG)
    for process in (0, 1):
        np.testing.assert_array_equal(
            np.load(tmp_path / f"sample_p{process}.npy"), np.asarray(single.tokens)
        )


def test_a_planted_memory_difference_stops_the_run_naming_step_and_field(tmp_path):
    done = launch("planted", tmp_path)
    assert done.returncode == 0, done.stdout[-4000:]
    for process in (0, 1):
        message = (tmp_path / f"planted_p{process}.txt").read_text()
        assert message.startswith("step 3: memory.experience.tokens differs across processes"), (
            message
        )
        assert "processes [1] vs process 0" in message
