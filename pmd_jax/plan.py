"""Compile a run's programs ahead of time for a target and print what each chip holds.

    python -m pmd_jax.plan --exp gsm8k --set model=qwen3-8b --topology v5e:2x4
    python -m pmd_jax.plan --exp gsm8k --set model=qwen3-8b --topology v5p:2x2x1 \
        --set rollout.max_new_tokens=8192 --prompt-len 512
    python -m pmd_jax.plan --exp arith --local          # this machine's devices (e.g. the CPU)
    python -m pmd_jax.plan --exp gsm8k --gpus 8         # shapes only (no GPU compiler here)

No weights are loaded: the model's shapes come from a preset, a config.json, a GGUF header
(`registry.model_shape`), and every program is lowered on abstract arrays (`jax.eval_shape`) with
the run's shardings over the target's devices. A TPU topology (`v5e:2x4`, `v4:2x2x1`, `v5p:2x2x1`,
`v6e:2x4`, ...) is compiled by the real TPU compiler (`pip install libtpu`), no TPU needed.

Per program and chip it reports the parts held (weights, optimizer state, teacher, batch, KV
cache: from shapes and shardings), XLA's memory analysis (arguments, outputs, temporaries) and
the total against the chip's HBM; flops and HBM bytes per step counted from shapes (XLA's own
cost analysis counts a loop body once: the layer scan, the micro-batch scan, the decode loop);
a roofline step time, an estimate; and the collectives in the compiled HLO. When the train step
does not fit it tries, and prints, settings that would.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pmd_jax import sharding
from pmd_jax.config import TrainConfig, apply_overrides, load_experiment
from pmd_jax.model import registry
from pmd_jax.model.config import ModelConfig
from pmd_jax.model.scratch import scratch_config
from pmd_jax.model.transformer import init_params
from pmd_jax.optimizer import make_optimizer
from pmd_jax.platform import compile_for, on_mesh
from pmd_jax.sampling import SampleConfig, sample_program
from pmd_jax.train_step import (
    RolloutBatch,
    StepConfig,
    batch_shardings,
    init_train_state,
    make_train_step,
    response_hidden,
    state_shardings,
)

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """Public per-chip figures: HBM bytes, dense bf16 flop/s and HBM bytes/s."""

    name: str
    hbm: float
    peak_flops: float
    bandwidth: float


CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, 1.228e12),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, 0.819e12),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, 2.765e12),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, 1.64e12),
    "h100": Chip("NVIDIA H100 SXM", 80e9, 989e12, 3.35e12),
    "h200": Chip("NVIDIA H200", 141e9, 989e12, 4.8e12),
    "a100": Chip("NVIDIA A100 80GB", 80e9, 312e12, 2.039e12),
}


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the programs would run: `devices` to compile for (None: shapes only)."""

    name: str
    chip: Chip
    num_devices: int
    devices: tuple | None
    platform: str  # "tpu" | "gpu" | the local backend


def tpu_target(topology: str) -> Target:
    """A TPU slice by topology name, e.g. "v5e:2x4" (8 chips); needs libtpu installed."""
    from jax.experimental import topologies

    # libtpu looks for a TPU VM's metadata first; on any other host it would log pages of it.
    # It also takes a lock on the TPU, which a compile-only process does not need (two plans, or
    # a plan beside the tests, may then run at once).
    for name, value in (
        ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
        ("TPU_STDERR_LOG_LEVEL", "3"),
        ("TPU_MIN_LOG_LEVEL", "3"),
        ("TF_CPP_MIN_LOG_LEVEL", "3"),
        ("TPU_WORKER_HOSTNAMES", "localhost"),
    ):
        os.environ.setdefault(name, value)  # fmt: skip
    generation = topology.split(":")[0].lower()
    if generation not in CHIPS or not generation.startswith("v"):
        raise ValueError(
            f"--topology {topology!r}: unknown TPU generation {generation!r}; "
            f"use one of {[name for name in CHIPS if name.startswith('v')]} (e.g. v5e:2x4)"
        )
    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    except Exception as err:  # no libtpu, or a shape the generation does not have
        raise RuntimeError(
            f"--topology {topology!r}: the TPU compiler could not describe it "
            f"({type(err).__name__}: {err}). It needs libtpu (pip install -e '.[test]')"
        ) from err
    devices = tuple(topo.devices)
    chip = CHIPS[generation]
    cores = len(devices) // len({tuple(d.coords) for d in devices})
    if cores > 1:  # v4 without megacore: each TensorCore a device, with half the chip
        chip = Chip(f"{chip.name} TensorCore (1/{cores} chip)", chip.hbm / cores,
                    chip.peak_flops / cores, chip.bandwidth / cores)  # fmt: skip
    return Target(topology, chip, len(devices), devices, "tpu")


def local_target() -> Target:
    devices = tuple(jax.devices())
    kind = devices[0].device_kind
    chip = next((c for key, c in CHIPS.items() if key in kind.lower().replace(" ", "")), None)
    if chip is None:  # the CPU: host memory, no roofline
        import psutil

        chip = Chip(kind, float(psutil.virtual_memory().total), float("nan"), float("nan"))
    return Target(f"local {kind}", chip, len(devices), devices, jax.default_backend())


def gpu_target(count: int, kind: str = "h100") -> Target:
    if kind not in CHIPS or kind.startswith("v"):
        raise ValueError(f"--gpu-kind {kind!r}: use one of h100, h200, a100")
    return Target(f"{count} x {CHIPS[kind].name}", CHIPS[kind], count, None, "gpu")


# ---------------------------------------------------------------------------------------- shapes


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The per-step array sizes a run compiles for."""

    prompts: int  # B
    samples: int  # J
    prompt_len: int  # Tp (student prompt width)
    response_len: int  # G
    teacher_len: int  # Tt (teacher prompt width; 1 for GRPO)
    reflect_rows: int
    reflect_prompt_len: int
    reflect_new_tokens: int

    @property
    def rows(self) -> int:
        return self.prompts * self.samples


def run_shapes(config: TrainConfig, prompt_len: int) -> Shapes:
    teacher = 1 if config.algorithm == "grpo" else config.teacher.max_prompt_tokens
    return Shapes(
        prompts=config.data.batch_size,
        samples=config.rollout.num_samples,
        prompt_len=prompt_len,
        response_len=config.rollout.max_new_tokens,
        teacher_len=teacher,
        reflect_rows=config.reflect.batch_size,
        reflect_prompt_len=config.reflect.prompt_width,
        reflect_new_tokens=config.reflect.max_new_tokens,
    )


def model_config_of(config: TrainConfig) -> ModelConfig:
    """The run's ModelConfig from shapes only (a "scratch" model from ModelSpec's sizes)."""
    spec = config.model
    if spec.name == "scratch":  # the tokenizer trained for it has at most spec.vocab_size
        base = scratch_config(spec, spec.vocab_size)
    else:
        base = registry.model_shape(spec.name)
    return base.replace(
        param_dtype=spec.param_dtype, dtype=spec.dtype, attention_impl=spec.attention_impl
    )


def step_config_of(config: TrainConfig) -> StepConfig:
    return StepConfig(
        algorithm=config.algorithm,
        loss=config.loss,
        group_size=config.rollout.num_samples,
        micro_batches=config.optimizer.micro_batches,
        teacher_tau=config.teacher_tau,
        remat=config.model.remat,
    )


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def abstract_state(model_config: ModelConfig, config: TrainConfig, mesh):
    optimizer = make_optimizer(config.optimizer, config.total_steps)
    state = jax.eval_shape(
        lambda: init_train_state(
            init_params(model_config, jax.random.PRNGKey(0)),
            optimizer,
            config.algorithm,
            config.optimizer.loss_spike_window,
        )
    )
    return optimizer, _abstract(state, state_shardings(state, mesh))


def abstract_batch(shapes: Shapes, mesh) -> RolloutBatch:
    n, tp, g, tt = shapes.rows, shapes.prompt_len, shapes.response_len, shapes.teacher_len
    i32, f32, b = jnp.int32, jnp.float32, jnp.bool_
    batch = RolloutBatch(
        prompt_tokens=jax.ShapeDtypeStruct((n, tp), i32),
        prompt_mask=jax.ShapeDtypeStruct((n, tp), b),
        response_tokens=jax.ShapeDtypeStruct((n, g), i32),
        response_mask=jax.ShapeDtypeStruct((n, g), b),
        sampler_logprobs=jax.ShapeDtypeStruct((n, g), f32),
        rewards=jax.ShapeDtypeStruct((n,), f32),
        teacher_tokens=jax.ShapeDtypeStruct((n, tt), i32),
        teacher_mask=jax.ShapeDtypeStruct((n, tt), b),
        sample_mask=jax.ShapeDtypeStruct((n,), b),
    )
    return _abstract(batch, batch_shardings(batch, mesh))


def per_device_bytes(tree) -> int:
    """Bytes one device holds of abstract arrays with NamedShardings."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape)
        total += math.prod(shard) * np.dtype(x.dtype).itemsize
    return total


# ------------------------------------------------------------------------------- counted figures


def _matmul_params(m: ModelConfig) -> int:
    """Weights a token multiplies through in the layers (embeddings and norms excluded)."""
    d, f = m.hidden_size, m.intermediate_size
    attention = d * m.head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
    return m.num_layers * (attention + 3 * d * f)


def forward_flops(m: ModelConfig, rows: int, length: int, head_tokens: int) -> float:
    """One forward of `rows` sequences of `length` tokens and the LM head on `head_tokens`
    positions. Attention as computed: the splash kernel skips the masked half of T x T, the
    others ("naive", "xla", "cudnn" with a mask) compute it whole."""
    layers = 2 * _matmul_params(m) * rows * length
    dense = 1 if m.attention_impl == "splash" else 2
    attention = 2 * dense * m.num_layers * m.num_heads * m.head_dim * rows * length * length
    return layers + attention + 2 * m.hidden_size * m.vocab_size * head_tokens


def train_step_flops(m: ModelConfig, shapes: Shapes, algorithm: str, remat: str) -> float:
    """Student forward + backward (2x forward; "full" remat recomputes the forward once more)
    over prompt + response, and for SDPO/PMD the teacher's forward over its prompt + response."""
    n, g = shapes.rows, shapes.response_len
    student = forward_flops(m, n, shapes.prompt_len + g, n * g)
    total = student * (4 if remat == "full" else 3)
    if algorithm != "grpo":
        total += forward_flops(m, n, shapes.teacher_len + g, n * g)
    return total


def sampler_flops(m: ModelConfig, rows: int, prompt_len: int, new_tokens: int) -> float:
    """Prefill of the prompts + one token per row per step against the growing cache."""
    prefill = forward_flops(m, rows, prompt_len, rows)
    per_token = 2 * _matmul_params(m) + 2 * m.hidden_size * m.vocab_size
    mean_context = prompt_len + new_tokens / 2
    attention = 4 * m.num_layers * m.num_heads * m.head_dim * mean_context
    return prefill + rows * new_tokens * (per_token + attention)


def kv_cache_bytes(m: ModelConfig, rows: int, length: int) -> int:
    """Keys and values of `rows` sequences of `length` tokens, in the compute dtype."""
    itemsize = np.dtype(m.dtype).itemsize
    return 2 * m.num_layers * rows * length * m.num_kv_heads * m.head_dim * itemsize


_COLLECTIVE = re.compile(
    r"=\s*(?:\(([^)]*)\)|(\w+)\[([\d,]*)\][^ ]*)\s+"
    r"(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(?:-start)?\("
)
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """Count and result bytes of each collective in compiled HLO text (ops inside a loop body
    counted once, like XLA's cost analysis)."""
    found: dict[str, dict[str, int]] = {}
    for match in _COLLECTIVE.finditer(hlo_text):
        tuple_shapes, dtype, dims, op = match.groups()
        shapes = _SHAPE.findall(tuple_shapes) if tuple_shapes else [(dtype, dims)]
        size = 0
        for name, dims_text in shapes:
            try:
                itemsize = np.dtype(_HLO_DTYPES.get(name, name)).itemsize
            except TypeError:
                itemsize = 0
            size += math.prod(int(d) for d in dims_text.split(",") if d) * itemsize
        entry = found.setdefault(op, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += size
    return found


_HLO_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "s32": "int32",
               "u32": "uint32", "pred": "bool", "s8": "int8", "u8": "uint8"}  # fmt: skip


# ---------------------------------------------------------------------------------- the programs


@dataclasses.dataclass
class ProgramPlan:
    """One compiled program's figures, per chip (bytes) and per step (flops)."""

    name: str
    parts: dict[str, int]  # what it holds, from shapes and shardings
    flops_per_chip: float
    bytes_per_chip: float  # HBM traffic counted from shapes (a lower bound)
    argument: int = 0
    output: int = 0
    alias: int = 0
    temp: int = 0
    xla_flops: float = float("nan")  # cost analysis (loop bodies once)
    collectives: dict = dataclasses.field(default_factory=dict)
    compile_s: float = 0.0
    compiled: bool = False
    error: str = ""
    hlo: str = dataclasses.field(default="", repr=False)  # the compiled HLO text (--hlo-dir)

    @property
    def total(self) -> int:
        """Peak bytes on a chip: arguments + outputs not aliased to them + temporaries; from the
        parts alone when nothing was compiled."""
        if not self.compiled:
            return sum(self.parts.values()) + self.temp
        return self.argument + self.output - self.alias + self.temp

    def step_seconds(self, chip: Chip) -> float:
        return max(self.flops_per_chip / chip.peak_flops, self.bytes_per_chip / chip.bandwidth)


_OOM = re.compile(r"temporaries \(([\d.]+)([KMGTP]?)\)")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


def _compile(plan: ProgramPlan, lowered_fn) -> ProgramPlan:
    """Lower and compile; an out-of-memory refusal records the compiler's temporaries."""
    start = time.perf_counter()
    try:
        compiled = lowered_fn().compile()
    except Exception as err:  # the TPU compiler refuses programs that exceed HBM
        message = str(err)
        oom = _OOM.search(message)
        if oom is None:
            plan.error = f"{type(err).__name__}: {message.splitlines()[0][:300]}"
        else:
            plan.temp = int(float(oom.group(1)) * _UNITS[oom.group(2)])
            plan.error = "exceeds HBM (the compiler's count of temporaries)"
        plan.compile_s = time.perf_counter() - start
        return plan
    plan.compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    plan.argument = memory.argument_size_in_bytes
    plan.output = memory.output_size_in_bytes
    plan.alias = memory.alias_size_in_bytes
    plan.temp = memory.temp_size_in_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    plan.xla_flops = float((cost or {}).get("flops", float("nan")))
    plan.hlo = compiled.as_text()
    plan.collectives = collectives(plan.hlo)
    plan.compiled = True
    return plan


def plan_train_step(config: TrainConfig, m: ModelConfig, shapes: Shapes, mesh, compile_it: bool):
    step_config = step_config_of(config)
    optimizer, state = abstract_state(m, config, mesh)
    batch = abstract_batch(shapes, mesh)
    parts = {
        "weights": per_device_bytes(state.params),
        "optimizer": per_device_bytes(state.opt_state),
        "teacher": per_device_bytes(state.teacher_params) if state.teacher_params else 0,
        "batch": per_device_bytes(batch),
        "step counters": per_device_bytes((state.step, state.skipped_updates, state.recent_losses)),
    }
    devices = mesh.devices.size
    gathered = sharding.bytes_per_device(state.params, mesh, sharding.sampling_param_spec)
    reads = 3 if config.model.remat == "full" else 2  # forward (+ recompute) + backward
    traffic = gathered * (reads + (state.teacher_params is not None))
    traffic += 2 * (parts["weights"] + parts["optimizer"]) + parts["weights"]  # update r/w
    plan = ProgramPlan(
        "train step",
        parts,
        train_step_flops(m, shapes, config.algorithm, config.model.remat) / devices,
        traffic,
    )
    if compile_it:
        step = make_train_step(m, step_config, optimizer, mesh, state, batch)
        _compile(plan, lambda: step.lower(state, batch))
    return plan


def plan_teacher_forward(config: TrainConfig, m: ModelConfig, shapes: Shapes, mesh, compile_it):
    """The teacher's share of the step on its own: hidden states of one micro-batch's responses
    under their teacher prompts (no gradient)."""
    _, state = abstract_state(m, config, mesh)
    # As the step runs it: one micro-batch at a time.
    shapes = dataclasses.replace(shapes, prompts=shapes.prompts // config.optimizer.micro_batches)
    batch = abstract_batch(shapes, mesh)
    n, g = shapes.rows, shapes.response_len
    parts = {
        "teacher": per_device_bytes(state.params),
        "batch": per_device_bytes((batch.teacher_tokens, batch.teacher_mask, batch.response_tokens,
                                   batch.response_mask)),
    }  # fmt: skip
    devices = mesh.devices.size
    gathered = sharding.bytes_per_device(state.params, mesh, sharding.sampling_param_spec)
    plan = ProgramPlan(
        "teacher forward",
        parts,
        forward_flops(m, n, shapes.teacher_len + g, 0) / devices,
        gathered,
    )
    if compile_it:

        def forward(params, tokens, mask, response, response_mask):
            with on_mesh(mesh, layer_spec=sharding.layer_param_spec):  # as in the train step
                return response_hidden(params, m, tokens, mask, response, response_mask)

        args = (state.params, batch.teacher_tokens, batch.teacher_mask, batch.response_tokens,
                batch.response_mask)  # fmt: skip
        hidden_sharding = sharding.batch_sharding(mesh, 3)
        program = jax.jit(forward, out_shardings=hidden_sharding)
        _compile(plan, lambda: program.lower(*args))
    return plan


def plan_sampler(
    name: str, m: ModelConfig, params, rows: int, samples: int, prompt_len: int, new_tokens: int,
    mesh, compile_it: bool,
):  # fmt: skip
    """The sampler on `rows // samples` prompts x `samples` continuations: weights in the
    training layout as arguments, gathered to the sampling layout inside, KV cache row-split."""
    prompts = rows // samples
    divisor = sharding.batch_divisor(mesh)
    rows_per_device = -(-rows // divisor)
    if mesh.shape["tensor"] > 1 and m.num_kv_heads % mesh.shape["tensor"] == 0:
        kv_split = mesh.shape["tensor"]
    else:
        kv_split = 1
    in_compute_dtype = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, m.dtype), params)
    sampling_weights = sharding.bytes_per_device(
        in_compute_dtype, mesh, sharding.sampling_param_spec
    )
    cache = kv_cache_bytes(m, rows_per_device, prompt_len + new_tokens) // kv_split
    parts = {
        "weights (training layout)": per_device_bytes(params),
        "weights (sampling layout)": sampling_weights,
        "KV cache": cache,
    }
    traffic = new_tokens * (sampling_weights + cache / 2)  # each step reads weights + cache
    flops = sampler_flops(m, rows_per_device, prompt_len, new_tokens)
    plan = ProgramPlan(name, parts, flops, traffic)
    if compile_it:
        config = SampleConfig(max_new_tokens=new_tokens, num_samples=samples)
        replicated = sharding.replicated(mesh)
        tokens = jax.ShapeDtypeStruct((prompts, prompt_len), jnp.int32, sharding=replicated)
        mask = jax.ShapeDtypeStruct((prompts, prompt_len), jnp.bool_, sharding=replicated)
        key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
        _compile(
            plan,
            lambda: sample_program.lower(params, m, tokens, mask, key, config, None, mesh),
        )
    return plan


def plan_run(
    config: TrainConfig, target: Target, shapes: Shapes, programs: Sequence[str] = ("all",)
) -> list[ProgramPlan]:
    """Every program of the run (or those named) on `target`."""
    m = model_config_of(config)
    compile_it = target.devices is not None
    if compile_it:
        mesh = sharding.make_mesh(config.mesh, target.devices)
    else:  # shapes only: a mesh over stand-in devices (nothing is compiled on it)
        mesh = sharding.make_mesh(config.mesh, np.arange(target.num_devices))
    wanted = set(programs)
    want = lambda name: "all" in wanted or name in wanted  # noqa: E731
    plans = []
    with compile_for(target.platform):
        if want("train"):
            plans.append(plan_train_step(config, m, shapes, mesh, compile_it))
        if want("teacher") and config.algorithm != "grpo":
            plans.append(plan_teacher_forward(config, m, shapes, mesh, compile_it))
        _, state = abstract_state(m, config, mesh)
        if want("sampler"):
            waves = config.rollout.waves
            name = "rollout sampler" + (f" (1 of {waves} waves)" if waves > 1 else "")
            plans.append(
                plan_sampler(name, m, state.params, shapes.rows // waves, shapes.samples,
                             shapes.prompt_len, shapes.response_len, mesh, compile_it)
            )  # fmt: skip
        if want("reflect") and config.algorithm == "pmd":
            plans.append(
                plan_sampler("reflection sampler", m, state.params, shapes.reflect_rows, 1,
                             shapes.reflect_prompt_len, shapes.reflect_new_tokens, mesh,
                             compile_it)
            )  # fmt: skip
    return plans


# ------------------------------------------------------------------------------- fit suggestions


def held_bytes(config: TrainConfig, target: Target) -> int:
    """Per-chip bytes of weights + optimizer state + teacher (from shapes: nothing compiled)."""
    mesh = sharding.make_mesh(config.mesh, np.arange(target.num_devices))
    with compile_for(target.platform):
        _, state = abstract_state(model_config_of(config), config, mesh)
    return per_device_bytes((state.params, state.opt_state, state.teacher_params))


def candidate_changes(config: TrainConfig, target: Target) -> list[list[str]]:
    """Settings to try, cumulatively, in order. First what every large step needs (splash
    attention on a TPU, parameters sharded over every chip); then, while weights + optimizer +
    teacher alone take over 40% of the HBM, leaner state (bfloat16 moments, Adafactor, bfloat16
    parameters); then activations (full remat, bfloat16 compute, more micro-batches)."""
    changes: list[list[str]] = []
    applied: list[str] = []

    def add(change: list[str]) -> TrainConfig:
        changes.append(change)
        applied.extend(change)
        return apply_overrides(config, applied)

    current = config
    if target.platform == "tpu" and config.model.attention_impl != "splash":
        current = add(["model.attention_impl=splash"])
    shape = sharding.make_mesh(config.mesh, np.arange(target.num_devices)).shape
    if shape["data"] > 1:
        current = add(["mesh.data=1", f"mesh.fsdp={shape['data'] * shape['fsdp']}"])
    lean = []
    if config.optimizer.name == "adamw" and config.optimizer.moment_dtype == "float32":
        lean.append(["optimizer.moment_dtype=bfloat16"])
    if config.optimizer.name == "adamw":
        lean.append(["optimizer.name=adafactor", "optimizer.moment_dtype=float32"])
    if config.model.param_dtype == "float32":
        lean.append(["model.param_dtype=bfloat16", "model.dtype=bfloat16"])
    for change in lean:
        if held_bytes(current, target) <= 0.4 * target.chip.hbm:
            break
        current = add(change)
    if current.model.remat != "full":
        current = add(["model.remat=full"])
    if current.model.dtype == "float32":
        current = add(["model.dtype=bfloat16"])
    micro, prompts = current.optimizer.micro_batches, current.data.batch_size
    divisor = (
        target.num_devices
        // sharding.make_mesh(current.mesh, np.arange(target.num_devices)).shape["tensor"]
    )
    # Every micro-batch holds whole groups and at least one row per data x fsdp device; the
    # count grows 4x a try (each try is a compile), ending at the most there can be.
    most, group = micro, current.rollout.num_samples
    while most * 2 <= prompts and (prompts // (most * 2)) * group >= divisor:
        most *= 2
    while micro < most:
        micro = min(micro * 4, most)
        changes.append([f"optimizer.micro_batches={micro}"])
    return changes


def diagnose(plan: ProgramPlan, target: Target) -> str:
    """Which part of a program that does not fit is too big."""
    hbm = target.chip.hbm
    held = plan.parts.get("weights", 0) + plan.parts.get("optimizer", 0)
    held += plan.parts.get("teacher", 0)
    if held > hbm:
        return (
            f"weights + optimizer + teacher alone take {held / GIB:.2f} GiB of {hbm / GIB:.2f}: "
            "shard them over more chips or make the state leaner"
        )
    return (
        f"temporaries ({plan.temp / GIB:.2f} GiB: activations, attention, logits) are the "
        f"largest part; {held / GIB:.2f} GiB is state"
    )


def suggest(
    config: TrainConfig, target: Target, shapes: Shapes, first: ProgramPlan, max_tries: int,
    log=print,
) -> list[tuple[list[str], ProgramPlan]]:  # fmt: skip
    """Apply candidate changes cumulatively until the train step fits (or tries run out)."""
    tried = []
    applied: list[str] = []
    for change in candidate_changes(config, target)[:max_tries]:
        keys = {x.split("=")[0] for x in change}
        applied = [c for c in applied if c.split("=")[0] not in keys]
        applied += change
        changed = apply_overrides(config, applied)
        log(f"  trying {' '.join(applied)} ...", flush=True)
        plan = plan_run(changed, target, shapes, ("train",))[0]
        tried.append((list(applied), plan))
        if fits(plan, target):
            break
    return tried


def suggest_waves(
    config: TrainConfig, target: Target, shapes: Shapes, max_tries: int, base=(), log=print
) -> list[tuple[list[str], ProgramPlan]]:
    """On top of `base` (the train step's changes): split the weights over tensor while their
    sampling copy alone takes over half the HBM, then double rollout.waves (the sampler's share
    of the batch per call) until the rollout sampler fits."""
    applied = list(base)
    current = apply_overrides(config, applied)
    m = model_config_of(current)
    whole = m.num_params * np.dtype(m.dtype).itemsize
    changes = []
    tensor = current.mesh.tensor
    while whole / tensor > 0.5 * target.chip.hbm and tensor * 2 <= m.num_kv_heads:
        tensor *= 2
        if target.num_devices % tensor:
            break
        changes.append(["mesh.data=1", f"mesh.fsdp={target.num_devices // tensor}",
                        f"mesh.tensor={tensor}"])  # fmt: skip
    waves = current.rollout.waves
    while waves * 2 <= current.data.batch_size:
        waves *= 2
        if current.data.batch_size % waves == 0:
            changes.append([f"rollout.waves={waves}"])
    tried = []
    for change in changes[:max_tries]:
        keys = {x.split("=")[0] for x in change}
        applied = [c for c in applied if c.split("=")[0] not in keys] + change
        log(f"  trying {' '.join(applied)} ...", flush=True)
        plan = plan_run(apply_overrides(config, applied), target, shapes, ("sampler",))[0]
        tried.append((list(applied), plan))
        if fits(plan, target):
            break
    return tried


def fits(plan: ProgramPlan, target: Target) -> bool:
    return not plan.error and plan.total <= target.chip.hbm


# ----------------------------------------------------------------------------------- the report


def _gib(n: float) -> str:
    """Bytes as a right-aligned GiB figure (MiB below 1 GiB, so small models read too)."""
    if abs(n) < GIB:
        return f"{n / 2**20:8.1f} MiB"
    return f"{n / GIB:8.2f} GiB"


def format_plan(config: TrainConfig, target: Target, shapes: Shapes, plans) -> str:
    m = model_config_of(config)
    chip = target.chip
    mesh = sharding.make_mesh(config.mesh, np.arange(target.num_devices)).shape
    lines = [
        f"plan: {config.name} ({config.algorithm}) on {target.name}: {target.num_devices} x "
        f"{chip.name}, {chip.hbm / GIB:.2f} GiB HBM each",
        f"model: {config.model.name} {m.num_params / 1e9:.2f}B params, {m.num_layers} layers, "
        f"params {m.param_dtype}, compute {m.dtype}, attention {m.attention_impl}, "
        f"remat {config.model.remat}; optimizer {config.optimizer.name}"
        f" ({config.optimizer.moment_dtype} moments), {config.optimizer.micro_batches} micro-batch(es)",
        f"mesh: data={mesh['data']} fsdp={mesh['fsdp']} tensor={mesh['tensor']}; step: "
        f"{shapes.prompts} prompts x {shapes.samples} = {shapes.rows} rows, prompt "
        f"{shapes.prompt_len}, response {shapes.response_len}, teacher prompt {shapes.teacher_len}",
        "",
        "per chip (parts from shapes and shardings; arguments/outputs/temporaries: "
        + ("XLA's compiled memory analysis)" if target.devices else "not compiled: shapes only)"),
    ]
    for plan in plans:
        verdict = "FITS" if fits(plan, target) else ("ERROR" if plan.error and "HBM" not in
                                                      plan.error else "DOES NOT FIT")  # fmt: skip
        lines.append(f"  {plan.name}: {verdict}" + (f" ({plan.error})" if plan.error else "")
                     + (f", compiled in {plan.compile_s:.0f} s" if plan.compile_s else ""))  # fmt: skip
        for part, size in plan.parts.items():
            lines.append(f"    {part:<28}{_gib(size)}")
        if plan.compiled:
            lines.append(f"    {'arguments':<28}{_gib(plan.argument)}")
            lines.append(f"    {'outputs (not aliased)':<28}{_gib(plan.output - plan.alias)}")
        lines.append(f"    {'temporaries':<28}{_gib(plan.temp)}")
        headroom = chip.hbm - plan.total
        lines.append(
            f"    {'total':<28}{_gib(plan.total)}   of {chip.hbm / GIB:.2f}: headroom "
            f"{headroom / GIB:.2f}"
        )
        flops = plan.flops_per_chip
        lines.append(
            f"    flops/chip {flops:.3e} (counted), XLA {plan.xla_flops:.3e} (loop bodies once); "
            f"HBM bytes/chip >= {plan.bytes_per_chip:.3e}"
        )
        if math.isfinite(chip.peak_flops):
            seconds = plan.step_seconds(chip)
            bound = "compute" if flops / chip.peak_flops >= plan.bytes_per_chip / chip.bandwidth \
                else "memory"  # fmt: skip
            lines.append(f"    roofline estimate {seconds:.3f} s ({bound}-bound at peak)")
        if plan.collectives:
            text = ", ".join(
                f"{op} x{c['count']} ({c['bytes'] / 2**20:.1f} MiB)"
                for op, c in sorted(plan.collectives.items())
            )
            lines.append(f"    collectives (HLO ops, loop bodies once): {text}")
    return "\n".join(lines)


def format_suggestions(tried, target: Target) -> str:
    lines = ["", "tried (cumulatively):"]
    for changes, plan in tried:
        state = "FITS" if fits(plan, target) else ("no" if not plan.error or "HBM" in plan.error
                                                   else f"error: {plan.error}")  # fmt: skip
        lines.append(f"  {' '.join(changes):<70} total {_gib(plan.total)}  {state}")
    if tried and fits(tried[-1][1], target):
        lines.append("fits with: " + " ".join(f"--set {c}" for c in tried[-1][0]))
    else:
        lines.append(
            "nothing tried fits: shorten the sequences (rollout.max_new_tokens, "
            "teacher.max_prompt_tokens), use more chips, or a smaller model"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exp", required=True, help="experiments/NAME.py or a .py path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--topology", help="TPU topology, e.g. v5e:2x4, v4:2x2x1, v5p:2x2x1")
    where.add_argument("--local", action="store_true", help="this machine's jax devices")
    where.add_argument("--gpus", type=int, help="N GPUs (shapes only)")
    parser.add_argument("--gpu-kind", default="h100", help="h100 | h200 | a100 (with --gpus)")
    parser.add_argument("--prompt-len", type=int, default=512, help="student prompt width Tp")
    parser.add_argument(
        "--programs", nargs="+", default=["all"],
        choices=["all", "train", "teacher", "sampler", "reflect"],
    )  # fmt: skip
    parser.add_argument("--max-tries", type=int, default=12, help="fit suggestions to compile")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--hlo-dir", help="also write each compiled program's HLO text here")
    return parser.parse_args(argv)


def plan_to_dict(plan: ProgramPlan, target: Target) -> dict[str, Any]:
    out = dataclasses.asdict(plan)
    del out["hlo"]
    out.update(total=plan.total, fits=fits(plan, target))
    if math.isfinite(target.chip.peak_flops):
        out["roofline_seconds_estimate"] = plan.step_seconds(target.chip)
    return out


def write_hlo(plans: Sequence[ProgramPlan], folder: str) -> None:
    """Each compiled program's HLO as `folder/<program name>.hlo.txt` (what the collectives and
    the buffer sizes are read from)."""
    import pathlib

    out = pathlib.Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for plan in plans:
        if plan.hlo:
            name = re.sub(r"[^a-z0-9]+", "_", plan.name.lower()).strip("_")
            (out / f"{name}.hlo.txt").write_text(plan.hlo)
            print(f"wrote {out / f'{name}.hlo.txt'}")


def main(argv: Sequence[str] | None = None) -> list[ProgramPlan]:
    args = parse_args(argv)
    config = apply_overrides(load_experiment(args.exp), args.set)
    if args.topology:
        target = tpu_target(args.topology)
    elif args.gpus:
        target = gpu_target(args.gpus, args.gpu_kind)
    else:
        target = local_target()
    shapes = run_shapes(config, args.prompt_len)
    print(f"compiling for {target.name} ...", flush=True)
    plans = plan_run(config, target, shapes, args.programs)
    print(format_plan(config, target, shapes, plans))
    tried = []
    train = next((p for p in plans if p.name == "train step"), None)
    if train is not None and not fits(train, target) and args.max_tries > 0:
        print(f"\nthe train step does not fit: {diagnose(train, target)}", flush=True)
        tried = suggest(config, target, shapes, train, args.max_tries)
        print(format_suggestions(tried, target))
    sampler = next((p for p in plans if p.name.startswith("rollout sampler")), None)
    if sampler is not None and not fits(sampler, target) and args.max_tries > 0:
        print(f"\nthe rollout sampler does not fit ({sampler.error or 'over HBM'})", flush=True)
        base = tried[-1][0] if tried else []
        waves = suggest_waves(config, target, shapes, args.max_tries, base)
        print(format_suggestions(waves, target))
        tried += waves
    if args.hlo_dir:
        write_hlo(plans, args.hlo_dir)
    if args.json:
        import json
        import pathlib

        record = {
            "argv": list(sys.argv[1:] if argv is None else argv),
            "target": target.name,
            "chip": dataclasses.asdict(target.chip),
            "shapes": dataclasses.asdict(shapes),
            "programs": [plan_to_dict(p, target) for p in plans],
            "suggestions": [{"changes": c, "plan": plan_to_dict(p, target)} for c, p in tried],
        }
        pathlib.Path(args.json).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return plans


if __name__ == "__main__":
    main()
