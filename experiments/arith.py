"""arith: the embedded default run (`make train`, no EXP): SmolLM2-135M-Instruct trained with PMD
on the arith curriculum on a CPU, about 15 minutes on 2 cores (measured 13 min 22 s from a fresh
clone, environment build included, before the teacher change below).

The sizes are chosen for 2 CPU cores, not for the best final accuracy (README "The default run"
has the measurements behind them, including that this run does not yet show learning):
- one- and two-step problems only (the base model solves ~35% / ~8% of them greedily; harder
  levels give groups without a single success, hence no teacher solution to distil);
- 8 steps of 4 problems x 4 rollouts at T=0.6 top-p 0.95 (T=1.0 rollouts are almost never right
  for a 135M model); responses stop after the '#### <answer>' line (at most 80 new tokens);
  2 problems x 8 rollouts finds more groups with a success (35-53% of rows with signal, not 29%)
  but ended at 29.7 / 20.3 / 29.7 (26.6 +- 4.4) and peaks 2-3 GB higher;
- teacher prompts fit 320 tokens, in METHOD's layout (everything in one user message), and the
  teacher is shown solutions only: no verifier-feedback block, and only rollouts whose teacher
  sees a correct solution (a sibling's, or a stored one) carry signal
  (`show_feedback=False, signal_from_memory=False`; memory blocks are still shown on those rows).
  Shown "your answer 42 is not correct", the 135M teacher answers worse than the student (0 of 64
  failed rollouts right, the student 6%: experiments/teacher_probe.py), and those rows were most
  of the signal; shown a correct solution, it answers right more often than the student in this
  layout (60% vs 50%; 40% in the "system" layout). Three seeds, held-out % at step 8: 28.1 /
  28.1 / 25.0 (27.1 +- 1.5), against 26.6 / 23.4 / 15.6 with feedback rows in the "system" layout
  (the default until 2026-12-06; the "system" layout with solutions only: 18.8 on seed 0);
- lr 5e-6 with 4 micro-batches: at 2e-5 the policy lost 12 points in 8 steps even in the system
  layout, and at the paper's 1e-5 with feedback rows 11 points (Adam's first steps move every
  weight by about lr, whatever the gradient's size); with solutions only, 1e-5 ends at 35.9 /
  20.3 / 20.3 (25.5 +- 7.4): larger moves in both directions;
- the loss at the rollout temperature (0.6): the sampler records log-probs at 0.6, and the rollout
  correction compares the trainer's with them (validate.py requires the two to match; until
  2026-12-06 this run's loss was at 1.0, which weighted tokens 0.87-0.91 on average, unlikely ones
  up to 2);
- held-out evaluation: greedy, memory-free, on 64 test problems never trained on, before the
  first step (the base model) and after the last one.

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
    model=ModelSpec(name="smollm2-135m-instruct"),
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
