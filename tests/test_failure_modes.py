"""Failure drills on the tiny run (README "Failure modes"): SIGKILL at three points and resume,
a damaged newest checkpoint, NaN gradients in the middle of a run.

Every run is a subprocess with `model.warm_start_steps=0` (a random 2-layer model: exactness of
resume does not need a trained one, and the 5-minute warm start is not paid here). XLA on CPU
is deterministic for these programs, so every comparison is bitwise.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_train import _leaves, _metrics, _ok, _train, assert_same_run, train_env  # noqa: F401

from pmd_jax import checkpoint

# Keep every checkpoint so "no completed checkpoint is lost" can be checked directly.
OVERRIDES = (
    "model.warm_start_steps=0",
    "total_steps=6",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=5",
    "eval.final=false",
)


def _complete_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _killed(env, workdir, point: str, step: int):
    done = _train(dict(env, PMD_CRASH_AT=f"{point}:{step}"), workdir, *OVERRIDES)
    assert done.returncode == -9, (point, done.returncode, done.stderr[-2000:])  # SIGKILL
    return done


@pytest.fixture(scope="module")
def straight(train_env, tmp_path_factory):  # noqa: F811
    """The uninterrupted 6-step run everything is compared with."""
    workdir = tmp_path_factory.mktemp("failure") / "straight"
    _ok(_train(train_env, workdir, *OVERRIDES))
    assert _complete_steps(workdir) == [2, 4, 6]
    return workdir


@pytest.mark.slow
def test_sigkill_mid_step_after_a_checkpoint_and_during_a_save_then_resume_is_exact(
    train_env,  # noqa: F811
    straight,
    tmp_path,
):
    workdir = tmp_path / "killed"
    _killed(train_env, workdir, "mid_step", 3)  # sampled step 3, never updated
    # Step 2's async save may still be in flight at step 3 (a loaded machine): then it is lost
    # too, as its tmp directory shows, and the resume starts over.
    complete = _complete_steps(workdir)
    assert complete in ([], [2])
    assert complete or list((workdir / "checkpoints").glob("2.orbax-checkpoint-tmp*"))
    assert max(r["step"] for r in _metrics(workdir)) == 2
    _killed(train_env, workdir, "after_checkpoint", 4)  # resumed from 2; step 4 on disk
    assert _complete_steps(workdir) == [2, 4]
    _killed(train_env, workdir, "during_save", 6)  # resumed from 4; step 6 half written
    assert _complete_steps(workdir) == [2, 4]  # no completed checkpoint lost, 6 not visible
    _ok(_train(train_env, workdir, *OVERRIDES))
    assert _complete_steps(workdir) == [2, 4, 6]
    assert_same_run(workdir, straight, last_step=6)


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_with_a_warning(
    train_env,  # noqa: F811
    straight,
    tmp_path,
):
    workdir = tmp_path / "damaged"
    shutil.copytree(straight, workdir)
    data = [p for p in (workdir / "checkpoints" / "6" / "params").rglob("*") if p.is_file()]
    victim = max(data, key=lambda p: p.stat().st_size)  # an array's data file
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoints/6/params"):
        checkpoint.restore_params(workdir / "checkpoints")
    done = _train(train_env, workdir, *OVERRIDES)
    _ok(done)
    assert "checkpoints/6 cannot be restored" in done.stderr
    assert "resuming from step 4" in done.stderr
    assert (workdir / "checkpoints" / "6.corrupt").is_dir()  # kept for a post-mortem
    assert _complete_steps(workdir) == [2, 4, 6]
    assert_same_run(workdir, straight, last_step=6)


@pytest.mark.slow
def test_nan_gradients_at_one_step_skip_that_update_and_the_run_continues(
    train_env,  # noqa: F811
    tmp_path,
):
    workdir = tmp_path / "nan"
    overrides = ("model.warm_start_steps=0", "total_steps=3", "eval.final=false")
    overrides += ("checkpoint.every_steps=1", "checkpoint.keep_last=3")
    _ok(_train(dict(train_env, PMD_NAN_GRAD_AT_STEP="2"), workdir, *overrides))
    records = _metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["train/update_skipped"] for r in records] == [0.0, 1.0, 0.0]
    assert np.isnan(records[1]["train/grad_norm"]) and np.isfinite(records[2]["train/grad_norm"])
    params = {s: _leaves(checkpoint.restore_params(workdir / "checkpoints", s)) for s in (1, 2, 3)}
    for a, b in zip(params[1], params[2], strict=True):
        np.testing.assert_array_equal(a, b)  # the poisoned update was dropped
    assert any(not np.array_equal(a, b) for a, b in zip(params[2], params[3], strict=True))


def test_crash_drill_names_a_misspelt_point_and_spares_other_steps(monkeypatch):
    from pmd_jax import train

    monkeypatch.setenv(train.CRASH_AT_ENV, "mid_stpe:3")
    with pytest.raises(ValueError, match="'mid_stpe:3'.*expected <point>:<step>"):
        train._crash_drill("mid_step", 3)
    monkeypatch.setenv(train.CRASH_AT_ENV, "mid_step:3")
    train._crash_drill("mid_step", 2)  # not the named step: returns (this process lives on)
    train._crash_drill("during_save", 3)
