"""End to end with SmolLM2-135M-Instruct (slow): 8 real rollouts of one arith problem ->
experience -> one reflection -> parsed items or a counted failure -> teacher context."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from pmd_jax import phases
from pmd_jax.data.arith import ArithConfig, generate_split
from pmd_jax.data.prompts import PromptConfig
from pmd_jax.memory import MemoryConfig, ReflectConfig, TeacherConfig, init_memory
from pmd_jax.sampling import SampleConfig, answer_line_stop_table
from pmd_jax.verify import VerifierConfig


@pytest.mark.slow
def test_one_group_through_memory_to_the_teacher(smollm2_gguf_path):
    from pmd_jax.model.registry import load

    model = load(smollm2_gguf_path)
    tokenizer = model.tokenizer
    problem = generate_split(ArithConfig(train_size=16, test_size=16), "train")[0]
    batch = {"id": [0], "question": [problem.question], "answer": [problem.answer]}
    sample_config = SampleConfig(
        max_new_tokens=96,
        temperature=0.6,
        top_p=0.95,
        num_samples=8,
        stop_ids=tuple(tokenizer.stop_ids),
        pad_id=tokenizer.pad_id,
    )
    rollouts = phases.sample_rollouts(
        model.params,
        model.config,
        tokenizer,
        batch,
        PromptConfig(),
        sample_config,
        jax.random.PRNGKey(0),
        stop_table=answer_line_stop_table(tokenizer),
    )
    rollouts = phases.verify_rollouts(rollouts, VerifierConfig())
    memory_config = MemoryConfig(
        num_problems=1, embed_dim=model.config.hidden_size, response_len=96, pad_id=tokenizer.pad_id
    )
    memory = init_memory(memory_config)
    memory, stats, changed = phases.remember(
        memory, memory_config, model.params, model.config, tokenizer, rollouts, step=1
    )
    stored = int(np.asarray(memory.experience.occupied).sum())
    # Inserts into a full kind evict, so the store holds at most what was inserted.
    assert 1 <= stored <= stats["memory/experience_inserted"] and changed[0]
    assert stored <= memory_config.success_slots + memory_config.failure_slots
    embed = phases.make_embed_fn(model.params, model.config, tokenizer, 96)
    memory, reflect_stats, raw = phases.reflect_on_groups(
        memory,
        memory_config,
        model.params,
        model.config,
        tokenizer,
        rollouts,
        changed,
        ReflectConfig(max_new_tokens=192, batch_size=1),
        embed,
        jax.random.PRNGKey(1),
        step=1,
    )
    assert reflect_stats["reflect/requests"] == 1 and len(raw) == 1
    assert reflect_stats["reflect/parsed"] + reflect_stats["reflect/parse_failures"] == 1
    assert reflect_stats["reflect/inserted"] == int(np.asarray(memory.insight.occupied).sum())
    print("reflection:", reflect_stats, repr(raw[0][:400]))
    question_embeddings = embed([problem.question])
    teacher = phases.teacher_prompts(
        tokenizer,
        rollouts,
        TeacherConfig(),
        PromptConfig(),
        memory=memory,
        memory_config=memory_config,
        question_embeddings=question_embeddings,
    )
    assert teacher.prompt_tokens.shape[0] == 8 and teacher.has_signal.all()
    text = tokenizer.decode(teacher.prompt_tokens[0][teacher.prompt_mask[0]].tolist())
    assert problem.question in text
    successes = rollouts.rewards > memory_config.success_reward
    if successes.sum() >= 2 or (successes.any() and not successes.all()):
        # A failed rollout (or a success with a sibling success) is shown a correct solution.
        row = int(np.flatnonzero(~successes)[0]) if not successes.all() else 0
        assert "solution" in " ".join(teacher.shown_blocks[row])
