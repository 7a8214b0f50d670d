"""The training loop end to end on the tiny experiment: all three algorithms, resume after a kill.

The tiny run warm-starts a 2-layer model once per session (cached in PMD_CACHE_DIR), so later
runs start in seconds. Each run is a subprocess: that is how users run it (`make train`), and a
killed run must really die without cleanup.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pmd_jax import checkpoint

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Runs that check the loop's mechanics (checkpoints, resume, baselines), not what the memory
# learns, start from the random scratch model: no warm start to pay in the fast tier.
NO_WARM_START = "model.warm_start_steps=0"


@pytest.fixture(scope="session")
def train_env(tmp_path_factory):
    """Environment of a tiny run: a session-wide TFDS dir and warm-start cache (a developer's
    own PMD_TFDS_DIR / PMD_CACHE_DIR are kept, so the warm start is paid once per machine)."""
    root = tmp_path_factory.mktemp("train_session")
    return dict(
        os.environ,
        PMD_TFDS_DIR=os.environ.get("PMD_TFDS_DIR", str(root / "tfds")),
        PMD_CACHE_DIR=os.environ.get("PMD_CACHE_DIR", str(root / "cache")),
        JAX_PLATFORMS="cpu",
        # Runs of one session compile the same programs: share them through JAX's disk cache.
        JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
    )


def _train(env, workdir, *overrides, crash_after=None, via_make=False):
    sets = [f"--set={override}" for override in ("progress=false", *overrides)]
    if via_make:
        command = [
            "make",
            "--no-print-directory",
            "train",
            "EXP=tiny",
            f"WORKDIR={workdir}",
            f"ARGS={' '.join(sets)}",
        ]
    else:
        command = [
            sys.executable,
            "-m",
            "pmd_jax.train",
            "--exp",
            "tiny",
            "--workdir",
            str(workdir),
            *sets,
        ]
    run_env = dict(env)
    if crash_after is not None:
        run_env["PMD_CRASH_AFTER_STEP"] = str(crash_after)
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=run_env, capture_output=True, text=True, timeout=1800
    )
    return done


def _metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _ok(done):
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])


@pytest.mark.slow  # pays the tiny model's warm start (about 5 min on 2 cores, then cached)
def test_tiny_pmd_via_make_fills_all_three_memory_levels(train_env, tmp_path):
    workdir = tmp_path / "pmd"
    _ok(_train(train_env, workdir, via_make=True))
    records = _metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, 7))
    last = records[-1]
    for level in ("experience", "insight", "behaviour"):
        assert last[f"memory/{level}"] > 0, (level, last)
    assert 0.0 < last["teacher/has_signal"] <= 1.0
    assert np.isfinite(last["train/loss"]) and last["train/update_skipped"] == 0
    for key in (
        "reward/mean",
        "distill/divergence",
        "time/sample",
        "time/update",
        "reflect/requests",
        "eval/avg_at_k",
    ):
        assert any(key in r for r in records), key
    for r in (r for r in records if "time/step" in r):
        # time/memory_* split time/memory; time/step is the sum of the top-level phases.
        parts = [r[f"time/memory_{p}"] for p in ("remember", "reflect", "evolve")]
        assert 0.0 < sum(parts) <= r["time/memory"], r
        phases = ("sample", "verify", "memory", "teacher", "update")
        assert r["time/step"] == pytest.approx(sum(r[f"time/{p}"] for p in phases)), r
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "4",
        "6",
    ]
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    snapshot = json.loads((workdir / "memory" / "memory_step_6.json").read_text())
    assert snapshot["behaviours"] and snapshot["insights"] and snapshot["experience"]


@pytest.mark.parametrize("algorithm", ["grpo", "sdpo"])
def test_tiny_baselines_train_and_checkpoint(train_env, tmp_path, algorithm):
    workdir = tmp_path / algorithm
    _ok(
        _train(
            train_env,
            workdir,
            f"algorithm={algorithm}",
            NO_WARM_START,
            "total_steps=2",
            "checkpoint.every_steps=1",
        )
    )
    records = _metrics(workdir)
    assert [r["step"] for r in records] == [1, 2]
    assert not any(key.startswith("memory/") for key in records[-1])
    prefix = "grpo/" if algorithm == "grpo" else "distill/"
    assert any(key.startswith(prefix) for key in records[-1])
    params = checkpoint.restore_params(workdir / "checkpoints")
    first = checkpoint.restore_params(workdir / "checkpoints", 1)
    changed = [
        not np.array_equal(a, b) for a, b in zip(_leaves(params), _leaves(first), strict=True)
    ]
    assert any(changed)  # the second update moved the weights
    # The run's policy loads for evaluation and exports to an HF directory that reads back.
    from pmd_jax.model.hf import export_hf, load_hf
    from pmd_jax.trained import load_trained

    model = load_trained(workdir)
    for a, b in zip(_leaves(model.params), _leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    export_hf(model.params, model.config, tmp_path / "hf")
    config, exported = load_hf(tmp_path / "hf")
    assert config.vocab_size == model.config.vocab_size == model.tokenizer.vocab_size
    for a, b in zip(_leaves(exported), _leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _comparable(records):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def assert_same_run(workdir, reference, last_step: int, tolerance: float = 0.0) -> None:
    """Two runs of one config ended identically: every metric but time/*, the final params
    bitwise, and the memory snapshot of `last_step` (shared with test_failure_modes.py and
    test_multihost_train.py). tolerance > 0: metrics and params within tolerance, relative and
    absolute (a run whose reductions are summed in another order); the memory still exactly."""
    ours, theirs = _comparable(_metrics(workdir)), _comparable(_metrics(reference))
    if tolerance == 0.0:
        assert ours == theirs
    else:
        assert [sorted(r) for r in ours] == [sorted(r) for r in theirs]
        for a, b in zip(ours, theirs, strict=True):
            for key in a:
                assert np.isclose(a[key], b[key], rtol=tolerance, atol=tolerance), (key, a, b)
    for a, b in zip(
        _leaves(checkpoint.restore_params(workdir / "checkpoints")),
        _leaves(checkpoint.restore_params(reference / "checkpoints")),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=0, atol=tolerance)
    name = f"memory_step_{last_step}.json"
    if (reference / "memory" / name).exists() or (workdir / "memory" / name).exists():
        assert json.loads((workdir / "memory" / name).read_text()) == json.loads(
            (reference / "memory" / name).read_text()
        )


def test_resume_after_a_kill_equals_the_uninterrupted_run(train_env, tmp_path):
    overrides = ("total_steps=6", "checkpoint.every_steps=2", "eval.final=false", NO_WARM_START)
    straight = tmp_path / "straight"
    _ok(_train(train_env, straight, *overrides))
    resumed = tmp_path / "resumed"
    killed = _train(train_env, resumed, *overrides, crash_after=4)
    assert killed.returncode == 17, killed.stderr[-2000:]
    assert max(r["step"] for r in _metrics(resumed)) == 4
    _ok(_train(train_env, resumed, *overrides))
    assert_same_run(resumed, straight, last_step=6)


@pytest.mark.slow
def test_ablations_transient_clears_and_frozen_policy_keeps_params(train_env, tmp_path):
    transient = tmp_path / "transient"
    _ok(_train(train_env, transient, "ablation=pmd_transient", "total_steps=3", "eval.final=false"))
    per_step = 4 * 4  # problems x rollouts of the tiny batch: the most one step can store
    assert all(r["memory/experience"] <= per_step for r in _metrics(transient))
    frozen = tmp_path / "frozen_policy"
    _ok(
        _train(
            train_env,
            frozen,
            "ablation=frozen_policy",
            "total_steps=2",
            "checkpoint.every_steps=1",
            "eval.final=false",
        )
    )
    assert not any(key.startswith("train/") for r in _metrics(frozen) for key in r)
    for a, b in zip(
        _leaves(checkpoint.restore_params(frozen / "checkpoints", 1)),
        _leaves(checkpoint.restore_params(frozen / "checkpoints", 2)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert _metrics(frozen)[-1]["memory/experience"] > 0


@pytest.mark.slow
def test_frozen_memory_loads_a_snapshot_and_never_changes_it(train_env, tmp_path):
    source = tmp_path / "source"
    _ok(_train(train_env, source, "total_steps=2", "eval.final=false"))
    snapshot = source / "memory" / "memory_step_2.json"
    frozen = tmp_path / "frozen"
    _ok(
        _train(
            train_env,
            frozen,
            "ablation=frozen_memory",
            f"frozen_memory_path={snapshot}",
            "total_steps=2",
            "eval.final=false",
        )
    )
    before = json.loads(snapshot.read_text())
    after = json.loads((frozen / "memory" / "memory_step_2.json").read_text())
    assert after["experience"] == before["experience"] and after["insights"] == before["insights"]
    assert after["behaviours"] == before["behaviours"]
    assert {r["memory/experience"] for r in _metrics(frozen)} == {len(before["experience"])}
