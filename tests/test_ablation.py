"""experiments/ablation.py: run order, per-run overrides, and the table/curves built from runs'
metrics (synthetic metrics.jsonl files; the real study takes hours and is not part of CI)."""

import json
import pathlib

import numpy as np
import pytest

from experiments import ablation


def _study(tmp_path, run_types=("pmd", "sdpo", "frozen_policy"), seeds=(0, 1), steps=4):
    return ablation.Study(
        run_types=tuple(run_types),
        seeds=tuple(seeds),
        steps=steps,
        eval_every=2,
        workdir=tmp_path,
    )


def _write_run(study, run_type, seed, evals, memory_evals=None, cut=False):
    run_dir = study.run_dir(run_type, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(study.steps + 1):
        record = {"step": step, "reward/mean": 0.1}
        if step in evals:
            record["eval/avg_at_k"] = evals[step]
        if memory_evals and step in memory_evals:
            record["eval/memory_avg_at_k"] = memory_evals[step]
        lines.append(json.dumps(record))
    text = "\n".join(lines) + "\n"
    if cut:
        text += '{"step": 5, "eval/av'  # a line cut by a crash
    (run_dir / "metrics.jsonl").write_text(text)


def test_overrides_point_frozen_memory_at_the_frozen_policy_run_of_the_same_seed(tmp_path):
    study = _study(tmp_path, run_types=("frozen_policy", "frozen_memory"), steps=6)
    items = ablation.overrides(study, "frozen_memory", 2)
    expected = tmp_path / "frozen_policy" / "seed2" / "memory" / "memory_step_6.json"
    assert f"frozen_memory_path={expected}" in items
    assert "ablation=frozen_memory" in items
    assert {"seed=2", "total_steps=6", "eval.every_steps=2"} <= set(items)
    assert ablation.overrides(study, "pmd", 0)[3:] == []


def test_every_run_type_is_a_valid_config(tmp_path):
    from pmd_jax.config import apply_overrides, load_experiment

    base = load_experiment(ablation.EXPERIMENT)
    study = _study(tmp_path, run_types=tuple(ablation.RUN_TYPES))
    for run_type in ablation.RUN_TYPES:
        config = apply_overrides(base, ablation.overrides(study, run_type, 0))
        assert config.total_steps == 4 and config.seed == 0
    frozen = apply_overrides(base, ablation.overrides(study, "frozen_policy", 0))
    assert frozen.ablation == "frozen_policy" and frozen.eval.with_memory


def test_unfinished_runs_are_left_out_and_cut_lines_ignored(tmp_path):
    study = _study(tmp_path)
    _write_run(study, "pmd", 0, {0: 0.25, 2: 0.5, 4: 0.75}, cut=True)
    _write_run(study, "pmd", 1, {0: 0.25, 2: 0.25})  # no final eval: unfinished
    assert ablation.is_finished(study.run_dir("pmd", 0), 4)
    assert not ablation.is_finished(study.run_dir("pmd", 1), 4)
    curves = ablation.collect(study)
    assert curves["pmd"] == {0: {0: 0.25, 2: 0.5, 4: 0.75}}
    assert curves["base"] == {0: {0: 0.25}}


def test_table_rows_give_mean_and_std_of_final_and_best(tmp_path):
    study = _study(tmp_path)
    _write_run(study, "pmd", 0, {0: 0.25, 2: 0.5, 4: 0.25})
    _write_run(study, "pmd", 1, {0: 0.25, 2: 0.375, 4: 0.5})
    _write_run(study, "sdpo", 0, {0: 0.25, 2: 0.25, 4: 0.125})
    _write_run(study, "frozen_policy", 0, {0: 0.25, 4: 0.25}, memory_evals={0: 0.25, 4: 0.5})
    rows = {label: rest for label, *rest in ablation.table_rows(ablation.collect(study), 4)}
    finals = 100 * np.array([0.25, 0.5])
    best = 100 * np.array([0.5, 0.5])
    assert rows["PMD (exp+ins+beh)"] == [
        2,
        f"{finals.mean():.1f} +- {finals.std():.1f}",
        f"{best.mean():.1f} +- {best.std():.1f}",
        "25.0, 50.0 (seeds 0, 1)",
    ]
    assert rows["SDPO"] == [1, "12.5 +- 0.0", "25.0 +- 0.0", "12.5 (seed 0)"]
    assert rows["Base (no training)"] == [2, "25.0 +- 0.0", "-", "25.0, 25.0 (seeds 0, 1)"]
    assert rows["Evolving memory + frozen policy, memory in prompt"][1] == "50.0 +- 0.0"
    assert list(rows)[0] == "Base (no training)"


def test_report_writes_table_curves_and_runs(tmp_path):
    study = _study(tmp_path / "runs")
    _write_run(study, "pmd", 0, {0: 0.25, 2: 0.5, 4: 0.75})
    _write_run(study, "sdpo", 0, {0: 0.25, 2: 0.25, 4: 0.5})
    (study.run_dir("pmd", 0) / "wall_seconds.json").write_text('{"seconds": 1800}')
    results = tmp_path / "results"
    ablation.report(study, results, "make ablation")
    table = (results / "table.md").read_text()
    assert "Command: `make ablation`" in table
    assert "| PMD (exp+ins+beh) | 1 | 75.0 +- 0.0 | 75.0 +- 0.0 | 75.0 (seed 0) |" in table
    assert "Wall time of the runs (sum): 0.50 h" in table
    assert "Code: not recorded (every finished run)." in table
    assert (results / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = json.loads((results / "runs.json").read_text())
    assert runs["format"] == ablation.RECORDS_FORMAT
    assert runs["runs"]["sdpo/seed0"] == {
        "run_type": "sdpo",
        "seed": 0,
        "budget": {
            "steps": 4,
            "eval_every": 2,
            "extra": [],
            "experiment": ablation.experiment_digest(),
        },
        "evals": {"0": 0.25, "2": 0.25, "4": 0.5},
        "code": [],
        "wall_seconds": None,
    }
    assert runs["runs"]["pmd/seed0"]["wall_seconds"] == 1800


def test_run_order_puts_frozen_memory_after_the_run_it_reads(tmp_path, monkeypatch):
    study = _study(
        tmp_path, run_types=("frozen_memory", "sdpo", "pmd", "frozen_policy"), seeds=(0,)
    )
    calls = []

    def fake_run(study, run_type, seed, log):
        calls.append(run_type)
        evals = {0: 0.0, 2: 0.0, 4: 0.0}
        _write_run(study, run_type, seed, evals)

    monkeypatch.setattr(ablation, "run_one", fake_run)
    ablation.run_study(study, log=lambda _: None)
    assert calls == ["pmd", "sdpo", "frozen_policy", "frozen_memory"]
    ablation.run_study(study, log=lambda _: None)  # everything finished: nothing reruns
    assert calls == ["pmd", "sdpo", "frozen_policy", "frozen_memory"]


@pytest.mark.parametrize("keep", [False, True])
def test_finished_runs_drop_their_checkpoints_unless_kept(tmp_path, monkeypatch, keep):
    study = ablation.Study(("pmd", "sdpo"), (0,), 4, 2, tmp_path, keep_checkpoints=keep)

    def fake_run(study, run_type, seed, log):
        run_dir = study.run_dir(run_type, seed)
        (run_dir / "checkpoints" / "4").mkdir(parents=True)
        if run_type == "sdpo":  # killed before its last eval: it resumes from its checkpoint
            raise RuntimeError("killed")
        _write_run(study, run_type, seed, {0: 0.0, 2: 0.0, 4: 0.1})

    monkeypatch.setattr(ablation, "run_one", fake_run)
    with pytest.raises(RuntimeError, match="killed"):
        ablation.run_study(study, log=lambda _: None)
    assert (study.run_dir("pmd", 0) / "checkpoints").exists() == keep
    assert (study.run_dir("pmd", 0) / "metrics.jsonl").exists()
    assert (study.run_dir("sdpo", 0) / "checkpoints" / "4").exists()


def test_unknown_run_type_is_refused(capsys):
    with pytest.raises(SystemExit, match="unknown run types"):
        ablation.main(["--runs", "pmd,dpo", "--report-only"])
    assert pathlib.Path(ablation.RESULTS).name == "arith"


def test_table_names_the_code_versions_of_the_finished_runs(tmp_path):
    study = _study(tmp_path / "runs", run_types=("pmd", "sdpo"), seeds=(0,))
    _write_run(study, "pmd", 0, {0: 0.25, 4: 0.5})
    _write_run(study, "sdpo", 0, {0: 0.25, 4: 0.5})
    (study.run_dir("pmd", 0) / "code_version.txt").write_text("abc1234\nabc1234\n")
    (study.run_dir("sdpo", 0) / "code_version.txt").write_text("abc1234\ndef5678+changes\n")
    ablation.report(study, tmp_path / "results", "make ablation")
    table = (tmp_path / "results" / "table.md").read_text()
    assert "Code: abc1234 (pmd/seed0, sdpo/seed0); def5678+changes (sdpo/seed0)." in table


def test_code_version_is_this_checkouts_commit(tmp_path):
    import subprocess

    head = subprocess.run(
        ["git", "-C", str(ablation.ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True,
    )  # fmt: skip
    version = ablation.code_version()
    if head.returncode != 0:
        assert version == "unknown"
    else:
        assert version.split("+")[0] == head.stdout.strip()
    assert ablation.code_version(tmp_path) == "unknown"  # not a git checkout


def test_recorded_runs_of_the_same_budget_join_the_table(tmp_path):
    """Runs recorded in runs.json (another workdir or machine) count with --merge-recorded; a run
    finished in the workdir replaces its record; other budgets, seeds and types stay out."""
    results = tmp_path / "results"
    earlier = _study(tmp_path / "earlier", seeds=(0, 1))
    _write_run(earlier, "pmd", 0, {0: 0.25, 2: 0.5, 4: 0.5})
    _write_run(earlier, "pmd", 1, {0: 0.25, 2: 0.25, 4: 0.25})
    _write_run(earlier, "frozen_policy", 0, {0: 0.25, 4: 0.25}, memory_evals={0: 0.25, 4: 0.0})
    (earlier.run_dir("pmd", 0) / "code_version.txt").write_text("aaa1111\n")
    (earlier.run_dir("pmd", 0) / "wall_seconds.json").write_text('{"seconds": 3600}')
    ablation.report(earlier, results, "make ablation")
    longer = _study(tmp_path / "longer", seeds=(2,), steps=6)
    _write_run(longer, "pmd", 2, {0: 0.25, 6: 1.0})
    ablation.report(longer, tmp_path / "other_results", "x")
    other = json.loads((tmp_path / "other_results" / "runs.json").read_text())["runs"]
    runs = json.loads((results / "runs.json").read_text())
    runs["runs"].update(other)  # a 6-step run: another budget
    (results / "runs.json").write_text(json.dumps(runs))

    later = _study(tmp_path / "later", seeds=(1, 2))  # seed 0 is not asked
    _write_run(later, "pmd", 1, {0: 0.25, 2: 0.75, 4: 0.75})  # replaces the recorded seed 1
    _write_run(later, "pmd", 2, {0: 0.25, 2: 0.5, 4: 1.0})
    (later.run_dir("pmd", 2) / "code_version.txt").write_text("bbb2222\n")
    (later.run_dir("pmd", 2) / "wall_seconds.json").write_text('{"seconds": 1800}')
    ablation.report(later, results, "make ablation", merge_recorded=True)
    table = (results / "table.md").read_text()
    finals = 100 * np.array([0.75, 1.0])  # seeds 1 (the workdir's run) and 2
    assert f"| PMD (exp+ins+beh) | 2 | {finals.mean():.1f} +- {finals.std():.1f} |" in table
    kept = json.loads((results / "runs.json").read_text())["runs"]  # nothing recorded is lost
    assert sorted(kept) == ["frozen_policy/seed0", "pmd/seed0", "pmd/seed1", "pmd/seed2"]
    assert kept["pmd/seed1"]["evals"] == {"0": 0.25, "2": 0.75, "4": 0.75}
    assert kept["pmd/seed2"]["budget"]["steps"] == 4  # the later 4-step run replaced the 6-step

    everything = _study(tmp_path / "empty", seeds=(0, 1, 2))
    ablation.report(everything, results, "make ablation", merge_recorded=True)
    table = (results / "table.md").read_text()
    finals = 100 * np.array([0.5, 0.75, 1.0])  # seed 0 recorded first, then the later runs
    assert f"| PMD (exp+ins+beh) | 3 | {finals.mean():.1f} +- {finals.std():.1f} |" in table
    assert "| 50.0, 75.0, 100.0 (seeds 0, 1, 2) |" in table  # per seed, recorded or not
    assert "| Evolving memory + frozen policy, memory in prompt | 1 | 0.0 +- 0.0 |" in table
    assert (
        "Code: not recorded (frozen_policy/seed0, pmd/seed1); aaa1111 (pmd/seed0); "
        "bbb2222 (pmd/seed2)."
    ) in table
    assert "Wall time of the runs (sum): 1.50 h (not recorded for 2 of the 4 runs)" in table
    recorded = ablation.load_records(results / "runs.json")
    assert recorded["pmd/seed0"]["evals"] == {0: 0.25, 2: 0.5, 4: 0.5}
    assert recorded["frozen_policy/seed0"]["memory_evals"] == {0: 0.25, 4: 0.0}


def test_recorded_runs_of_another_default_config_stay_out(tmp_path, monkeypatch):
    """A run recorded before experiments/arith.py changed (another config digest, or none: the
    records made before the digest existed) is kept in runs.json but never tabled with new runs."""
    results = tmp_path / "results"
    old = _study(tmp_path / "old", seeds=(0,))
    _write_run(old, "pmd", 0, {0: 0.25, 4: 0.0})
    ablation.report(old, results, "make ablation")
    runs = json.loads((results / "runs.json").read_text())
    undigested = json.loads(json.dumps(runs["runs"]["pmd/seed0"]))
    del undigested["budget"]["experiment"]
    undigested["seed"] = 1
    runs["runs"]["pmd/seed1"] = undigested
    (results / "runs.json").write_text(json.dumps(runs))
    monkeypatch.setattr(ablation, "experiment_digest", lambda: "0123456789ab")

    new = _study(tmp_path / "new", seeds=(0, 1, 2))
    _write_run(new, "pmd", 2, {0: 0.25, 4: 1.0})
    ablation.report(new, results, "make ablation", merge_recorded=True)

    assert "| PMD (exp+ins+beh) | 1 | 100.0 +- 0.0 |" in (results / "table.md").read_text()
    kept = json.loads((results / "runs.json").read_text())["runs"]
    assert sorted(kept) == ["pmd/seed0", "pmd/seed1", "pmd/seed2"]
    assert kept["pmd/seed2"]["budget"]["experiment"] == "0123456789ab"


def test_runs_json_of_another_format_is_refused(tmp_path):
    (tmp_path / "runs.json").write_text(json.dumps({"pmd": {"0": {"0": 0.25}}}))
    with pytest.raises(SystemExit, match="format None is not 2"):
        ablation.load_records(tmp_path / "runs.json")
