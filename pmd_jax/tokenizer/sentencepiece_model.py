"""SentencePiece models: loading, and training small ones whose round trip is exact."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import pathlib
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from pmd_jax.tokenizer.base import (
    CHATML_TOKENS,
    LLAMA3_TOKENS,
    checked_ids,
    detect_chat_format,
    end_ids,
    existing_path,
)


def _piece_id(processor: spm.SentencePieceProcessor, piece: str) -> int | None:
    # piece_to_id answers unk for absent pieces; only the unk piece itself maps there.
    i = processor.piece_to_id(piece)
    return None if i == processor.unk_id() and processor.id_to_piece(i) != piece else i


@dataclasses.dataclass(frozen=True, eq=False)
class SentencePieceTokenizer:
    """A SentencePiece model; chat markers are its user-defined symbols."""

    processor: spm.SentencePieceProcessor
    special_ids: frozenset[int]  # control pieces and chat markers
    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int
    stop_ids: tuple[int, ...]
    chat_format: str

    @classmethod
    def from_file(cls, model_path: str | pathlib.Path) -> SentencePieceTokenizer:
        """Load a .model file; eos is the chat format's end token, else the model's </s>."""
        path = existing_path(model_path)
        processor = spm.SentencePieceProcessor()
        try:
            processor.Load(str(path))
        except (RuntimeError, OSError) as err:
            raise ValueError(f"{path}: not a SentencePiece model ({err})") from err
        token_id = functools.partial(_piece_id, processor)
        vocab_size = processor.get_piece_size()
        model_eos = processor.eos_id() if processor.eos_id() >= 0 else None
        chat_format = detect_chat_format(token_id)
        eos_id, stop_ids = end_ids(
            token_id, chat_format, model_eos if chat_format == "plain" else None, str(path)
        )
        if model_eos is not None and model_eos not in stop_ids:
            stop_ids += (model_eos,)
        markers = {token_id(piece) for piece in CHATML_TOKENS + LLAMA3_TOKENS} - {None}
        controls = {i for i in range(vocab_size) if processor.is_control(i)}
        return cls(
            processor=processor,
            special_ids=frozenset(markers | controls),
            vocab_size=vocab_size,
            bos_id=processor.bos_id() if processor.bos_id() >= 0 else None,
            eos_id=eos_id,
            pad_id=processor.pad_id() if processor.pad_id() >= 0 else eos_id,
            stop_ids=stop_ids,
            chat_format=chat_format,
        )

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of `text`, never with BOS; chat markers in text stay text unless allowed."""
        ids = self.processor.encode(text)
        if allow_special or not self.special_ids.intersection(ids):
            return ids
        # SentencePiece always matches user-defined symbols in text; re-spell those as
        # characters (or bytes) so that text can never produce a chat marker id.
        return [j for i in ids for j in (self._spelled(i) if i in self.special_ids else (i,))]

    def _spelled(self, marker_id: int) -> list[int]:
        piece, ids = self.processor.id_to_piece(marker_id), []
        for char in piece:
            char_id = _piece_id(self.processor, char)
            if char_id is not None and char_id not in self.special_ids:
                ids.append(char_id)
                continue
            for byte in char.encode("utf-8"):
                byte_id = _piece_id(self.processor, f"<0x{byte:02X}>")
                if byte_id is None:
                    raise ValueError(f"cannot encode {piece!r} as text: no piece for {char!r}")
                ids.append(byte_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """Text of `ids`; special tokens are dropped unless skip_special=False."""
        ids = checked_ids(ids, self.vocab_size)
        if skip_special:
            return self.processor.decode([i for i in ids if i not in self.special_ids])
        # SentencePiece renders control pieces (<s>, </s>) as nothing; show them instead.
        runs = itertools.groupby(ids, key=self.processor.is_control)
        pieces = self.processor.id_to_piece
        return "".join(
            "".join(map(pieces, run)) if control else self.processor.decode(list(run))
            for control, run in runs
        )

    def token_id(self, piece: str) -> int | None:
        """Id of a piece ("▁the", "<|im_end|>"), None when absent."""
        return _piece_id(self.processor, piece)


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str | pathlib.Path,
    vocab_size: int,
    *,
    model_type: str = "bpe",
    user_defined_symbols: Sequence[str] = CHATML_TOKENS,
) -> pathlib.Path:
    """Train a SentencePiece model on `texts`; returns the written `<model_prefix>.model`.

    Identity normalisation, no dummy prefix, no whitespace folding and byte fallback make
    decode(encode(x)) == x for any text without U+2581; digits are split one per token.
    vocab_size is an upper bound (a tiny corpus may support fewer pieces). The default
    user-defined symbols are the ChatML markers, so such a model speaks ChatML.
    """
    prefix = pathlib.Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            user_defined_symbols=list(user_defined_symbols),
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            split_digits=True,
            character_coverage=1.0,
            hard_vocab_limit=False,
            minloglevel=2,
        )
    except RuntimeError as err:
        raise ValueError(f"training SentencePiece model {prefix}.model failed: {err}") from err
    return prefix.with_name(prefix.name + ".model")
