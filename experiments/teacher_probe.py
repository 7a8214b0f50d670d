"""Teacher probe: how does the self-teacher score the student's own tokens?

Samples one batch of arith rollouts with the base SmolLM2-135M-Instruct (the default run's
settings), builds the SDPO teacher prompts (a correct sibling, else the verifier feedback) in each
layout, and prints the mean per-token log-prob of the sampled tokens under the student (plain
prompt) and under the teacher (teacher prompt, same weights): on correct and on wrong responses,
on the tokens of the `####` answer marker, and by response position. Then the teacher's own
greedy answer for a few rows. Self-distillation pulls the student toward the teacher, so a
teacher less confident than the student everywhere (and no more confident on correct responses
than on wrong ones) pulls it toward a flatter policy, not a better one. Not a test; README
"Why self-distillation collapsed" quotes its output.

    python -m experiments.teacher_probe [--problems 8] [--layouts user,system]
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from experiments.arith import CONFIG
from pmd_jax import phases
from pmd_jax.data import pipeline, schema
from pmd_jax.losses import token_logprobs
from pmd_jax.memory.teacher import TeacherConfig
from pmd_jax.model import registry
from pmd_jax.sampling import (
    SampleConfig,
    answer_line_stop_table,
    bucket_length,
    lm_head_matrix,
    response_token_lists,
    sample,
)
from pmd_jax.train import rollout_sample_config
from pmd_jax.train_step import response_hidden
from pmd_jax.verify import VerifierConfig


def sampled_token_logprobs(params, model_config, prompt_tokens, prompt_mask, batch) -> np.ndarray:
    """Log-probs [N, G] of the batch's response tokens after the given prompts [N, T]."""
    hidden = response_hidden(
        params,
        model_config,
        jnp.asarray(prompt_tokens),
        jnp.asarray(prompt_mask),
        jnp.asarray(batch.response_tokens),
        jnp.asarray(batch.response_mask),
    )
    lm_head = lm_head_matrix(params, model_config)
    return np.asarray(token_logprobs(hidden, lm_head, jnp.asarray(batch.response_tokens)))


def masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sum(values * mask) / max(np.sum(mask), 1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--layouts", default="user,system")
    parser.add_argument("--show", type=int, default=3, help="rows whose teacher answer is printed")
    args = parser.parse_args(argv)

    loaded = registry.load(CONFIG.model.name)
    model_config, tokenizer, params = loaded.config, loaded.tokenizer, loaded.params
    data_config = dataclasses.replace(CONFIG.data, batch_size=args.problems)
    problems = pipeline.load_split(data_config, "train")
    batch = schema.collate([problems[i] for i in range(args.problems)])
    sample_config = rollout_sample_config(CONFIG.rollout, tokenizer)
    rollouts = phases.sample_rollouts(
        params,
        model_config,
        tokenizer,
        batch,
        CONFIG.prompt,
        sample_config,
        jax.random.PRNGKey(1),
        stop_table=answer_line_stop_table(tokenizer),
    )
    rollouts = phases.verify_rollouts(rollouts, VerifierConfig())
    correct = rollouts.rewards > 0.5
    print(f"{len(rollouts.texts)} rollouts, {int(correct.sum())} correct")
    marker_ids = sorted({t for text in ("####", " ####", "\n####") for t in tokenizer.encode(text)})
    width = bucket_length(CONFIG.teacher.max_prompt_tokens, CONFIG.teacher.bucket)
    student = None
    for layout in args.layouts.split(","):
        config = TeacherConfig(mode="sdpo", max_prompt_tokens=width, layout=layout)
        teacher = phases.teacher_prompts(tokenizer, rollouts, config, CONFIG.prompt)
        arrays = phases.rollout_batch(rollouts, teacher, width, tokenizer.pad_id)
        if student is None:
            student = sampled_token_logprobs(
                params, model_config, arrays.prompt_tokens, arrays.prompt_mask, arrays
            )
        scored = sampled_token_logprobs(
            params, model_config, arrays.teacher_tokens, arrays.teacher_mask, arrays
        )
        mask = arrays.response_mask & teacher.has_signal[:, None]
        print(f"\n== layout {layout}: mean log-prob of the sampled tokens, student vs teacher")
        for name, rows in (("correct", correct), ("wrong", ~correct)):
            part = mask & rows[:, None]
            print(
                f"  {name:8s} student {masked_mean(student, part):+.3f}  "
                f"teacher {masked_mean(scored, part):+.3f}  ({int(part.sum())} tokens)"
            )
        marker = mask & np.isin(arrays.response_tokens, marker_ids)
        print(
            f"  '####'   student {masked_mean(student, marker):+.3f}  "
            f"teacher {masked_mean(scored, marker):+.3f}  ({int(marker.sum())} tokens)"
        )
        for position in (0, 1, 2, 5, 10, 20):
            column = mask[:, position]
            print(
                f"  position {position:2d}: student {student[column, position].mean():+.3f}  "
                f"teacher {scored[column, position].mean():+.3f}"
            )
        rows = list(range(0, len(rollouts.texts), rollouts.group_size))[: args.show]
        greedy = SampleConfig(
            max_new_tokens=48,
            temperature=0.0,
            stop_ids=tuple(tokenizer.stop_ids),
            pad_id=tokenizer.pad_id,
        )
        output = sample(
            params,
            model_config,
            jnp.asarray(teacher.prompt_tokens[rows]),
            jnp.asarray(teacher.prompt_mask[rows]),
            jax.random.PRNGKey(0),
            greedy,
        )
        for row, ids in zip(rows, response_token_lists(output), strict=True):
            print(f"  row {row} (reward {rollouts.rewards[row]:.0f}, {teacher.shown_blocks[row]})")
            print("    student: " + rollouts.texts[row][:160].replace("\n", " | "))
            print("    teacher: " + tokenizer.decode(ids)[:160].replace("\n", " | "))


if __name__ == "__main__":
    main()
