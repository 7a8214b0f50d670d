"""Chat formats (ChatML, Llama 3, plain) rendered straight to token ids."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

from pmd_jax.tokenizer.base import CHAT_FORMATS, ROLES, Tokenizer


@dataclasses.dataclass(frozen=True)
class ChatPrompt:
    """A tokenized conversation: ids [T] and where the assistant response begins."""

    ids: tuple[int, ...]  # full prompt token ids
    response_start: int  # == len(ids) with a generation prompt and no response


@dataclasses.dataclass(frozen=True)
class _Special:
    piece: str  # inserted as its id, never encoded from text


_Part = str | _Special


def _chatml_turn(role: str, content: str) -> tuple[_Part, ...]:
    return (_Special("<|im_start|>"), f"{role}\n{content}", _Special("<|im_end|>"), "\n")


def _llama3_turn(role: str, content: str) -> tuple[_Part, ...]:
    # Llama 3's own template trims message content.
    header = (_Special("<|start_header_id|>"), role, _Special("<|end_header_id|>"))
    return (*header, "\n\n" + content.strip(), _Special("<|eot_id|>"))


def _plain_turn(role: str, content: str) -> tuple[_Part, ...]:
    return (f"{role}: {content}\n",)


# chat format -> (prefix, one turn, generation prompt). Plain has no markers: a response ends
# with the model's eos (</s>), and the generation prompt ends in a space so the response text
# starts at its first word.
_TEMPLATES: dict[str, tuple[tuple[_Part, ...], Callable, tuple[_Part, ...]]] = {
    "chatml": ((), _chatml_turn, _chatml_turn("assistant", "")[:2]),
    "llama3": (
        (_Special("<|begin_of_text|>"),),
        _llama3_turn,
        _llama3_turn("assistant", "")[:4],
    ),
    "plain": ((), _plain_turn, ("assistant: ",)),
}


def _encode_parts(tokenizer: Tokenizer, parts: Sequence[_Part], chat_format: str) -> list[int]:
    """Adjacent text parts are encoded together, as a template renderer would; markers as ids."""
    ids = []
    for is_text, group in itertools.groupby(parts, key=lambda part: isinstance(part, str)):
        if is_text:
            ids.extend(tokenizer.encode("".join(group)))
            continue
        for special in group:
            special_id = tokenizer.token_id(special.piece)
            if special_id is None:
                raise ValueError(f"chat format {chat_format!r} needs token {special.piece!r}")
            ids.append(special_id)
    return ids


def format_chat(
    tokenizer: Tokenizer,
    messages: Sequence[tuple[str, str]],
    *,
    chat_format: str | None = None,
    add_generation_prompt: bool = True,
    response: str | None = None,
) -> ChatPrompt:
    """Token ids of a conversation of (role, content) pairs, optionally followed by a response.

    The response ids are encode(response) appended after the generation prompt, with no end
    token: exactly what a sampler continuing the prompt would score.
    """
    chat_format = chat_format or tokenizer.chat_format
    if chat_format not in _TEMPLATES:
        raise ValueError(f"unknown chat_format {chat_format!r}; expected one of {CHAT_FORMATS}")
    if response is not None and not add_generation_prompt:
        raise ValueError("a response needs add_generation_prompt=True (it follows that prompt)")
    prefix, turn, generation = _TEMPLATES[chat_format]
    parts = list(prefix)
    for index, (role, content) in enumerate(messages):
        if role not in ROLES:
            raise ValueError(f"message {index}: role {role!r} is not one of {ROLES}")
        if not isinstance(content, str):
            raise TypeError(f"message {index}: content must be str, got {type(content).__name__}")
        parts.extend(turn(role, content))
    if add_generation_prompt:
        parts.extend(generation)
    prompt_ids = _encode_parts(tokenizer, parts, chat_format)
    response_ids = [] if response is None else tokenizer.encode(response)
    return ChatPrompt(ids=tuple(prompt_ids + response_ids), response_start=len(prompt_ids))
