"""Teacher probe: how does the self-teacher score the student's own tokens?

Samples one batch of arith rollouts with the base SmolLM2-135M-Instruct (the default run's
settings), builds the SDPO teacher prompts (a correct sibling, else the verifier feedback) in each
layout, and prints the mean per-token log-prob of the sampled tokens under the student (plain
prompt) and under the teacher (teacher prompt, same weights): on correct and on wrong responses,
on the tokens of the `####` answer marker, and by response position. On the student's own
samples the teacher scores lower on average whatever it knows (for tokens drawn from the
student, E[log p_student - log p_teacher] is KL(student || teacher) >= 0 at temperature 1), so
what tells an informative teacher is the gap between correct and wrong responses. And directly:
the teacher's greedy answer from each failed rollout's teacher prompt, scored by the verifier,
against the student's greedy answer to the same problem, per kind of privileged block (a correct
sibling, or the verifier's feedback). A teacher no more often right than the student gives the
student nothing to distil. Not a test; docs/RESULTS.md "Why self-distillation collapsed" quotes it.

    python -m experiments.teacher_probe [--problems 24] [--layouts user,system]
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
from pmd_jax.memory.teacher import MODE_BLOCKS, TeacherConfig
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
from pmd_jax.verify import VerifierConfig, verify_batch


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
    parser.add_argument("--problems", type=int, default=24)
    parser.add_argument("--layouts", default="user,system")
    parser.add_argument("--show", type=int, default=3, help="failed rows whose answers are printed")
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
    correct = rollouts.rewards > CONFIG.memory.success_reward
    print(f"{len(rollouts.texts)} rollouts, {int(correct.sum())} correct")
    golds = [answer for answer in rollouts.answers for _ in range(rollouts.group_size)]
    student_texts = greedy_answers(
        params, model_config, tokenizer, rollouts, np.arange(len(rollouts.questions))
    )
    student_right, _ = verify_batch(student_texts, rollouts.answers)
    marker_ids = sorted({t for text in ("####", " ####", "\n####") for t in tokenizer.encode(text)})
    width = bucket_length(CONFIG.teacher.max_prompt_tokens, CONFIG.teacher.bucket)
    student = None
    for layout in args.layouts.split(","):
        config = TeacherConfig(max_prompt_tokens=width, layout=layout)
        teacher = phases.teacher_prompts(
            tokenizer,
            rollouts,
            config,
            CONFIG.prompt,
            blocks=MODE_BLOCKS["sdpo"],
            success_reward=CONFIG.memory.success_reward,
        )
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
        failed = np.flatnonzero(teacher.has_signal & ~correct)
        teacher_texts = greedy_answers(params, model_config, tokenizer, teacher, failed)
        teacher_right, _ = verify_batch(teacher_texts, [golds[row] for row in failed])
        print("  greedy answers on the failed rollouts' problems: teacher (its prompt) vs student")
        for block in sorted({teacher.shown_blocks[row][1] for row in failed}):
            chosen = [i for i, row in enumerate(failed) if teacher.shown_blocks[row][1] == block]
            problems = [failed[i] // rollouts.group_size for i in chosen]
            print(
                f"    {block:16s} teacher {np.mean(teacher_right[chosen]):.2f}  student "
                f"{np.mean(student_right[problems]):.2f}  ({len(chosen)} rollouts)"
            )
        for i, row in enumerate(failed[: args.show]):
            print(f"  row {row} ({teacher.shown_blocks[row]})")
            print("    student: " + rollouts.texts[row][:160].replace("\n", " | "))
            print("    teacher: " + teacher_texts[i][:160].replace("\n", " | "))


def greedy_answers(params, model_config, tokenizer, prompts, rows, batch_size: int = 32):
    """Greedy responses [len(rows)] from the prompts (token ids + mask [N, T]) of `rows`,
    in sampler calls of one shape (the last one filled with repeats that are dropped)."""
    config = SampleConfig(
        max_new_tokens=CONFIG.rollout.max_new_tokens,
        temperature=0.0,
        stop_ids=tuple(tokenizer.stop_ids),
        pad_id=tokenizer.pad_id,
    )
    stop_table = answer_line_stop_table(tokenizer)
    texts = []
    for start in range(0, len(rows), batch_size):
        chunk = list(rows[start : start + batch_size])
        padded = chunk + chunk[:1] * (batch_size - len(chunk))
        output = sample(
            params,
            model_config,
            jnp.asarray(prompts.prompt_tokens[padded]),
            jnp.asarray(prompts.prompt_mask[padded]),
            jax.random.PRNGKey(0),
            config,
            stop_table,
        )
        texts += [tokenizer.decode(ids) for ids in response_token_lists(output)][: len(chunk)]
    return texts


if __name__ == "__main__":
    main()
