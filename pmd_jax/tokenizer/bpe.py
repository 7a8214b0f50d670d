"""Byte-level BPE through the `tokenizers` library, from tokenizer.json or a GGUF file."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Sequence

import gguf
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from pmd_jax.tokenizer.base import (
    TokenLookup,
    checked_ids,
    detect_chat_format,
    end_ids,
    existing_path,
)

_OVERRIDABLE = frozenset({"bos_id", "eos_id", "pad_id", "stop_ids", "chat_format"})

# Llama 3's split (tiktoken cl100k style), as in llama.cpp's "llama-bpe" pre-tokenizer type.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gpt2_split() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm_split() -> pre_tokenizers.PreTokenizer:
    # SmolLM2's tokenizer.json (and llama.cpp's "smollm" type) isolates every digit before the
    # GPT-2 split, so a whitespace run before a number stays one pre-token ("  5" -> "ĠĠ", "5").
    digits = pre_tokenizers.Digits(individual_digits=True)
    return pre_tokenizers.Sequence([digits, _gpt2_split()])


def _llama3_split() -> pre_tokenizers.PreTokenizer:
    split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([split, byte_level])


# GGUF `tokenizer.ggml.pre` -> pre-tokenizer; a missing key means GPT-2's own split.
GGUF_PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    "gpt2": _gpt2_split,
    "smollm": _smollm_split,
    "llama-bpe": _llama3_split,
    "llama3": _llama3_split,
    "llama-v3": _llama3_split,
}


@dataclasses.dataclass(frozen=True, eq=False)
class BPETokenizer:
    """Byte-level BPE through the `tokenizers` library."""

    backend: tokenizers.Tokenizer  # matches special tokens written in text
    text_backend: tokenizers.Tokenizer  # the same, but special tokens in text stay text
    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int
    stop_ids: tuple[int, ...]
    chat_format: str

    @classmethod
    def from_backend(
        cls,
        backend: tokenizers.Tokenizer,
        *,
        source: str = "<tokenizer>",
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        stop_ids: Sequence[int] | None = None,
        chat_format: str | None = None,
    ) -> BPETokenizer:
        """Wrap a `tokenizers.Tokenizer`; unset ids are inferred from the chat format's tokens."""
        text_backend = tokenizers.Tokenizer.from_str(backend.to_str())
        text_backend.encode_special_tokens = True
        chat_format = chat_format or detect_chat_format(backend.token_to_id)
        eos_id, default_stops = end_ids(backend.token_to_id, chat_format, eos_id, source)
        pad_id = eos_id if pad_id is None else pad_id
        stop_ids = default_stops if stop_ids is None else tuple(stop_ids)
        vocab_size = backend.get_vocab_size(with_added_tokens=True)
        named = [("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)]
        for name, value in named + [("stop_ids", i) for i in stop_ids]:
            if value is not None and not 0 <= value < vocab_size:
                raise ValueError(
                    f"{source}: {name} {value} outside the vocabulary [0, {vocab_size})"
                )
        return cls(backend, text_backend, vocab_size, bos_id, eos_id, pad_id, stop_ids, chat_format)

    @classmethod
    def from_file(cls, tokenizer_json: str | pathlib.Path, **overrides) -> BPETokenizer:
        """Load a tokenizer.json; special ids come from a sibling tokenizer_config.json, then
        `overrides` (bos_id, eos_id, pad_id, stop_ids, chat_format)."""
        unknown = set(overrides) - _OVERRIDABLE
        if unknown:
            raise TypeError(f"unknown overrides {sorted(unknown)}; allowed: {sorted(_OVERRIDABLE)}")
        path = existing_path(tokenizer_json)
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises bare Exception on malformed json
            raise ValueError(f"{path}: not a tokenizers tokenizer.json ({err})") from err
        config_ids = _hf_config_ids(path.parent / "tokenizer_config.json", backend.token_to_id)
        return cls.from_backend(backend, source=str(path), **{**config_ids, **overrides})

    @classmethod
    def from_gguf(cls, gguf_path: str | pathlib.Path) -> BPETokenizer:
        """Build the tokenizer a GGUF file describes (tokens, merges, token types, special ids)."""
        path = existing_path(gguf_path)
        meta = _gguf_tokenizer_metadata(path)
        if meta.get("tokenizer.ggml.model") != "gpt2":
            raise ValueError(
                f"{path}: tokenizer.ggml.model is {meta.get('tokenizer.ggml.model')!r}; "
                "from_gguf reads byte-level BPE ('gpt2') vocabularies only"
            )
        tokens = _required(meta, "tokenizer.ggml.tokens", path)
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"{path}: tokenizer.ggml.tokens holds duplicate tokens")
        merges = _required(meta, "tokenizer.ggml.merges", path)
        merges = [tuple(merge.split(" ", 1)) for merge in merges]
        backend = tokenizers.Tokenizer(
            models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges)
        )
        pre = meta.get("tokenizer.ggml.pre", "gpt2")
        if pre not in GGUF_PRE_TOKENIZERS:
            raise ValueError(
                f"{path}: tokenizer.ggml.pre {pre!r} is not supported; "
                f"known: {sorted(GGUF_PRE_TOKENIZERS)}"
            )
        backend.pre_tokenizer = GGUF_PRE_TOKENIZERS[pre]()
        backend.decoder = decoders.ByteLevel()
        token_types = meta.get("tokenizer.ggml.token_type") or []
        backend.add_special_tokens(_added_tokens(tokens, token_types, gguf.TokenType.CONTROL, True))
        backend.add_tokens(_added_tokens(tokens, token_types, gguf.TokenType.USER_DEFINED, False))
        eot_id = meta.get("tokenizer.ggml.eot_token_id")
        tokenizer = cls.from_backend(
            backend,
            source=str(path),
            bos_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_id=meta.get("tokenizer.ggml.eos_token_id"),
            pad_id=meta.get("tokenizer.ggml.padding_token_id"),
        )
        if eot_id is None or eot_id in tokenizer.stop_ids:
            return tokenizer
        return dataclasses.replace(tokenizer, stop_ids=tokenizer.stop_ids + (eot_id,))

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of `text`, never with BOS; special-token strings are text unless allowed."""
        backend = self.backend if allow_special else self.text_backend
        return backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """Text of `ids`; special tokens are dropped unless skip_special=False."""
        ids = checked_ids(ids, self.vocab_size)
        return self.backend.decode(ids, skip_special_tokens=skip_special)

    def token_id(self, piece: str) -> int | None:
        """Id of a vocabulary string (byte-level spelling, e.g. "Ġthe"), None when absent."""
        return self.backend.token_to_id(piece)


def _added_tokens(
    tokens: Sequence[str], token_types: Sequence[int], wanted: int, special: bool
) -> list[AddedToken]:
    return [
        AddedToken(token, special=special, normalized=False)
        for token, token_type in zip(tokens, token_types, strict=False)
        if token_type == wanted
    ]


def _gguf_tokenizer_metadata(path: pathlib.Path) -> dict[str, object]:
    """The `tokenizer.*` metadata of a GGUF file as Python values."""
    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # gguf raises ValueError, numpy errors on truncated files
        raise ValueError(f"{path}: not a readable GGUF file ({err})") from err
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def _required(meta: dict[str, object], key: str, path: pathlib.Path) -> list:
    if not meta.get(key):
        raise ValueError(f"{path}: GGUF metadata has no {key}")
    return meta[key]


def _hf_config_ids(config_path: pathlib.Path, token_id: TokenLookup) -> dict[str, int]:
    """bos/eos/pad ids named by a transformers tokenizer_config.json, when there is one."""
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: invalid json ({err})") from err
    ids = {}
    for field, name in (("bos_token", "bos_id"), ("eos_token", "eos_id"), ("pad_token", "pad_id")):
        token = config.get(field)
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and token_id(token) is not None:
            ids[name] = token_id(token)
    return ids
