"""The tokenizer protocol, chat-format token names and helpers shared by the backends."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
LLAMA3_TOKENS = (
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|end_of_text|>",
)
CHAT_FORMATS = ("chatml", "llama3", "plain")
ROLES = ("system", "user", "assistant")
# Tokens that end a response, per chat format; the first one present is the default eos.
_END_TOKENS = {
    "chatml": ("<|im_end|>", "<|endoftext|>"),
    "llama3": ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"),
    "plain": ("</s>", "<|endoftext|>", "<eos>"),
}

TokenLookup = Callable[[str], "int | None"]


@runtime_checkable
class Tokenizer(Protocol):
    """What the model, sampler and data pipeline need from a tokenizer."""

    vocab_size: int  # size of the id space (embedding rows may be >= this)
    bos_id: int | None
    eos_id: int  # stops generation by default
    pad_id: int  # a valid id used for padding
    stop_ids: tuple[int, ...]  # every id that ends a response
    chat_format: str  # "chatml" | "llama3" | "plain"

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str: ...

    def token_id(self, piece: str) -> int | None: ...


def detect_chat_format(token_id: TokenLookup) -> str:
    """The chat format whose marker tokens this vocabulary has; "plain" when it has neither."""
    if all(token_id(piece) is not None for piece in CHATML_TOKENS[:2]):
        return "chatml"
    if all(token_id(piece) is not None for piece in LLAMA3_TOKENS[1:4]):
        return "llama3"
    return "plain"


def end_ids(
    token_id: TokenLookup, chat_format: str, eos_id: int | None, source: str
) -> tuple[int, tuple[int, ...]]:
    """(eos_id, stop_ids): eos defaults to the format's first end token present."""
    if chat_format not in CHAT_FORMATS:
        raise ValueError(f"{source}: unknown chat_format {chat_format!r}; expected {CHAT_FORMATS}")
    ends = [i for piece in _END_TOKENS[chat_format] if (i := token_id(piece)) is not None]
    if eos_id is None:
        if not ends:
            raise ValueError(
                f"{source}: no end-of-text token for chat format {chat_format!r} "
                f"(looked for {_END_TOKENS[chat_format]}); pass eos_id"
            )
        eos_id = ends[0]
    return eos_id, tuple(dict.fromkeys([eos_id, *ends]))


def checked_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
    """ids as Python ints, each in [0, vocab_size) (sampled ids can land in padded rows)."""
    out = [int(i) for i in ids]
    for i in out:
        if not 0 <= i < vocab_size:
            raise ValueError(f"token id {i} outside the vocabulary [0, {vocab_size})")
    return out


def existing_path(path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return path
