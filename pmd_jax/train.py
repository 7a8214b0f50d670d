"""The training loop and its CLI.

    python -m pmd_jax.train --exp tiny --workdir /tmp/tiny [--set algorithm=sdpo --set total_steps=4]

One step (METHOD section 2): sample J rollouts per prompt -> verify -> update experience ->
reflect (insights) -> maybe evolve behaviours -> build teacher contexts -> jit'd sharded update
(teacher log-probs, loss, AdamW, EMA teacher). Which phases run, and what the teacher sees, is
the run's `RunPlan` (pmd_jax/run_plan.py), decided once from the config: GRPO skips the memory
and teacher phases, SDPO the memory phases, the ablations and granularities what their plan says.
`--dry-run` prints the resolved config and the plan, and writes nothing.

The run directory holds `config.json`, `metrics.jsonl` (one JSON object per step),
TensorBoard events under `tb/`, orbax checkpoints under `checkpoints/`, a decoded memory
snapshot `memory/memory_step_<N>.json` per checkpoint and eval JSONL under `eval/`. Starting
again on the same directory resumes from the newest complete checkpoint: params, optimizer,
teacher, memory, data position and step; the RNG of a step is derived from (seed, step), so a
resumed run continues exactly as the uninterrupted one would.

With `reflect.backend` / `behaviours.backend` = "openai" the reflector / evolver is an
OpenAI-compatible endpoint (pmd_jax/remote.py). Its answers are journalled per step in
`remote/step_<N>.json` (a `remote.Recorder`, written after each phase that asked it); a step
that is run again after a resume answers from its journal ("record_replay": recorded prompts are
not sent again, others are), so it continues as the uninterrupted run did.

Multi-host (pmd_jax/multihost.py): the same command on every host (or `python -m pmd_jax.launch`
locally). Every process runs every phase on the same global batch; process 0 prepares datasets
and caches first, and alone writes config.json, metrics, TensorBoard, memory snapshots, the
report and the progress bar; all processes take part in checkpoints. Each step the rollouts and
the memory are compared across processes (`multihost.check_consistent`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from pmd_jax import checkpoint, multihost, phases, remote, sharding
from pmd_jax.config import (
    RolloutConfig,
    TrainConfig,
    apply_overrides,
    load_experiment,
    to_dict,
)
from pmd_jax.data import pipeline
from pmd_jax.data.prompts import format_prompts
from pmd_jax.evaluate import EvalConfig, evaluate
from pmd_jax.memory.export import (
    load_memory_json,
    memory_from_json,
    memory_to_json,
    save_memory_json,
)
from pmd_jax.memory.state import clear, init_memory, memory_sizes
from pmd_jax.memory.teacher import teacher_stats
from pmd_jax.model import registry
from pmd_jax.model.scratch import scratch_model
from pmd_jax.optimizer import make_optimizer
from pmd_jax.run_log import (
    MetricsWriter,
    NullWriter,
    expected_cost,
    summary,
    write_memory_report,
)
from pmd_jax.run_plan import RunPlan, describe, run_plan
from pmd_jax.sampling import SampleConfig, answer_line_stop_table, bucket_length
from pmd_jax.train_step import RolloutBatch, StepConfig, init_train_state, make_train_step
from pmd_jax.validate import ConfigError, validate_lengths, validate_run

CRASH_ENV = "PMD_CRASH_AFTER_STEP"  # tests (CLI only): exit hard (no cleanup) after this step
# Failure drills (tests, docs/OPERATIONS.md): SIGKILL at "<point>:<step>" / NaN gradients.
CRASH_AT_ENV = "PMD_CRASH_AT"
CRASH_POINTS = ("mid_step", "after_checkpoint", "during_save")
NAN_GRAD_ENV = "PMD_NAN_GRAD_AT_STEP"


def _crash_drill(point: str, step: int, manager=None) -> None:
    """SIGKILL this process when $PMD_CRASH_AT is `point:step` (or `point:step:process`, only in
    that process of a multi-host run). mid_step: after sampling, before the update;
    after_checkpoint: once step's save is on disk; during_save: right after the async save
    started."""
    wanted = os.environ.get(CRASH_AT_ENV, "")
    if wanted and wanted.split(":")[0] not in CRASH_POINTS:
        raise ValueError(
            f"{CRASH_AT_ENV}={wanted!r}: expected <point>:<step>[:<process>], point in "
            f"{CRASH_POINTS}"
        )
    if wanted not in (f"{point}:{step}", f"{point}:{step}:{jax.process_index()}"):
        return
    if point == "after_checkpoint":
        manager.wait_until_finished()
    os.kill(os.getpid(), signal.SIGKILL)


def _crash_after_hook() -> Callable[[int, dict[str, float]], None] | None:
    """$PMD_CRASH_AFTER_STEP=N: an `on_step` hook that exits hard (no cleanup, pending saves
    may be lost) after step N, as a killed job would."""
    crash_after = int(os.environ.get(CRASH_ENV, "0"))
    if not crash_after:
        return None

    def hook(step: int, metrics: dict[str, float]) -> None:
        if step == crash_after:
            os._exit(17)

    return hook


@contextlib.contextmanager
def timed(times: dict[str, float], name: str) -> Iterator[None]:
    """times[name] = wall seconds of the block."""
    start = time.perf_counter()
    try:
        yield
    finally:
        times[name] = time.perf_counter() - start


@dataclasses.dataclass
class Run:
    """What a run sets up once: its plan, model, data, memory, mesh, compiled step."""

    config: TrainConfig
    plan: RunPlan
    workdir: pathlib.Path
    model_config: Any
    tokenizer: Any
    problems: list[dict]  # the train split, index = problem id
    eval_problems: list[dict]
    encoder_params: Any  # fixed memory encoder (the initial policy)
    embed_fn: Any  # texts -> unit embeddings [N, D] with that encoder
    question_embeddings: Any  # [P, D]
    mesh: Any
    optimizer: Any
    step_config: StepConfig
    sample_config: SampleConfig
    stop_table: np.ndarray | None
    memory_config: Any
    prompt_width: int  # every student prompt is left-padded to this (one train-step shape)
    teacher_width: int  # every teacher prompt likewise
    reflect_remote: Any = None  # remote.RemoteConfig when reflect.backend == "openai"
    evolve_remote: Any = None  # remote.RemoteConfig when behaviours.backend == "openai"


def _load_model(config: TrainConfig, problems: list[dict], workdir: pathlib.Path):
    spec = config.model
    if spec.name == "scratch":
        loaded = scratch_model(spec, problems, workdir / "tokenizer", config.seed)
    else:
        loaded = registry.load(spec.name, param_dtype=spec.param_dtype, dtype=spec.dtype)
    return loaded._replace(config=loaded.config.replace(attention_impl=spec.attention_impl))


def _records(dataset) -> list[dict]:
    return [dict(dataset[i]) for i in range(len(dataset))]


def setup(config: TrainConfig, workdir: pathlib.Path) -> tuple[Run, Any, Any]:
    """Build everything; returns (run, params, memory) before any resume."""
    multihost.initialize(config.mesh)
    validate_run(config, jax.device_count())  # every config problem, before any compute
    plan = run_plan(config)
    mesh = sharding.make_mesh(config.mesh)
    # Process 0 prepares the TFDS directories (and trains a scratch tokenizer) first.
    problems = multihost.primary_first(
        "train split", lambda: _records(pipeline.load_split(config.data, "train"))
    )
    eval_data = dataclasses.replace(config.data, subset=config.eval.num_problems)
    eval_problems = multihost.primary_first(
        "eval split", lambda: _records(pipeline.load_split(eval_data, config.eval.split))
    )
    loaded = multihost.primary_first("model", lambda: _load_model(config, problems, workdir))
    questions = [p["question"] for p in problems]
    longest_prompt = max(
        len(p.ids) for p in format_prompts(loaded.tokenizer, questions, config.prompt)
    )
    validate_lengths(config, longest_prompt, loaded.config.max_position_embeddings)
    prompt_width = bucket_length(longest_prompt, config.rollout.prompt_bucket)
    teacher_width = bucket_length(config.teacher.max_prompt_tokens, config.teacher.bucket)
    if multihost.is_primary():
        cost = expected_cost(config, loaded.params, prompt_width, teacher_width, len(problems))
        print(cost, flush=True)
    if config.model.warm_start_steps > 0:
        from pmd_jax.warm_start import warm_start

        # Cached: process 0 trains and writes the cache, the others read it.
        params = multihost.primary_first("warm start", lambda: warm_start(loaded, problems, config))
    else:
        params = loaded.params
    model_config, tokenizer = loaded.config, loaded.tokenizer
    memory_config = dataclasses.replace(
        config.memory,
        num_problems=len(problems),
        embed_dim=model_config.hidden_size,
        pad_id=tokenizer.pad_id,
    )
    # Its own buffers (the update donates the policy's), on the mesh in the training layout.
    encoder_params = sharding.shard_params(params, mesh)
    embed_fn = phases.make_embed_fn(
        encoder_params, model_config, tokenizer, memory_config.response_len, mesh
    )
    question_embeddings = embed_fn([p["question"] for p in problems])
    rollout = config.rollout
    sample_config = rollout_sample_config(rollout, tokenizer)
    stop_table = None
    if rollout.stop_at_answer and config.prompt.answer_format == "hash":
        stop_table = answer_line_stop_table(tokenizer)
    optimizer = make_optimizer(config.optimizer, config.total_steps)
    step_config = StepConfig(
        algorithm=plan.algorithm,
        loss=config.loss,
        group_size=rollout.num_samples,
        micro_batches=config.optimizer.micro_batches,
        teacher_tau=config.teacher_tau,
        remat=config.model.remat,
        loss_spike_factor=config.optimizer.loss_spike_factor,
        loss_spike_window=config.optimizer.loss_spike_window,
        nan_grad_at_step=int(os.environ.get(NAN_GRAD_ENV, "0")),
    )
    reflect_remote, evolve_remote = remote_configs(config)
    for remote_config in {c for c in (reflect_remote, evolve_remote) if c is not None}:
        _check_endpoint(remote_config)
    memory = None
    if plan.load_memory_from:
        data = load_memory_json(plan.load_memory_from)
        memory = memory_from_json(data, memory_config, tokenizer, embed_fn=embed_fn)
    elif plan.uses_memory:
        memory = init_memory(memory_config)
    run = Run(
        config=config,
        plan=plan,
        workdir=workdir,
        model_config=model_config,
        tokenizer=tokenizer,
        problems=problems,
        eval_problems=eval_problems,
        encoder_params=encoder_params,
        embed_fn=embed_fn,
        question_embeddings=question_embeddings,
        mesh=mesh,
        optimizer=optimizer,
        step_config=step_config,
        sample_config=sample_config,
        stop_table=stop_table,
        memory_config=memory_config,
        prompt_width=prompt_width,
        teacher_width=teacher_width,
        reflect_remote=reflect_remote,
        evolve_remote=evolve_remote,
    )
    return run, params, memory


def remote_configs(config: TrainConfig) -> tuple[Any, Any]:
    """(reflection, evolution) RemoteConfig, each None unless its section's backend is
    "openai"; max_tokens and temperature are the section's max_new_tokens and temperature."""

    def of(section):
        if section.backend != "openai":
            return None
        return section.remote.config(
            max_tokens=section.max_new_tokens, temperature=section.temperature
        )

    return of(config.reflect), of(config.behaviours)


def _check_endpoint(remote_config) -> None:
    """One GET /models before the first step: a rejected or missing key stops the run here (the
    error names the variable, never the key); an unreachable server is only a warning, since a
    resumed run may answer from its journal and failed requests are counted, not fatal."""
    try:
        models = remote.check(remote_config)
    except remote.RemoteUnavailableError as err:
        print(f"warning: the OpenAI-compatible endpoint is unavailable: {err}", flush=True)
        return
    if models and remote_config.model not in models and multihost.is_primary():
        print(
            f"warning: {remote_config.base_url} lists models {models[:8]}, not "
            f"{remote_config.model!r} (sent anyway: some servers serve any name)",
            flush=True,
        )


def journal_path(workdir: pathlib.Path, step: int) -> pathlib.Path:
    """Where a step's endpoint answers are journalled."""
    return pathlib.Path(workdir) / "remote" / f"step_{step}.json"


def step_recorder(workdir: pathlib.Path, step: int) -> remote.Recorder:
    """The step's Recorder: its journal from an earlier attempt at this step (a resumed run) in
    "record_replay" mode, else an empty one recording."""
    path = journal_path(workdir, step)
    if path.exists():
        return remote.Recorder.load(path, mode="record_replay")
    return remote.Recorder("record")


def _save_journal(run: Run, step: int, recorder) -> None:
    if multihost.is_primary():
        path = journal_path(run.workdir, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        recorder.save(path)


def _eval(run: Run, params, step: int, memory=None) -> dict[str, float]:
    schedule = run.config.eval
    eval_config = EvalConfig(
        num_samples=schedule.num_samples,
        temperature=schedule.temperature,
        top_p=schedule.top_p,
        max_new_tokens=schedule.max_new_tokens,
        batch_size=schedule.batch_size,
        answer_format=run.config.prompt.answer_format,
        seed=run.config.seed + step,
        stop_at_answer=run.config.rollout.stop_at_answer,
    )
    primary = multihost.is_primary()
    summary = evaluate(
        params,
        run.model_config,
        run.tokenizer,
        run.eval_problems,
        eval_config,
        jsonl_path=run.workdir / "eval" / f"step_{step}.jsonl" if primary else None,
        progress=False,
        mesh=run.mesh,
    )
    metrics = {
        "eval/avg_at_k": summary["avg_at_k"],
        "eval/pass_at_k": summary["pass_at_k"],
        "eval/num_problems": len(run.eval_problems),
    }
    if run.plan.eval_with_memory:
        with_memory = evaluate(
            params,
            run.model_config,
            run.tokenizer,
            _with_behaviours(run, memory),
            eval_config,
            jsonl_path=run.workdir / "eval" / f"step_{step}_memory.jsonl" if primary else None,
            progress=False,
            mesh=run.mesh,
        )
        metrics["eval/memory_avg_at_k"] = with_memory["avg_at_k"]
        metrics["eval/memory_pass_at_k"] = with_memory["pass_at_k"]
    return metrics


def _with_behaviours(run: Run, memory) -> list[dict]:
    """Eval problems whose question carries the retrieved behaviours (memory as a prompt)."""
    from pmd_jax.memory import ops
    from pmd_jax.memory.teacher import memory_views, render_items

    queries = run.embed_fn([p["question"] for p in run.eval_problems])
    k = run.config.teacher.num_behaviours
    indices = np.asarray(ops.retrieve_behaviours(memory, queries, k)[0])
    views = memory_views(
        memory, run.memory_config, run.tokenizer, np.full(len(indices), -1), indices
    )
    problems = []
    for problem, view in zip(run.eval_problems, views, strict=True):
        listed = render_items(view.behaviours)
        hint = f"\n\nUseful behaviours:\n{listed}" if listed else ""
        problems.append({**problem, "question": problem["question"] + hint})
    return problems


def _train_item(state) -> dict:
    """The checkpoint's `train` item: everything of the TrainState but the student params."""
    return {
        "step": state.step,
        "opt_state": state.opt_state,
        "teacher_params": state.teacher_params,
        "skipped_updates": state.skipped_updates,
    }


def _save(run: Run, manager, step: int, state, memory, iterator, centroids, metrics) -> None:
    train = _train_item(state)
    meta = {
        "step": step,
        "data": pipeline.get_state(iterator),
        "centroids": None if centroids is None else np.asarray(centroids).tolist(),
        "config": to_dict(run.config),
        # The spike guard's window (newest first): JSON, so older checkpoints still restore.
        "recent_losses": [float(x) for x in np.asarray(state.recent_losses) if np.isfinite(x)],
    }
    eval_metrics = {k: v for k, v in metrics.items() if k.startswith("eval/")} or None
    checkpoint.save(
        manager,
        step,
        params=state.params,
        train=train,
        memory=memory,
        meta=meta,
        metrics=eval_metrics,
    )
    if memory is not None and multihost.is_primary():
        snapshot = memory_to_json(
            memory,
            run.memory_config,
            run.tokenizer,
            step=step,
            problem_texts={p: run.problems[p]["question"] for p in range(len(run.problems))},
        )
        snapshot["frozen"] = not run.plan.updates_memory  # the report marks a frozen memory
        save_memory_json(run.workdir / "memory" / f"memory_step_{step}.json", snapshot)


def _restore(run: Run, manager, state, memory, iterator):
    """Load the newest complete checkpoint into (state, memory, iterator) -> (..., step, centroids)."""
    train = _train_item(state)
    params, train, memory, meta = checkpoint.restore(
        manager, None, params=state.params, train=train, memory=memory
    )
    state = state.replace(params=params, **train)
    window = np.full(state.recent_losses.shape, np.nan, np.float32)
    losses = meta.get("recent_losses", [])[: window.size]
    window[: len(losses)] = losses
    state = state.replace(recent_losses=sharding.put(window, state.recent_losses.sharding))
    pipeline.set_state(iterator, meta["data"])
    centroids = meta.get("centroids")
    centroids = None if centroids is None else jnp.asarray(centroids, jnp.float32)
    return state, memory, int(meta["step"]), centroids


def _memory_metrics(memory, memory_config) -> dict[str, float]:
    """Sizes per level ("memory/experience", "memory/insight", "memory/behaviour") and details."""
    sizes = {k: float(v) for k, v in memory_sizes(memory, memory_config).items()}
    metrics = {f"memory/{k}": v for k, v in sizes.items()}
    metrics["memory/experience"] = sizes["experience_successes"] + sizes["experience_failures"]
    metrics["memory/insight"] = sizes["insight_strategies"] + sizes["insight_lessons"]
    metrics["memory/behaviour"] = sizes["behaviours"]
    return metrics


def release_free_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc `malloc_trim`; elsewhere a no-op).

    The host phases (tokenizer, TFDS records, samplers' small buffers) leave 0.5-0.7 GB of freed
    memory in glibc's arenas, which it keeps; the update's temporaries (one mmapped block: 4.3 GB
    for the default run's 135M model) cannot reuse it, so it would add to the run's peak RSS,
    which is the update's (measured, 2-step make train: 8.58 -> 8.15 GB). Takes milliseconds."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only: musl has no malloc_trim)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def _one_step(run: Run, step: int, state, memory, batch, compiled, centroids):
    """The host phases and the update of one step, as the run's plan says -> (state, memory,
    metrics, centroids)."""
    config, plan = run.config, run.plan
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)
    sample_rng, reflect_rng, evolve_rng = jax.random.split(rng, 3)
    times: dict[str, float] = {}
    metrics: dict[str, float] = {}

    with timed(times, "time/sample"):
        rollouts = phases.sample_rollouts(
            state.params,
            run.model_config,
            run.tokenizer,
            batch,
            config.prompt,
            run.sample_config,
            sample_rng,
            stop_table=run.stop_table,
            width=run.prompt_width,
            mesh=run.mesh,
            waves=config.rollout.waves,
        )
    _crash_drill("mid_step", step)

    with timed(times, "time/verify"):
        rollouts = phases.verify_rollouts(rollouts, config.verifier)

    # Memory (METHOD steps 3-5): experience, insights of the changed problems, behaviours.
    with timed(times, "time/memory"):
        if plan.reset_memory_each_step:
            memory = clear(memory, run.memory_config, keep_behaviours=False)
        # backend "base": the initial params, not the policy; "openai": an endpoint (params unused)
        reflector = run.encoder_params if config.reflect.backend == "base" else state.params
        evolver = run.encoder_params if config.behaviours.backend == "base" else state.params
        recorder = None
        if run.reflect_remote is not None or run.evolve_remote is not None:
            recorder = step_recorder(run.workdir, step)
        if plan.remember:
            with timed(times, "time/memory_remember"):
                memory, stats, changed = phases.remember(
                    memory,
                    run.memory_config,
                    run.encoder_params,
                    run.model_config,
                    run.tokenizer,
                    rollouts,
                    step,
                    run.mesh,
                )
            metrics.update(stats)
        if plan.reflect:
            with timed(times, "time/memory_reflect"):
                memory, stats, _ = phases.reflect_on_groups(
                    memory,
                    run.memory_config,
                    reflector,
                    run.model_config,
                    run.tokenizer,
                    rollouts,
                    changed,
                    config.reflect,
                    run.embed_fn,
                    reflect_rng,
                    step,
                    run.mesh,
                    remote=run.reflect_remote,
                    recorder=recorder,
                )
            if run.reflect_remote is not None:
                _save_journal(run, step, recorder)
            metrics.update(stats)
        if plan.evolve:
            with timed(times, "time/memory_evolve"):
                memory, stats, centroids = phases.maybe_evolve(
                    memory,
                    run.memory_config,
                    evolver,
                    run.model_config,
                    run.tokenizer,
                    [p["question"] for p in run.problems],
                    run.question_embeddings,
                    rollouts,
                    config.behaviours,
                    run.embed_fn,
                    evolve_rng,
                    step,
                    centroids,
                    run.mesh,
                    remote=run.evolve_remote,
                    recorder=recorder,
                )
            if run.evolve_remote is not None and stats:
                _save_journal(run, step, recorder)
            metrics.update(stats)
        if plan.uses_memory:
            metrics.update(_memory_metrics(memory, run.memory_config))
    # Multi-host: every process must hold the same rollouts and memory (no-op on one process).
    multihost.check_consistent(
        step,
        {
            "rollouts": {"tokens": rollouts.tokens, "rewards": rollouts.rewards},
            "memory": memory,
        },
    )

    # Teacher contexts (METHOD step 6): only the plan's blocks; none for GRPO.
    teacher = None
    with timed(times, "time/teacher"):
        if plan.teacher:
            teacher = phases.teacher_prompts(
                run.tokenizer,
                rollouts,
                config.teacher,
                config.prompt,
                blocks=plan.teacher_blocks,
                memory=memory if plan.teacher_reads_memory else None,
                memory_config=run.memory_config,
                question_embeddings=run.question_embeddings,
                success_reward=plan.success_reward,
            )
            metrics.update(teacher_stats(teacher))

    with timed(times, "time/update"):
        if plan.update_policy:
            arrays = phases.rollout_batch(
                rollouts, teacher, run.teacher_width, run.tokenizer.pad_id
            )
            release_free_heap()  # the update's temporaries are one new block: make room for it
            state, step_metrics = compiled(state, sharding.shard_batch(arrays, run.mesh))
            metrics.update({k: float(v) for k, v in jax.device_get(step_metrics).items()})

    metrics["reward/mean"] = float(np.mean(rollouts.rewards))
    metrics["reward/accuracy"] = float(np.mean(rollouts.rewards > plan.success_reward))
    metrics["response/length_mean"] = float(np.mean(rollouts.lengths))
    metrics.update(times)
    # time/memory_* split time/memory (remember, reflect, evolve); they are not added again.
    metrics["time/step"] = sum(v for k, v in times.items() if not k.startswith("time/memory_"))
    return state, memory, metrics, centroids


def train(
    config: TrainConfig,
    workdir: str | pathlib.Path,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Run (or resume) `config` in `workdir`; returns the last step's metrics. `on_step(step,
    metrics)` runs after each step's metrics are written (benchmarks/soak.py samples there)."""
    workdir = pathlib.Path(workdir)
    multihost.initialize(config.mesh)
    primary = multihost.is_primary()
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(to_dict(config), indent=2) + "\n")
    multihost.barrier("workdir")
    run, params, memory = setup(config, workdir)
    state = init_train_state(
        params, run.optimizer, run.plan.algorithm, run.step_config.loss_spike_window
    )
    # Every process holds the same values: each fills its own devices' shards (copies: the
    # loaded params are dropped here, the encoder has its own, and the update donates these).
    state = sharding.put(state, sharding.param_shardings(state, run.mesh))
    del params
    iterator = pipeline.make_iterator(config.data, "train")
    manager = checkpoint.manager(workdir / "checkpoints", config.checkpoint)
    start_step, centroids = 0, None
    if manager.latest_step() is not None:
        state, memory, start_step, centroids = _restore(run, manager, state, memory, iterator)
    writer = MetricsWriter(workdir, start_step, config.tensorboard) if primary else NullWriter()
    compiled = None
    bar = tqdm(
        total=config.total_steps,
        initial=start_step,
        desc=config.name,
        unit="step",
        disable=not (config.progress and primary),
        file=sys.stdout,
    )
    metrics: dict[str, float] = {}
    try:
        if start_step == 0 and config.eval.initial:
            writer.write(0, _eval(run, state.params, 0, memory))
        for step in range(start_step + 1, config.total_steps + 1):
            batch = next(iterator)
            if compiled is None and run.plan.update_policy:
                compiled = _compile(run, state)
            state, memory, metrics, centroids = _one_step(
                run, step, state, memory, batch, compiled, centroids
            )
            evaluate_now = (config.eval.every_steps and step % config.eval.every_steps == 0) or (
                config.eval.final and step == config.total_steps
            )
            if evaluate_now:
                metrics.update(_eval(run, state.params, step, memory))
            writer.write(step, metrics)
            every = config.checkpoint.every_steps
            if (every and step % every == 0) or step == config.total_steps:
                _save(run, manager, step, state, memory, iterator, centroids, metrics)
                _crash_drill("during_save", step)
                _crash_drill("after_checkpoint", step, manager)
            bar.update(1)
            bar.set_postfix(
                reward=f"{metrics['reward/mean']:.3f}", loss=f"{metrics.get('train/loss', 0):.4f}"
            )
            if on_step is not None:
                on_step(step, metrics)
    finally:
        bar.close()
        manager.wait_until_finished()
        manager.close()
        writer.close()
    if primary:
        if memory is not None:
            write_memory_report(workdir)
        print(summary(workdir, config), flush=True)
    return metrics


def rollout_sample_config(rollout: RolloutConfig, tokenizer) -> SampleConfig:
    """The sampler settings of a run's rollouts (J per prompt, stop at the tokenizer's stop ids)."""
    return SampleConfig(
        max_new_tokens=rollout.max_new_tokens,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        num_samples=rollout.num_samples,
        stop_ids=tuple(tokenizer.stop_ids),
        pad_id=tokenizer.pad_id,
    )


def _compile(run: Run, state):
    """jit the update with shardings; shapes come at the first call (one compile per shape)."""
    n = run.config.data.batch_size * run.config.rollout.num_samples
    example = RolloutBatch(*(np.zeros((n, 1)) for _ in range(9)))
    example = example._replace(rewards=np.zeros((n,)), sample_mask=np.zeros((n,)))
    return make_train_step(
        run.model_config, run.step_config, run.optimizer, run.mesh, state, example
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exp", required=True, help="experiments/NAME.py or a path to a .py file")
    parser.add_argument("--workdir", required=True, help="run directory (resumes if it has one)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config (no model or data download), print it and the run plan, write "
        "nothing; exit 0, or non-zero with the problems",
    )
    return parser.parse_args(argv)


def dry_run(config: TrainConfig) -> str:
    """The resolved config as JSON and the run plan, after every check that needs neither the
    model nor the data (raises ConfigError with every problem otherwise). Writes nothing."""
    validate_run(config, jax.device_count())
    lines = [json.dumps(to_dict(config), indent=2), f"run plan of {config.name}:"]
    lines += [f"  {line}" for line in describe(run_plan(config))]
    lines.append(
        "checked: the config against itself, the data and memory files and "
        f"{jax.device_count()} local device(s); not checked (they need the tokenizer and the "
        "model): prompt and generation lengths against the longest tokenized prompt and the "
        "model's positions (the run checks them before its first step)"
    )
    if multihost.cluster_args(config.mesh) is not None:
        lines.append("multi-host config: the mesh was checked against this host's devices only")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.dry_run:
        try:
            config = apply_overrides(load_experiment(args.exp), args.set)
            print(dry_run(config), flush=True)
        except (ConfigError, ValueError, KeyError, TypeError, FileNotFoundError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            print(f"config error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        return {}
    config = apply_overrides(load_experiment(args.exp), args.set)
    return train(config, args.workdir, on_step=_crash_after_hook())


if __name__ == "__main__":
    main()
