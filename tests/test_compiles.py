"""Compile count of a training run: after step 1 every program is reused (no recompilation).

Runs the tiny PMD experiment for 5 steps in a subprocess with a JAX monitoring listener that
records every lowering to MLIR (`/jax/core/compile/jaxpr_to_mlir_module_duration`: one per new
jit specialisation, eager ops included, whether or not the persistent cache then has the binary),
and wraps `pmd_jax.train._one_step` to attribute them to steps.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_train import REPO_ROOT, train_env  # noqa: E402, F401  (shares the session's caches)

LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
DRIVER = f"""
import json, sys
import jax
import pmd_jax.train as train

lowered = []

def listener(event, seconds, **kwargs):
    if event == {LOWERING_EVENT!r}:
        lowered.append(str(kwargs.get("fun_name", "?")))

jax.monitoring.register_event_duration_secs_listener(listener)
one_step = train._one_step
steps = []

def counted(run, step, *args):
    before = len(lowered)
    out = one_step(run, step, *args)
    steps.append({{"step": step, "start": before, "compiles": lowered[before:]}})
    return out

train._one_step = counted
train.main(sys.argv[1:])
print("COMPILES " + json.dumps({{"steps": steps, "all": lowered}}))
"""


def _compiles_per_step(env, workdir, steps: int) -> dict:
    sets = ["progress=false", "eval.initial=false", "eval.final=false", f"total_steps={steps}"]
    command = [sys.executable, "-c", DRIVER, "--exp", "tiny", "--workdir", str(workdir)]
    done = subprocess.run(
        [*command, *(f"--set={s}" for s in sets)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    line = next(x for x in done.stdout.splitlines() if x.startswith("COMPILES "))
    return json.loads(line.removeprefix("COMPILES "))


# Fixed (2026-11-25): reflection / evolution prompts padded to fixed widths (prompt_width), the
# insight insert and behaviour apply run (all rows skipped) from the first reflection / evolution,
# k-means always starts from explicit centroids, embeddings are cut on the host.
@pytest.mark.slow  # minutes on 2 cores (5 steps; 23 min when the tiny warm start is not cached)
def test_compile_count_stays_flat_after_the_first_step(train_env, tmp_path):  # noqa: F811
    record = _compiles_per_step(train_env, tmp_path / "run", steps=5)
    steps = record["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]
    assert steps[0]["compiles"], "step 1 compiled nothing: the listener is not counting"
    later = {s["step"]: s["compiles"] for s in steps[1:]}
    assert all(not names for names in later.values()), f"recompiled after step 1: {later}"
    # Between and after steps too (metrics, checkpoints): nothing new once step 1 is done.
    after_first = record["all"][steps[0]["start"] + len(steps[0]["compiles"]) :]
    assert not after_first, f"compiled after step 1 outside the steps: {after_first}"
