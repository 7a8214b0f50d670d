"""gsm8k: PMD on GSM8K with the paper's settings where they transfer, for an accelerator.

    make train EXP=gsm8k                                     # SmolLM2-135M-Instruct (offline)
    make train EXP=gsm8k ARGS="--set model=Qwen/Qwen2.5-1.5B-Instruct"   # hub id (online)
    make train EXP=gsm8k ARGS="--set model=/path/to/hf_dir"              # local HF directory
    make train EXP=gsm8k ARGS="--set model=/path/to/model.gguf"          # GGUF file
    make train EXP=gsm8k ARGS="--set algorithm=sdpo"                      # the SDPO baseline

From the paper (METHOD section 8): 32 prompts x 8 rollouts, one gradient step per batch
(on-policy), AdamW lr 1e-5 with 10 warmup steps, grad clip 1.0, alpha 0.5, top-k 100 + tail,
EMA teacher rate 0.05, validation avg@16 at T=0.6 top-p 0.95 every 5 steps, 20 epochs.
Ours where the paper does not transfer: responses up to 512 tokens (not 8192: GSM8K solutions of
small models are ~100-300 tokens), validation on the first 128 test problems (the full test set
is `--set eval.num_problems=1319`), behaviours evolved once per epoch (234 steps) after a 10-step
warm-up, teacher prompts up to 2048 tokens.

Mesh: every device on the data axis by default. On a TPU v4-8 (4 chips) or v5e-8 (8 chips) that
is what you want for a 135M-1.5B model; for larger models shard parameters too, e.g.
`--set mesh.data=2 --set mesh.fsdp=4` (docs/SCALING.md).
On a CPU this runs, slowly: the run prints its expected time per step at the start.
"""

from pmd_jax.checkpoint import CheckpointConfig
from pmd_jax.config import EvalSchedule, ModelSpec, RolloutConfig, TrainConfig
from pmd_jax.data.pipeline import DataConfig
from pmd_jax.losses import LossConfig
from pmd_jax.memory.behaviours import BehaviourConfig
from pmd_jax.memory.reflect import ReflectConfig
from pmd_jax.memory.state import MemoryConfig
from pmd_jax.memory.teacher import TeacherConfig
from pmd_jax.optimizer import OptimizerConfig

GSM8K_TRAIN_PROBLEMS = 7473
BATCH_PROMPTS = 32
STEPS_PER_EPOCH = -(-GSM8K_TRAIN_PROBLEMS // BATCH_PROMPTS)  # 234

CONFIG = TrainConfig(
    name="gsm8k",
    algorithm="pmd",
    total_steps=20 * STEPS_PER_EPOCH,
    seed=0,
    teacher_tau=0.05,
    model=ModelSpec(name="smollm2-135m-instruct"),
    data=DataConfig(task="gsm8k", batch_size=BATCH_PROMPTS),
    rollout=RolloutConfig(num_samples=8, temperature=1.0, top_p=1.0, max_new_tokens=512),
    memory=MemoryConfig(response_len=512),
    # Fixed prompt widths (one sampler program each per run): evolution prompts are cut to
    # max_prompt_tokens (2048); reflection prompts show <= 4 attempts of <= 600 characters.
    reflect=ReflectConfig(max_new_tokens=384, batch_size=32, prompt_width=1536),
    behaviours=BehaviourConfig(
        num_clusters=8, warmup_steps=10, every_steps=STEPS_PER_EPOCH, prompt_width=2048
    ),
    teacher=TeacherConfig(max_prompt_tokens=2048),
    loss=LossConfig(alpha=0.5, top_k=100, aggregation="seq_mean_token_mean"),  # SDPO averaging
    optimizer=OptimizerConfig(learning_rate=1e-5, warmup_steps=10, grad_clip=1.0),
    checkpoint=CheckpointConfig(every_steps=50, keep_last=3, keep_best=1),
    eval=EvalSchedule(
        every_steps=5,
        initial=True,
        num_problems=128,
        num_samples=16,
        temperature=0.6,
        top_p=0.95,
        max_new_tokens=512,
        batch_size=64,
    ),
)
