"""What a run does, decided once: `run_plan(config) -> RunPlan`.

The run types of METHOD section 7 (GRPO, SDPO, PMD, its ablations and granularities) differ in
which phases of a step run and what the teacher is shown. `run_plan` is the one place that reads
`algorithm`, `ablation` and `granularity`; the training loop (train.py) reads the plan's fields
straight down a step, and `python -m pmd_jax.train --dry-run` prints them (`describe`).
"""

from __future__ import annotations

import dataclasses

from pmd_jax.config import TrainConfig
from pmd_jax.memory.teacher import DROPPABLE_BLOCKS, MODE_BLOCKS

MEMORY_LEVEL_BLOCKS = {"ins": ("strategies", "lessons"), "beh": ("behaviours",)}


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Which phases a step runs and what they do (derived from a TrainConfig by `run_plan`)."""

    algorithm: str  # the train step's: grpo | sdpo | pmd
    loss: str  # "grpo" (Dr.GRPO on rewards) or "distill" (self-distillation from a teacher)
    uses_memory: bool  # a MemoryState is kept, checkpointed and logged
    load_memory_from: str  # memory JSON the run starts from ("" = an empty memory)
    reset_memory_each_step: bool  # experience, insights and behaviours cleared before remember
    remember: bool  # insert the step's rollouts into experience
    reflect: bool  # insights from the problems whose experience changed
    evolve: bool  # behaviour-bank evolution on its cadence
    # Optional teacher blocks that may be shown (memory/teacher.py DROPPABLE_BLOCKS); None: no
    # teacher prompt at all (GRPO).
    teacher_blocks: tuple[str, ...] | None
    teacher_reads_memory: bool  # the teacher's views come from the memory (else none: SDPO)
    update_policy: bool  # run the optimizer step (False: memory as an inference-time prompt)
    eval_with_memory: bool  # also evaluate with retrieved behaviours in the prompt
    success_reward: float  # reward > this is a success: teacher, memory, reflection, accuracy

    @property
    def teacher(self) -> bool:
        return self.teacher_blocks is not None

    @property
    def retrieve_behaviours(self) -> bool:
        return self.teacher_reads_memory and "behaviours" in (self.teacher_blocks or ())

    @property
    def updates_memory(self) -> bool:
        return self.remember or self.reflect or self.evolve or self.reset_memory_each_step


def run_plan(config: TrainConfig) -> RunPlan:
    """The plan of `config` (TrainConfig.__post_init__ has checked the combination)."""
    algorithm, ablation = config.algorithm, config.ablation
    levels = set(config.granularity.split("+")) if algorithm == "pmd" else set()
    frozen_memory = ablation == "frozen_memory"
    if algorithm == "grpo":
        blocks = None
    elif algorithm == "sdpo":
        blocks = MODE_BLOCKS["sdpo"]
    else:  # pmd: every block, less the memory levels the granularity leaves out
        hidden = {
            b for level, names in MEMORY_LEVEL_BLOCKS.items() if level not in levels for b in names
        }
        blocks = tuple(b for b in DROPPABLE_BLOCKS if b not in hidden)
    uses_memory = algorithm == "pmd"
    return RunPlan(
        algorithm=algorithm,
        loss="grpo" if algorithm == "grpo" else "distill",
        uses_memory=uses_memory,
        load_memory_from=config.frozen_memory_path if frozen_memory else "",
        reset_memory_each_step=ablation == "pmd_transient",
        remember="exp" in levels and not frozen_memory,
        reflect="exp" in levels and "ins" in levels and not frozen_memory,
        evolve="beh" in levels and not frozen_memory,
        teacher_blocks=blocks,
        teacher_reads_memory=uses_memory,
        update_policy=ablation != "frozen_policy",
        eval_with_memory=uses_memory and config.eval.with_memory,
        success_reward=config.memory.success_reward,
    )


def describe(plan: RunPlan) -> list[str]:
    """A few readable lines: what each phase of a step will do."""
    yes = lambda flag: "yes" if flag else "no"
    if not plan.uses_memory:
        memory = "none"
    elif plan.load_memory_from:
        memory = f"loaded from {plan.load_memory_from}, never updated"
    else:
        memory = "starts empty" + (
            ", cleared before every step" if plan.reset_memory_each_step else ""
        )
    if plan.teacher_blocks is None:
        teacher = "none (no teacher prompt)"
    else:
        source = "the memory and the group" if plan.teacher_reads_memory else "the group only"
        teacher = f"{', '.join(plan.teacher_blocks) or 'nothing'} (from {source})"
    return [
        f"algorithm {plan.algorithm}: {plan.loss} loss; success = reward > {plan.success_reward}",
        f"memory: {memory}",
        f"remember (experience): {yes(plan.remember)}; reflect (insights): {yes(plan.reflect)}; "
        f"evolve (behaviours): {yes(plan.evolve)}",
        f"teacher sees: {teacher}",
        f"update policy: {yes(plan.update_policy)}; eval with memory: {yes(plan.eval_with_memory)}",
    ]
