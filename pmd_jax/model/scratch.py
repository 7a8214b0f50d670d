"""A from-scratch policy for smoke runs and tests: a SentencePiece tokenizer trained on the task's
own text (questions, solutions and the memory prompts' wording) and a small random llama.

The tokenizer is cached in the run directory, so a resumed run gets the same vocabulary.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax

from pmd_jax.data.prompts import DEFAULT_SYSTEM_PROMPTS
from pmd_jax.memory.behaviours import cold_start_messages, evolve_messages
from pmd_jax.memory.reflect_prompts import Attempt, ReflectConfig, build_messages
from pmd_jax.model.config import ModelConfig
from pmd_jax.model.registry import LoadedModel
from pmd_jax.model.transformer import init_params
from pmd_jax.tokenizer import SentencePieceTokenizer, train_sentencepiece


def prompt_wording(question: str, solution: str) -> list[str]:
    """The fixed wording of every memory prompt (reflection in both formats, behaviours), so the
    tokenizer learns whole words for it rather than spelling it out."""
    attempts = [Attempt(solution, 1.0, ""), Attempt("#### 0", 0.0, "wrong answer")]
    texts = []
    for output_format in ("lines", "json"):
        config = ReflectConfig(output_format=output_format)
        for group in (attempts, attempts[:1], attempts[1:]):
            texts += [content for _, content in build_messages(question, group, config)[1]]
    texts += [content for _, content in cold_start_messages(question)]
    texts += [content for _, content in evolve_messages(question, [("check_units", "Check.")])]
    return texts


def scratch_tokenizer(
    texts: Sequence[str], directory: str | pathlib.Path, vocab_size: int
) -> SentencePieceTokenizer:
    """Train (or reuse the cached) SentencePiece model `directory/spm.model`."""
    directory = pathlib.Path(directory)
    model_path = directory / "spm.model"
    if not model_path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        corpus = (
            list(texts) + list(DEFAULT_SYSTEM_PROMPTS.values()) + ["system", "user", "assistant"]
        )
        train_sentencepiece(corpus, directory / "spm", vocab_size=vocab_size)
    return SentencePieceTokenizer.from_file(model_path)


def scratch_config(spec, vocab_size: int, bos_id=None, eos_id=None) -> ModelConfig:
    """The ModelConfig of a scratch model of `spec`'s sizes (pmd_jax.config.ModelSpec)."""
    return ModelConfig(
        architecture="llama",
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        tie_embeddings=True,
        bos_id=bos_id,
        eos_id=eos_id,
        max_position_embeddings=4096,
        param_dtype=spec.param_dtype,
        dtype=spec.dtype,
    )


def scratch_model(
    spec, problems: Sequence[dict], directory: str | pathlib.Path, seed: int
) -> LoadedModel:
    """A random llama of `spec`'s sizes (pmd_jax.config.ModelSpec) and its tokenizer."""
    texts = [p["question"] for p in problems] + [p["solution"] for p in problems]
    texts += prompt_wording(problems[0]["question"], problems[0]["solution"])
    tokenizer = scratch_tokenizer(texts, directory, spec.vocab_size)
    config = scratch_config(spec, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id)
    params = init_params(config, jax.random.PRNGKey(seed))
    return LoadedModel(config, params, tokenizer)
