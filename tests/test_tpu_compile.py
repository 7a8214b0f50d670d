"""The real TPU compiler on this CPU (libtpu, the test extra): v5e:2x4 programs at small shapes
lower and compile (train steps, samplers, splash attention on the mesh, the Pallas divergence
kernel compiled by Mosaic, not interpreted), the plan's figures are the compiled ones, and (slow)
the paper-scale Qwen3-8B PMD step fits a v5p-8."""

from __future__ import annotations

import jax
import pytest

from pmd_jax import plan as planner
from pmd_jax.config import apply_overrides, load_experiment
from pmd_jax.losses import LossConfig

# Small shapes, the matrices in whole TPU tiles (multiples of 128): the compiled arguments are then
# the parts counted from shapes up to the tile padding of the small arrays (norm scales, masks).
SMALL = [
    "model.name=scratch", "model.num_layers=2", "model.hidden_size=256",
    "model.intermediate_size=512", "model.num_heads=2", "model.num_kv_heads=2",
    "model.head_dim=128", "model.vocab_size=1024", "model.attention_impl=splash",
    "model.dtype=bfloat16", "data.batch_size=8", "rollout.num_samples=2",
    "rollout.max_new_tokens=128", "teacher.max_prompt_tokens=128", "loss.top_k=8",
    "mesh.data=1", "mesh.fsdp=8", "reflect.batch_size=8", "reflect.prompt_width=128",
    "reflect.max_new_tokens=32",
]  # fmt: skip
PAPER_V5P = [
    "model=qwen3-8b", "rollout.max_new_tokens=8192", "teacher.max_prompt_tokens=2048",
    "model.attention_impl=splash", "mesh.data=1", "mesh.fsdp=4", "model.remat=full",
    "model.dtype=bfloat16", "optimizer.micro_batches=32",
]  # fmt: skip


@pytest.fixture(scope="module")
def v5e():
    pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e '.[test]')")
    try:
        return planner.tpu_target("v5e:2x4")
    except RuntimeError as err:
        pytest.skip(f"the TPU compiler is not available here: {err}")


@pytest.fixture(scope="module")
def small_plans(v5e):
    plans = {}
    for algorithm in ("grpo", "sdpo", "pmd"):
        config = apply_overrides(load_experiment("tiny"), SMALL + [f"algorithm={algorithm}"])
        shapes = planner.run_shapes(config, prompt_len=128)
        plans[algorithm] = {p.name: p for p in planner.plan_run(config, v5e, shapes)}
    return plans


@pytest.mark.parametrize("algorithm", ["grpo", "sdpo", "pmd"])
def test_train_step_compiles_for_v5e_and_the_plan_is_the_compiled_memory(small_plans, algorithm):
    train = small_plans[algorithm]["train step"]
    assert train.compiled, train.error
    # The state and batch are the arguments, up to tile padding (and batch fields this algorithm
    # never reads, which jit drops).
    assert train.argument == pytest.approx(sum(train.parts.values()), rel=0.01)
    assert train.alias >= train.parts["weights"] + train.parts["optimizer"]
    assert train.total == train.argument + train.output - train.alias + train.temp
    # FSDP over 8 chips: weights are gathered for the forward, gradients reduced back.
    assert "all-gather" in train.collectives
    assert {"reduce-scatter", "all-reduce"} & set(train.collectives)


def test_samplers_and_teacher_forward_compile_for_v5e(small_plans):
    pmd = small_plans["pmd"]
    assert set(pmd) == {"train step", "teacher forward", "rollout sampler", "reflection sampler"}
    for plan in pmd.values():
        assert plan.compiled, (plan.name, plan.error)
        assert plan.total < planner.CHIPS["v5e"].hbm
    assert "reflection sampler" not in small_plans["sdpo"]  # only PMD reflects


def _hlo_shapes(hlo: str, op: str) -> set[tuple[str, tuple[int, ...]]]:
    """(dtype, dims) of every `op` result in compiled HLO text."""
    import re

    found = set()
    for dtype, dims in re.findall(rf"= (\w+)\[([\d,]*)\][^ ]* {op}(?:-start)?\(", hlo):
        found.add((dtype, tuple(int(d) for d in dims.split(",") if d)))
    return found


def test_fsdp_layers_are_gathered_one_layer_at_a_time(small_plans):
    """No all-gather in the train step yields a whole [L, in, out] stack of layer weights."""
    train = small_plans["pmd"]["train step"]
    stacks = {(2, 256, 256), (2, 256, 512), (2, 512, 256)}  # L=2: q/k/v/o, gate/up, down
    gathered = {dims for _, dims in _hlo_shapes(train.hlo, "all-gather")}
    assert gathered, "FSDP over 8 chips gathers weights"
    assert not gathered & stacks, gathered & stacks


def test_bfloat16_weights_keep_no_float32_lm_head_sized_buffer(v5e):
    """bfloat16 parameters: the loss's lm_head gradient is written in bfloat16 (losses.
    _chunk_logits), so no float32 [D, V] array appears anywhere in the compiled step; float32
    parameters of course have their float32 [D, V] gradient (the probe sees it)."""

    def train_hlo(param_dtype):
        # D=384 so that no [rows, V] logits chunk (256 rows) has the lm_head's shape
        overrides = SMALL + ["algorithm=pmd", "model.hidden_size=384"]
        overrides += [f"model.param_dtype={param_dtype}"]
        config = apply_overrides(load_experiment("tiny"), overrides)
        shapes = planner.run_shapes(config, prompt_len=128)
        (train,) = planner.plan_run(config, v5e, shapes, ["train"])
        assert train.compiled, train.error
        return train.hlo

    lm_head = {("f32", (384, 1024)), ("f32", (1024, 384))}  # tied: the embedding's [V, D] too
    assert lm_head & _hlo_shapes(train_hlo("float32"), r"[-\w]+")
    assert not lm_head & _hlo_shapes(train_hlo("bfloat16"), r"[-\w]+")


def test_pallas_divergence_kernel_compiles_for_tpu_and_holds_less_than_the_reference(v5e):
    from benchmarks.loss_memory import compiled_memory

    device = v5e.devices[0]
    config = LossConfig()
    rows, vocab = 1024, 32768
    reference = compiled_memory("jax", rows, vocab, "bfloat16", config, device)
    kernel = compiled_memory("pallas", rows, vocab, "bfloat16", config, device)
    # bfloat16 logits: the reference holds float32 log-softmaxes [N, V] of student and teacher,
    # the kernel streams them; both keep top_k's [N, V] working copy (BENCHMARKS.md).
    assert reference["temp_bytes"] >= 2 * rows * vocab * 4
    assert kernel["temp_bytes"] <= 0.5 * reference["temp_bytes"]


def test_splash_is_refused_off_tpu_but_lowers_for_it(v5e):
    """compile_for decides what a trace is for: on the CPU backend alone splash is refused."""
    from pmd_jax.model.transformer import attention

    q = jax.ShapeDtypeStruct((1, 128, 2, 128), "bfloat16")
    mask = jax.ShapeDtypeStruct((1, 128, 128), "bool")
    with pytest.raises(ValueError, match="needs a TPU backend"):
        jax.eval_shape(lambda q, m: attention(q, q, q, m, impl="splash"), q, mask)


@pytest.mark.slow
def test_paper_scale_qwen3_8b_pmd_step_fits_v5p_8():
    """Qwen3-8B full fine-tuning, PMD, 32 x 8 rollouts, prompt 512, response 8192, teacher
    context 10240, float32 masters + Adam, bfloat16 compute: fits 4 x 95 GiB (docs/PLANS.md)."""
    pytest.importorskip("libtpu", reason="libtpu is not installed")
    target = planner.tpu_target("v5p:2x2x1")
    config = apply_overrides(load_experiment("gsm8k"), PAPER_V5P)
    shapes = planner.run_shapes(config, prompt_len=512)
    assert shapes.teacher_len + shapes.response_len == 10240
    (train,) = planner.plan_run(config, target, shapes, ("train",))
    assert train.compiled, train.error
    assert planner.fits(train, target), train.total / planner.GIB


def test_v4_topology_devices_are_tensorcores_with_half_a_chip(v5e):
    """The compiler describes v4:2x2x1 as 8 devices, two per chip (no megacore): the plan
    budgets each with half of the chip's 32 GiB and peak."""
    v4 = planner.tpu_target("v4:2x2x1")
    assert v4.num_devices == 8
    assert v4.chip.hbm == planner.CHIPS["v4"].hbm / 2
    assert v5e.chip == planner.CHIPS["v5e"]  # one device per chip
