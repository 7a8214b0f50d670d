"""Student prompts: a system instruction with the answer convention, the question, the template.

The answer convention must match the verifier's (`pmd_jax.verify`): "hash" asks for a last line
`#### <number>`, "boxed" for `\\boxed{<number>}`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from pmd_jax.tokenizer import ChatPrompt, Tokenizer, format_chat
from pmd_jax.verify import ANSWER_FORMATS

# One worked example in the system turn: without it SmolLM2-135M-Instruct rarely writes the
# '#### <number>' line at all (0/32 one-step arith problems with a plain instruction, 12/32 with
# this prompt, greedy; docs/RESULTS.md "Base accuracy").
DEFAULT_SYSTEM_PROMPTS = {
    "hash": (
        "You solve math word problems. Work step by step: write one short calculation per "
        "line, like '3 * 4 = 12'. After the last calculation, write the final answer alone on "
        "the last line as '#### <number>' and stop.\n\n"
        "Example problem: A box holds 6 eggs. Sam buys 4 boxes and breaks 3 eggs. How many eggs "
        "does Sam have left?\nExample solution:\nSam buys 4 * 6 = 24 eggs.\n"
        "He has 24 - 3 = 21 eggs left.\n#### 21"
    ),
    "boxed": (
        "You solve math word problems. Work step by step: write one short calculation per "
        "line, like '3 * 4 = 12'. After the last calculation, write the final answer as "
        "\\boxed{<number>} and stop.\n\n"
        "Example problem: A box holds 6 eggs. Sam buys 4 boxes and breaks 3 eggs. How many eggs "
        "does Sam have left?\nExample solution:\nSam buys 4 * 6 = 24 eggs.\n"
        "He has 24 - 3 = 21 eggs left.\n\\boxed{21}"
    ),
}


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """How a question becomes a chat prompt."""

    answer_format: str = "hash"  # "hash" (#### <number>) | "boxed" (\boxed{<number>})
    system_prompt: str | None = None  # None: DEFAULT_SYSTEM_PROMPTS[answer_format]
    chat_format: str | None = None  # passed to tokenizer.format_chat; None: the tokenizer's own

    def __post_init__(self):
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(
                f"PromptConfig.answer_format={self.answer_format!r}; expected one of "
                f"{ANSWER_FORMATS}"
            )


def system_prompt(config: PromptConfig) -> str:
    """The system instruction of a config: its own, else the default for its answer format."""
    if config.system_prompt is not None:
        return config.system_prompt
    return DEFAULT_SYSTEM_PROMPTS[config.answer_format]


def build_messages(question: str, config: PromptConfig = PromptConfig()) -> list[tuple[str, str]]:
    """The chat of one problem: [(role, content)], system instruction then the question."""
    question = question.strip()
    if not question:
        raise ValueError("build_messages: the question is empty")
    messages = [("user", question)]
    instruction = system_prompt(config)
    # An empty system prompt means "no system turn" (e.g. for templates without one).
    return [("system", instruction), *messages] if instruction else messages


def format_prompts(
    tokenizer: Tokenizer, questions: Sequence[str], config: PromptConfig = PromptConfig()
) -> list[ChatPrompt]:
    """Questions -> ChatPrompts (ids [T] ending with the assistant header; response_start = T)."""
    return [
        format_chat(
            tokenizer,
            build_messages(question, config),
            chat_format=config.chat_format,
            add_generation_prompt=True,
        )
        for question in questions
    ]
