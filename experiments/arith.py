"""arith: the embedded default run (`make train`, no EXP): SmolLM2-135M-Instruct trained with PMD
on the arith curriculum, sized for 2 CPU cores (about 15 minutes), not for the best accuracy.

- one- and two-step problems only: the base model solves about 35% / 8% of them greedily, and
  harder levels give groups without a single success, hence no teacher solution to distil;
- 8 steps of 4 problems x 4 rollouts at T=0.6 top-p 0.95 (T=1.0 rollouts of a 135M model are
  almost never right), responses ended after their '#### <answer>' line, at most 80 new tokens;
- teacher prompts of up to 320 tokens in METHOD's `user` layout, the teacher shown solutions only
  (no verifier-feedback block; only rows whose teacher sees a correct solution carry signal);
- lr 5e-6, 4 micro-batches, full remat, the loss at the rollout temperature (validate.py requires
  the two to match);
- held-out evaluation: greedy, memory-free, on 64 test problems never trained on, before the
  first step and after the last.

The measurements behind each choice, and what the run does and does not learn, are in
docs/RESULTS.md ("The default run").

    make train                                   # = make train EXP=arith
    make train ARGS="--set algorithm=sdpo"       # the same budget and teacher with SDPO
    make train ARGS="--set algorithm=sdpo --set teacher.show_feedback=true"  # METHOD's SDPO
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
    name="arith",
    algorithm="pmd",
    total_steps=8,
    seed=0,
    # Full remat: the backward pass recomputes each layer instead of keeping its activations
    # (docs/RESULTS.md, "Full remat": peak RSS 8.15 -> 6.32 GB).
    model=ModelSpec(name="smollm2-135m-instruct", remat="full"),
    data=DataConfig(
        task="arith",
        arith=ArithConfig(max_steps=2, train_size=128, test_size=64),
        batch_size=4,
    ),
    rollout=RolloutConfig(num_samples=4, temperature=0.6, top_p=0.95, max_new_tokens=80),
    memory=MemoryConfig(response_len=80, content_len=64),
    # Fixed prompt widths: the reflection / evolution samplers compile once per run. 768 covers the
    # longest reflection prompt this config can build (2 successes + 2 failures of 80 tokens
    # with the longest feedback: 745 tokens); evolution prompts are cut to 1024 by
    # max_prompt_tokens.
    reflect=ReflectConfig(max_new_tokens=128, batch_size=4, prompt_width=768),
    behaviours=BehaviourConfig(
        num_clusters=2,
        warmup_steps=2,
        every_steps=3,
        max_new_tokens=160,
        batch_size=2,
        max_prompt_tokens=1024,
        prompt_width=1024,
    ),
    teacher=TeacherConfig(
        max_prompt_tokens=320, layout="user", show_feedback=False, signal_from_memory=False
    ),
    loss=LossConfig(alpha=0.5, top_k=100, temperature=0.6),  # the rollout temperature
    optimizer=OptimizerConfig(learning_rate=5e-6, warmup_steps=1, micro_batches=4),
    checkpoint=CheckpointConfig(every_steps=2, keep_last=2, keep_best=1),
    eval=EvalSchedule(
        initial=True,
        num_problems=64,
        num_samples=1,
        temperature=0.0,
        max_new_tokens=80,
        batch_size=32,
    ),
)
