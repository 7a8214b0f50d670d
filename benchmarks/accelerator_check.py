"""Where pmd_jax stands on one accelerator: one command, built for one H100, under 8 minutes.

No network and nothing beyond the checkout: the models are random weights with the shapes of
SmolLM2-135M (llama) and Qwen3-0.6B (qwen3). Each section is independent (an exception is
recorded as {"error": ...} and the others still run) and has a time budget:

  device      device kind, jax version, backend
  sampler     our sampler's tokens/s in bf16 (greedy, no early stop, prefill included) and
              transformers `generate` on the same GPU (a child process, random weights of the same
              config), ours / theirs
  train_step  make_train_step's tokens/s and MFU (one PMD step, bf16 compute on float32 params)
  attention   attention_impl="cudnn" vs "naive" (bf16 parity) and vs "xla" (speed), GPU only
  kernel      the Pallas divergence kernel compiled for the device (interpret=False): compiled
              temp bytes against the pure-JAX reference at N=4096, V=151936

One JSON, rewritten as the sections go: --out (default benchmarks/results/accelerator_check.json,
accelerator_check_dry_run.json for --dry-run).
--dry-run: tiny shapes, seconds on a CPU, every path that runs there (tests/test_accelerator_check.py).
Run: `make accel-check [ARGS="--dry-run --out /tmp/check.json"]`.
"""

from __future__ import annotations

import os
import time

STARTED = time.perf_counter()  # the hard limit counts the imports too

# Before any backend starts: JAX would take 75% of GPU memory up front, and the transformers child
# process needs some of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import RESULTS_DIR, best_time, machine_description  # noqa: E402
from pmd_jax.model import registry  # noqa: E402
from pmd_jax.model.config import ModelConfig, config_to_hf_dict  # noqa: E402
from pmd_jax.model.transformer import init_params  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("device", "sampler", "train_step", "attention", "kernel")
# The cheap sections first, so that an overrun of a long one cannot starve them.
RUN_ORDER = ("device", "attention", "kernel", "sampler", "train_step")

# The shapes of public models (pmd_jax/model/presets), random weights: nothing to download.
SMOLLM2_135M = registry.model_shape("smollm2-135m-instruct")
QWEN3_0_6B = registry.model_shape("qwen3-0.6b")

# Dense bf16 peak FLOP/s by a substring of device_kind, first match wins (vendor datasheets).
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every shape of one run; `budgets` are seconds per section."""

    models: tuple[tuple[str, ModelConfig], ...]
    sample_batch: int = 64
    sample_prompt: int = 128
    sample_new: int = 256
    train_rows: int = 16
    train_prompt: int = 256
    train_teacher: int = 512
    train_response: int = 256
    attention_batch: int = 8
    attention_length: int = 1024
    kernel_rows: int = 4096
    kernel_vocab: int = 151936
    kernel_check_rows: int = 256  # rows of the kernel-vs-reference value check, once it compiles
    repeats: int = 3
    min_step_s: float = 20.0  # a model's measurement starts only with this much budget left
    budgets: tuple[tuple[str, float], ...] = (
        ("device", 10), ("attention", 45), ("kernel", 45), ("sampler", 200), ("train_step", 150),
    )  # fmt: skip
    hard_limit_s: float = 465.0  # then the JSON is written as it stands and the run exits


FULL = Sizes(models=(("smollm2-135m", SMOLLM2_135M), ("qwen3-0.6b", QWEN3_0_6B)))
DRY = Sizes(
    # One model: a second one would run the same code again (qwen3: qk-norm, the longer path).
    models=(("tiny-qwen3", QWEN3_0_6B.replace(vocab_size=512, hidden_size=64,
             intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)),),
    sample_batch=2, sample_prompt=16, sample_new=8,
    train_rows=2, train_prompt=16, train_teacher=32, train_response=8,
    attention_batch=2, attention_length=32, kernel_rows=64, kernel_vocab=512, kernel_check_rows=8,
    repeats=2, min_step_s=0.0, hard_limit_s=150.0,
)  # fmt: skip


class Clock:
    """Seconds since the process started and the progress lines."""

    def __init__(self):
        self.start = STARTED

    def log(self, section: str, message: str) -> None:
        print(f"[accel_check +{time.perf_counter() - self.start:6.1f}s] {section}: {message}",
              flush=True)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Context:
    """What a section works with: the sizes, its deadline (perf_counter seconds), its log, and its
    `section` dict of the result, filled in place (`save` rewrites the JSON; the watchdog writes
    what is there at the hard limit)."""

    sizes: Sizes
    dry_run: bool
    deadline: float
    log: Callable[[str], None]
    section: dict
    save: Callable[[], None]

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def skip_reason(self) -> str | None:
        """Why the next measurement should not start, or None."""
        if self.left() <= 0 or self.left() < self.sizes.min_step_s:
            return f"skipped: section time budget spent ({self.left():.0f} s left)"
        return None


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:2000]


def random_tokens(shape: tuple[int, ...], vocab: int, seed: int = 0) -> np.ndarray:
    """Token ids in [1, vocab) (the same prompts for us and transformers)."""
    return np.random.default_rng(seed).integers(1, vocab, size=shape).astype(np.int32)


def random_params(config: ModelConfig, seed: int = 0) -> dict:
    return jax.jit(init_params, static_argnums=0)(config, jax.random.PRNGKey(seed))


def peak_bf16_flops(device_kind: str) -> float | None:
    """The device's dense bf16 peak FLOP/s from PEAK_BF16_FLOPS; None when it is not listed."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_kind), None)


def train_flops_per_step(
    config: ModelConfig, rows: int, prompt: int, teacher: int, response: int
) -> float:
    """Model FLOPs of one PMD step (`pmd_jax.plan.train_step_flops`: matmuls only, attention as
    the kernel computes it, the LM head on response positions, the teacher's forward)."""
    from pmd_jax.plan import Shapes, train_step_flops

    shapes = Shapes(rows, 1, prompt, response, teacher, 0, 0, 0)
    return train_step_flops(config, shapes, "pmd", "none")


# ------------------------------------------------------------------------------ device


def device_section(ctx: Context) -> None:
    device = jax.devices()[0]
    facts = {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "peak_bf16_flops": peak_bf16_flops(device.device_kind),
        "machine": machine_description(),
    }
    try:
        facts["memory_bytes_limit"] = (device.memory_stats() or {}).get("bytes_limit")
    except Exception as err:  # some backends have no memory stats
        facts["memory_bytes_limit"] = None
        facts["memory_stats_error"] = describe(err)
    if facts["backend"] != "gpu":
        facts["note"] = (
            f"backend {facts['backend']!r}, not gpu: GPU-only parts are skipped (a CUDA jaxlib, "
            "e.g. jax[cuda12], gives the gpu backend)"
        )
    ctx.log(f"{facts['device_kind']} ({facts['backend']}), jax {facts['jax']}")
    ctx.section.update(facts)


# ------------------------------------------------------------------------------ sampler


def sample_prompts(config: ModelConfig, sizes: Sizes) -> np.ndarray:
    """[B, T] random token ids, the same for our sampler and transformers."""
    return random_tokens((sizes.sample_batch, sizes.sample_prompt), config.vocab_size)


def our_sampler(config: ModelConfig, sizes: Sizes) -> dict:
    """Our sampler, greedy, no stop ids: tokens/s of one whole call (prefill included)."""
    from pmd_jax.sampling import SampleConfig, sample_program

    batch, new = sizes.sample_batch, sizes.sample_new
    params = random_params(config)
    prompts = sample_prompts(config, sizes)
    mask = np.ones_like(prompts, dtype=bool)
    rng = jax.random.PRNGKey(0)
    sample_config = SampleConfig(max_new_tokens=new, temperature=0.0)
    start = time.perf_counter()
    compiled = sample_program.lower(params, config, prompts, mask, rng, sample_config).compile()
    compile_s = time.perf_counter() - start

    def call():
        return jax.block_until_ready(compiled(params, prompts, mask, rng))

    output = call()  # warm-up
    seconds, all_seconds = best_time(call, sizes.repeats)
    lengths = np.asarray(output.lengths)
    return {
        "tokens_per_s": batch * new / seconds,
        "seconds_per_call": seconds,
        "all_seconds": all_seconds,
        "compile_seconds": compile_s,
        "tokens_shape": list(np.shape(output.tokens)),
        "generated_per_row": {"min": int(lengths.min()), "max": int(lengths.max())},
    }


CHILDREN: list[subprocess.Popen] = []  # the watchdog ends these before it exits


def hf_generate_child(sizes: Sizes, allow_cpu: bool, timeout_s: float) -> dict:
    """benchmarks/hf_generate.py in a child process (torch with its own CUDA context) on random
    weights of each model's config and our sampler's prompts."""
    from benchmarks.hf_generate import RESULT_PREFIX

    request = {
        "models": {name: config_to_hf_dict(config) for name, config in sizes.models},
        "prompts": {name: sample_prompts(config, sizes).tolist() for name, config in sizes.models},
        "new_tokens": sizes.sample_new,
        "allow_cpu": allow_cpu,
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.hf_generate"], cwd=REPO_ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    CHILDREN.append(child)
    try:
        stdout, stderr = child.communicate(json.dumps(request), timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return {"skipped": f"transformers child ran past the section budget ({timeout_s:.0f} s)"}
    finally:
        CHILDREN.remove(child)
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if child.returncode != 0 or not lines:
        return {"error": f"transformers child exited {child.returncode}: {stderr[-1500:]}"}
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def sampler_section(ctx: Context) -> None:
    sizes, section = ctx.sizes, ctx.section
    section.update({
        "settings": {"batch": sizes.sample_batch, "prompt_len": sizes.sample_prompt,
                     "new_tokens": sizes.sample_new, "dtype": "bfloat16", "greedy": True},
        "models": {},
    })  # fmt: skip
    for name, config in sizes.models:
        row = section["models"][name] = {}
        if reason := ctx.skip_reason():
            row["ours"] = {"skipped": reason}
            continue
        ctx.log(f"{name}: ours, compiling and timing")
        try:
            row["ours"] = our_sampler(
                config.replace(dtype="bfloat16", param_dtype="bfloat16"), sizes
            )
            ctx.log(f"{name}: ours {row['ours']['tokens_per_s']:.0f} tokens/s")
        except Exception as err:
            row["ours"] = {"error": describe(err)}
        ctx.save()
    if reason := ctx.skip_reason():
        section["transformers"] = {"skipped": reason}
        return
    ctx.log("transformers generate (child process)")
    hf = hf_generate_child(sizes, allow_cpu=ctx.dry_run, timeout_s=ctx.left())
    section["transformers"] = {key: value for key, value in hf.items() if key != "models"}
    for name, theirs in hf.get("models", {}).items():
        row = section["models"][name]
        row["transformers"] = theirs
        if "tokens_per_s" in theirs and "tokens_per_s" in row.get("ours", {}):
            row["ours_over_transformers"] = row["ours"]["tokens_per_s"] / theirs["tokens_per_s"]
            ctx.log(f"{name}: transformers {theirs['tokens_per_s']:.0f} tokens/s, "
                    f"ours / theirs {row['ours_over_transformers']:.2f}")  # fmt: skip


# ------------------------------------------------------------------------------ train step


def train_section(ctx: Context) -> None:
    from benchmarks.train_step import LOSS, text_batch
    from benchmarks.train_step import ours as our_train_step

    sizes, section = ctx.sizes, ctx.section
    rows, prompt, teacher, response = (sizes.train_rows, sizes.train_prompt, sizes.train_teacher,
                                       sizes.train_response)  # fmt: skip
    device_kind = jax.devices()[0].device_kind
    peak = peak_bf16_flops(device_kind)
    section.update({
        "settings": {"algorithm": "pmd", "rows": rows, "prompt_len": prompt, "teacher_len": teacher,
                     "response_len": response, "loss_top_k": LOSS.top_k, "loss_alpha": LOSS.alpha,
                     "compute_dtype": "bfloat16", "param_dtype": "float32"},
        "peak_bf16_flops": peak,
        "flops": "pmd_jax.plan.train_step_flops: 6 N + 12 L H Dh T per trained token (dense "
        "attention, as PaLM counts), the teacher's forward a third of that, the LM head on "
        "response positions only",
        "models": {},
    })  # fmt: skip
    for name, config in sizes.models:
        if reason := ctx.skip_reason():
            section["models"][name] = {"skipped": reason}
            continue
        ctx.log(f"{name}: compiling and timing ({rows} rows x {prompt + response} tokens)")
        try:
            config = config.replace(dtype="bfloat16")
            ids = random_tokens((rows * 5 + teacher + response,), config.vocab_size)
            batch = text_batch(ids, rows, prompt, teacher, response)
            model = types.SimpleNamespace(params=random_params(config), config=config)
            row = our_train_step(model, batch, sizes.repeats)
            del model
            row["tokens_per_s"] = rows * (prompt + response) / row["seconds_per_step"]
            flops = train_flops_per_step(config, rows, prompt, teacher, response)
            row["model_flops_per_step"] = flops
            row["model_flops_per_token"] = flops / (rows * (prompt + response))
            row["achieved_flops"] = flops / row["seconds_per_step"]
            row["mfu"] = None if peak is None else row["achieved_flops"] / peak
            if peak is None:
                row["mfu_reason"] = f"no peak bf16 FLOP/s listed for device kind {device_kind!r}"
            ctx.log(f"{name}: {row['tokens_per_s']:.0f} tokens/s, MFU {row['mfu']}")
        except Exception as err:
            row = {"error": describe(err)}
        section["models"][name] = row
        ctx.save()


# ------------------------------------------------------------------------------ attention

ATTENTION_TOLERANCE = 2e-2  # max |out - naive| in bf16 (outputs are O(1); bf16 eps is 2^-8)


def attention_section(ctx: Context) -> None:
    """cudnn (GPU) and xla against naive on the same bf16 q/k/v; their forward(+backward) times."""
    from benchmarks.attention import make_inputs, time_attention
    from pmd_jax.model.transformer import attention

    sizes, section = ctx.sizes, ctx.section
    on_gpu = jax.default_backend() == "gpu"
    impls = ("xla", "cudnn") if on_gpu else ("xla",)
    if not on_gpu:
        section["skipped"] = f"skipped: needs GPU (backend {jax.default_backend()!r}); xla only"
    section.update({"tolerance": ATTENTION_TOLERANCE, "dtype": "bfloat16", "shapes": {}})
    for name, config in sizes.models:
        if reason := ctx.skip_reason():
            section["shapes"][name] = {"skipped": reason}
            continue
        heads = dict(heads=config.num_heads, kv_heads=config.num_kv_heads, head_dim=config.head_dim)
        q, k, v, mask = make_inputs(sizes.attention_batch, sizes.attention_length, **heads)
        q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
        real_queries = np.asarray(mask.any(-1))  # [B, T]: fully padded query rows are not compared
        reference = jax.jit(lambda *a: attention(*a, impl="naive"))(q, k, v, mask)
        row = {"shape": {"batch": sizes.attention_batch, "length": sizes.attention_length, **heads},
               "max_abs_diff": {}, "within_tolerance": {}, "seconds": {}}  # fmt: skip
        if not on_gpu:
            row["cudnn"] = "skipped: needs GPU"
        for impl in impls:
            try:
                out = jax.jit(lambda *a, impl=impl: attention(*a, impl=impl))(q, k, v, mask)
                diff = np.abs(np.asarray(out, np.float32) - np.asarray(reference, np.float32))
                row["max_abs_diff"][impl] = float(diff[real_queries].max())
                row["within_tolerance"][impl] = row["max_abs_diff"][impl] <= ATTENTION_TOLERANCE
                timing = time_attention(impl, q, k, v, mask, sizes.repeats)
                row["seconds"][impl] = {key: value["seconds"] for key, value in timing.items()}
            except Exception as err:
                row["max_abs_diff"][impl] = None
                row.setdefault("errors", {})[impl] = describe(err)
        if {"xla", "cudnn"} <= row["seconds"].keys():
            row["cudnn_speedup_vs_xla"] = {
                key: row["seconds"]["xla"][key] / row["seconds"]["cudnn"][key]
                for key in row["seconds"]["xla"]
            }
        ctx.log(f"{name}: max |diff| vs naive {row['max_abs_diff']}")
        section["shapes"][name] = row
        ctx.save()


# ------------------------------------------------------------------------------ kernel


def kernel_section(ctx: Context) -> None:
    """The Pallas kernel lowered for this device (interpret=False) vs the pure-JAX reference."""
    from benchmarks.loss_memory import compiled_memory, loss_and_grad_fn
    from pmd_jax.losses import LossConfig

    sizes, section, config = ctx.sizes, ctx.section, LossConfig()
    rows, vocab = sizes.kernel_rows, sizes.kernel_vocab
    backend = jax.default_backend()
    section.update({"rows": rows, "vocab": vocab, "top_k": config.top_k, "interpret": False,
               "backend": backend, "what": "jit(value_and_grad(mean divergence)), compiled only",
               "dtypes": {}})  # fmt: skip
    for dtype in ("float32", "bfloat16"):
        case = section["dtypes"][dtype] = {}
        if reason := ctx.skip_reason():
            case["skipped"] = reason
            continue
        ctx.log(f"{dtype}: compiling the reference and the kernel at N={rows}, V={vocab}")
        case["reference"] = compiled_memory("jax", rows, vocab, dtype, config)
        if backend == "cpu":
            case["error"] = (
                "Pallas could not lower the kernel for cpu: there is no compiled lowering on "
                "CPU, only interpret mode (a loop, not the kernel's memory)"
            )
            continue
        try:
            case["kernel"] = compiled_memory("pallas", rows, vocab, dtype, config)
        except Exception as err:
            case["error"] = f"Pallas could not lower the kernel for {backend}: {describe(err)}"
            ctx.log(f"{dtype}: {case['error'][:160]}")
            continue
        reference_temp = case["reference"]["temp_bytes"]
        case["temp_ratio"] = case["kernel"]["temp_bytes"] / max(reference_temp, 1)
        ctx.log(f"{dtype}: temp bytes kernel / reference {case['temp_ratio']:.3f}")
        ctx.save()
    if any("kernel" in case for case in section["dtypes"].values()):
        # It compiled: does it also compute the reference's numbers on this device?
        rng = np.random.default_rng(0)
        student, teacher = (jnp.asarray(3 * rng.normal(size=(sizes.kernel_check_rows, vocab)),
                                         jnp.float32) for _ in range(2))  # fmt: skip
        ref_loss, ref_grad = jax.jit(loss_and_grad_fn("jax", config))(student, teacher)
        loss, grad = jax.jit(loss_and_grad_fn("pallas", config))(student, teacher)
        section["value_check"] = {
            "rows": sizes.kernel_check_rows,
            "loss_abs_diff": float(abs(loss - ref_loss)),
            "grad_max_abs_diff": float(jnp.max(jnp.abs(grad - ref_grad))),
        }
    errors = [case.get("error") for case in section["dtypes"].values() if "error" in case]
    if errors:
        section["error"] = errors[0]
    ratios = [case["temp_ratio"] for case in section["dtypes"].values() if "temp_ratio" in case]
    if ratios:
        section["temp_ratio"] = section["dtypes"].get("float32", {}).get("temp_ratio", ratios[0])


SECTION_FNS = {
    "device": device_section,
    "sampler": sampler_section,
    "train_step": train_section,
    "attention": attention_section,
    "kernel": kernel_section,
}

# ------------------------------------------------------------------------------ driver


WRITE_LOCK = threading.Lock()  # the main thread and the watchdog both write the JSON


def write_json(path: pathlib.Path, result: dict) -> None:
    """Write `result` atomically (a whole file or the previous one)."""
    for attempt in range(5):
        try:  # the watchdog reads dicts the main thread may be changing: try again
            text = json.dumps(result, indent=2, default=_plain) + "\n"
            break
        except RuntimeError:
            if attempt == 4:
                raise
            time.sleep(0.05)
    with WRITE_LOCK:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def _plain(value):
    """numpy scalars and arrays in the JSON as plain numbers and lists."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def start_watchdog(limit_s: float, out: pathlib.Path, result: dict, clock: Clock) -> None:
    """At `limit_s`: record the abort, write the JSON as it stands, end the children, exit 3."""

    def abort():
        result["aborted"] = f"hard limit of {limit_s:.0f} s reached; sections as they stood"
        write_json(out, result)
        clock.log("driver", f"hard limit {limit_s:.0f} s reached: wrote {out}, exiting")
        for child in list(CHILDREN):
            child.kill()
        os._exit(3)

    timer = threading.Timer(limit_s, abort)
    timer.daemon = True
    timer.start()


def run(sizes: Sizes, dry_run: bool, out: pathlib.Path, only: tuple[str, ...]) -> dict:
    """Every section in RUN_ORDER within its budget; the JSON is rewritten as each one goes."""
    clock = Clock()
    result: dict = {"benchmark": "accelerator_check", "dry_run": dry_run,
                    "hard_limit_seconds": sizes.hard_limit_s}  # fmt: skip
    result.update({name: {"status": "not run"} for name in SECTIONS})
    start_watchdog(sizes.hard_limit_s, out, result, clock)
    budgets = dict(sizes.budgets)
    for name in RUN_ORDER:
        if name not in only:
            result[name] = {"skipped": "not in --only"}
            continue
        start = time.perf_counter()
        deadline = min(start + budgets[name], clock.start + sizes.hard_limit_s - 10)
        clock.log(name, f"start (budget {deadline - start:.0f} s)")
        section = result[name] = {"status": "running"}  # what a crash or the watchdog leaves
        ctx = Context(sizes, dry_run, deadline, lambda message, name=name: clock.log(name, message),
                      section, lambda: write_json(out, result))  # fmt: skip
        try:
            SECTION_FNS[name](ctx)
        except Exception as err:
            traceback.print_exc()
            section["error"] = describe(err)
        del section["status"]
        section["seconds"] = time.perf_counter() - start
        section["budget_seconds"] = budgets[name]
        write_json(out, result)
        clock.log(name, f"done in {section['seconds']:.1f} s")
    result["total_seconds"] = time.perf_counter() - clock.start
    write_json(out, result)
    clock.log("driver", f"wrote {out} ({result['total_seconds']:.0f} s in all)")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, help="default: results/accelerator_check.json")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, seconds on a CPU")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS)
    parser.add_argument("--max-seconds", type=float, help="hard limit of the whole run")
    args = parser.parse_args(argv)
    sizes = DRY if args.dry_run else FULL
    out = args.out or RESULTS_DIR / f"accelerator_check{'_dry_run' if args.dry_run else ''}.json"
    if args.max_seconds is not None:
        sizes = dataclasses.replace(sizes, hard_limit_s=args.max_seconds)
    result = run(sizes, args.dry_run, out, tuple(args.only))
    failed = [name for name in SECTIONS if "error" in result[name]]
    if failed:
        print(f"[accel_check] sections that recorded an error: {', '.join(failed)}", flush=True)


if __name__ == "__main__":
    main()
