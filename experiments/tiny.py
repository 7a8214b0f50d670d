"""tiny: the whole PMD loop in seconds on a CPU, for tests and smoke runs.

A 2-layer llama from scratch with a 1024-piece SentencePiece tokenizer trained on the arith
curriculum, 4 problems x 4 rollouts per step, short responses, a small memory.

    make train EXP=tiny WORKDIR=/tmp/tiny
    python -m pmd_jax.train --exp tiny --workdir /tmp/tiny --set algorithm=grpo
"""

from pmd_jax.checkpoint import CheckpointConfig
from pmd_jax.config import EvalSchedule, ModelSpec, RolloutConfig, TrainConfig
from pmd_jax.data.arith import ArithConfig
from pmd_jax.data.pipeline import DataConfig
from pmd_jax.losses import LossConfig
from pmd_jax.memory.behaviours import BehaviourConfig
from pmd_jax.memory.reflect import ReflectConfig
from pmd_jax.memory.state import MemoryConfig
from pmd_jax.memory.teacher import TeacherConfig
from pmd_jax.optimizer import OptimizerConfig

CONFIG = TrainConfig(
    name="tiny",
    algorithm="pmd",
    total_steps=6,
    seed=0,
    model=ModelSpec(
        name="scratch",
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        warm_start_steps=400,
        warm_start_batch=16,
        warm_start_lr=5e-3,
        # The reference attention: tests assert what this 2-layer model's memory holds after 6
        # steps, which depends on its exact numerics (with "xla" its behaviour bank stayed empty).
        attention_impl="naive",
    ),
    data=DataConfig(
        task="arith", arith=ArithConfig(train_size=64, test_size=16, max_steps=2), batch_size=4
    ),
    # 48 new tokens: the longest two-step solution is 43 tokens of this tokenizer (at 32 every
    # two-step rollout was cut before its answer, so no group ever held a success).
    rollout=RolloutConfig(num_samples=4, temperature=1.0, max_new_tokens=48),
    memory=MemoryConfig(
        success_slots=2,
        failure_slots=2,
        insight_slots=4,
        behaviour_slots=16,
        response_len=48,
        feedback_len=16,
        title_len=12,
        content_len=32,
        name_len=8,
        instruction_len=24,
    ),
    reflect=ReflectConfig(
        # Above the longest warm-start reflection (152 tokens of this tokenizer): at 64 most
        # well-formed reflections were cut before their closing brackets and none parsed.
        max_new_tokens=160,
        batch_size=4,
        max_successes_shown=1,
        max_failures_shown=1,
        max_response_chars=200,
        temperature=0.0,  # greedy: a 2-layer model's formats hold best at its mode
        prompt_width=384,  # above the longest prompt (measured 313): one sampler program per run
    ),
    behaviours=BehaviourConfig(
        num_clusters=2,
        warmup_steps=1,
        every_steps=2,
        max_new_tokens=96,
        batch_size=2,
        temperature=0.0,
        max_prompt_tokens=640,
        prompt_width=640,  # = max_prompt_tokens: every evolver prompt fits (measured <= 496)
    ),
    teacher=TeacherConfig(max_prompt_tokens=768),
    loss=LossConfig(top_k=20),
    optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=0),
    checkpoint=CheckpointConfig(every_steps=2, keep_last=2, keep_best=0),
    eval=EvalSchedule(num_problems=8, num_samples=2, max_new_tokens=48, batch_size=8),
)
