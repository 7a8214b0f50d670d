"""The sampler on a device mesh (8 fake CPU devices): same tokens as one device, rows split over
(data, fsdp), no weight gathered inside the decode loop, per-device flops divided by the rows'
split. The checks run in a subprocess (tests/sampler_mesh_check.py) since the device count is
fixed when JAX starts."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(HERE / "sampler_mesh_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_mesh_samples_the_one_device_tokens(report):
    runs = report["runs"]
    assert len(runs) == 2 * 2 * 4  # llama, qwen3 x greedy, T=1 x four meshes
    wrong = [(r["architecture"], r["temperature"], r["mesh"]) for r in runs if not r["equal"]]
    assert not wrong, f"tokens differ from the 1-device run: {wrong}"


def test_each_device_holds_its_share_of_the_rows(report):
    for run in report["runs"]:
        data, fsdp, _ = run["mesh"]
        assert run["shard_rows"] == [run["rows"] // (data * fsdp)], run


def test_rows_that_do_not_divide_the_batch_axes_are_padded_and_dropped(report):
    assert [p["rows"] for p in report["padded"]] == [12, 12]
    assert all(p["equal"] for p in report["padded"]), report["padded"]


def test_no_weight_is_gathered_inside_the_decode_loop(report):
    for run in report["runs"]:
        ops = [op for op, _ in run["loop_collectives"]]
        assert "all-gather" not in ops, run
        _, _, tensor = run["mesh"]
        if tensor == 1:  # whole weights per device: the loop communicates nothing
            assert ops == [], run
        else:  # Megatron row-parallel o/down (and the embedding lookup): all-reduces only
            assert set(ops) == {"all-reduce"}, run


def test_data_parallel_sampling_divides_the_per_device_flops(report):
    flops = report["flops"]
    assert flops["data8"] <= flops["one_device"] / 6, flops
