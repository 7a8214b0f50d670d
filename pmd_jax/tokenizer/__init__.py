"""Tokenizers behind one protocol (byte-level BPE, SentencePiece) and the chat formats on top.

Ids are plain Python ints; arrays begin in the data pipeline. No encode adds BOS: chat formats
insert every special token themselves, as ids, so text can never open a chat role by accident.
"""

from __future__ import annotations

import pathlib

from pmd_jax.tokenizer.base import (
    CHAT_FORMATS,
    CHATML_TOKENS,
    LLAMA3_TOKENS,
    ROLES,
    Tokenizer,
    detect_chat_format,
    existing_path,
)
from pmd_jax.tokenizer.bpe import GGUF_PRE_TOKENIZERS, BPETokenizer
from pmd_jax.tokenizer.chat import ChatPrompt, format_chat
from pmd_jax.tokenizer.sentencepiece_model import SentencePieceTokenizer, train_sentencepiece

__all__ = [
    "CHAT_FORMATS",
    "CHATML_TOKENS",
    "GGUF_PRE_TOKENIZERS",
    "LLAMA3_TOKENS",
    "ROLES",
    "BPETokenizer",
    "ChatPrompt",
    "SentencePieceTokenizer",
    "Tokenizer",
    "detect_chat_format",
    "format_chat",
    "load_tokenizer",
    "train_sentencepiece",
]


def load_tokenizer(path: str | pathlib.Path) -> Tokenizer:
    """Load tokenizer.json, *.model or *.gguf, or a directory holding one of them."""
    path = existing_path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return BPETokenizer.from_file(path / "tokenizer.json")
        if (path / "tokenizer.model").is_file():
            return SentencePieceTokenizer.from_file(path / "tokenizer.model")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return BPETokenizer.from_gguf(ggufs[0])
        raise ValueError(
            f"{path}: directory has no tokenizer.json, tokenizer.model or single *.gguf "
            f"({len(ggufs)} .gguf files)"
        )
    loaders = {
        ".json": BPETokenizer.from_file,
        ".model": SentencePieceTokenizer.from_file,
        ".gguf": BPETokenizer.from_gguf,
    }
    if path.suffix not in loaders:
        raise ValueError(
            f"unknown tokenizer file kind: {path} "
            "(expected tokenizer.json, *.model, *.gguf or a directory holding one)"
        )
    return loaders[path.suffix](path)
