"""MemoryState <-> JSON with decoded text, for inspection, the HTML report and hand edits.

The JSON holds every occupied item as text (token ids are decoded with the policy tokenizer,
special tokens skipped) and, optionally, its embedding:

    {"format": FORMAT, "step": int | null, "config": {MemoryConfig fields},
     "sizes": {memory_sizes}, "problem_texts": {"<problem id>": text},
     "experience": [{problem_id, slot, kind: success|failure, reward, response, feedback, step}],
     "insights": [{problem_id, slot, kind: strategy|lesson, title, content, step}],
     "behaviours": [{slot, name, instruction, source_cluster, created_step, updated_step}]}

Each item may carry "embedding": [D floats]. Loading re-encodes the text with
`encode(allow_special=False)`, so ids are equal to the stored ones wherever the tokenizer round
trips the text (true of the arith SentencePiece model on ASCII text; a response truncated inside
a multi-token character, or one that held special tokens, may not).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pmd_jax.memory.state import (
    LESSON,
    STRATEGY,
    MemoryConfig,
    MemoryState,
    init_memory,
    memory_sizes,
    pad_ids,
)
from pmd_jax.tokenizer import Tokenizer

FORMAT = "pmd_jax.memory.v1"
EXPERIENCE_KINDS = ("success", "failure")
INSIGHT_KINDS = {STRATEGY: "strategy", LESSON: "lesson"}
# Required fields per level and their JSON types; "embedding" is optional everywhere.
_INT, _NUMBER, _TEXT = "int", "number", "text"
ITEM_FIELDS: dict[str, dict[str, Any]] = {
    "experience": {
        "problem_id": _INT,
        "slot": _INT,
        "kind": EXPERIENCE_KINDS,
        "reward": _NUMBER,
        "response": _TEXT,
        "feedback": _TEXT,
        "step": _INT,
    },
    "insights": {
        "problem_id": _INT,
        "slot": _INT,
        "kind": tuple(INSIGHT_KINDS.values()),
        "title": _TEXT,
        "content": _TEXT,
        "step": _INT,
    },
    "behaviours": {
        "slot": _INT,
        "name": _TEXT,
        "instruction": _TEXT,
        "source_cluster": _INT,
        "created_step": _INT,
        "updated_step": _INT,
    },
}
EmbedFn = Callable[[list[str]], Any]  # texts [N] -> embeddings [N, D]


def key_text(level: str, item: Mapping[str, Any]) -> str:
    """The text whose embedding is an item's key when `embed_fn` recomputes it."""
    if level == "experience":
        return item["response"]
    if level == "insights":
        return f"{item['title']}: {item['content']}"
    return f"{item['name']}: {item['instruction']}"


def _decode(tokenizer: Tokenizer, ids: np.ndarray, length: int) -> str:
    return tokenizer.decode([int(i) for i in ids[:length]], skip_special=True)


def _with_embedding(item: dict, vector: np.ndarray, include: bool) -> dict:
    return item | {"embedding": [float(x) for x in vector]} if include else item


def memory_to_json(
    state: MemoryState,
    memory_config: MemoryConfig,
    tokenizer: Tokenizer,
    *,
    step: int | None = None,
    problem_texts: Sequence[str] | Mapping[int, str] | None = None,
    include_embeddings: bool = False,
) -> dict[str, Any]:
    """Decoded text of every occupied item (layout in the module doc); plain JSON types only.

    problem_texts: question text by problem id (a list indexed by id, or a mapping); only the
    problems that hold items are written.
    """
    host = jax.device_get(state)
    exp, ins, bank = host.experience, host.insight, host.behaviours
    experience, insights, behaviours = [], [], []
    for problem_id, slot in zip(*np.nonzero(exp.occupied), strict=True):
        at = (problem_id, slot)
        item = {
            "problem_id": int(problem_id),
            "slot": int(slot),
            "kind": EXPERIENCE_KINDS[int(slot >= memory_config.success_slots)],
            "reward": float(exp.reward[at]),
            "response": _decode(tokenizer, exp.tokens[at], int(exp.length[at])),
            "feedback": _decode(tokenizer, exp.feedback[at], int(exp.feedback_len[at])),
            "step": int(exp.step[at]),
        }
        experience.append(_with_embedding(item, exp.embedding[at], include_embeddings))
    for problem_id, slot in zip(*np.nonzero(ins.occupied), strict=True):
        at = (problem_id, slot)
        item = {
            "problem_id": int(problem_id),
            "slot": int(slot),
            "kind": INSIGHT_KINDS[int(ins.kind[at])],
            "title": _decode(tokenizer, ins.title[at], int(ins.title_len[at])),
            "content": _decode(tokenizer, ins.content[at], int(ins.content_len[at])),
            "step": int(ins.step[at]),
        }
        insights.append(_with_embedding(item, ins.embedding[at], include_embeddings))
    for slot in np.nonzero(bank.alive)[0]:
        item = {
            "slot": int(slot),
            "name": _decode(tokenizer, bank.name[slot], int(bank.name_len[slot])),
            "instruction": _decode(
                tokenizer, bank.instruction[slot], int(bank.instruction_len[slot])
            ),
            "source_cluster": int(bank.source_cluster[slot]),
            "created_step": int(bank.created_step[slot]),
            "updated_step": int(bank.updated_step[slot]),
        }
        behaviours.append(_with_embedding(item, bank.embedding[slot], include_embeddings))
    used = sorted({item["problem_id"] for item in experience + insights})
    texts = {}
    if problem_texts is not None:
        texts = {str(p): str(problem_texts[p]) for p in used if _has(problem_texts, p)}
    sizes = {name: int(count) for name, count in memory_sizes(state, memory_config).items()}
    return {
        "format": FORMAT,
        "step": None if step is None else int(step),
        "config": dataclasses.asdict(memory_config),
        "sizes": sizes,
        "problem_texts": texts,
        "experience": experience,
        "insights": insights,
        "behaviours": behaviours,
    }


def _has(texts: Sequence[str] | Mapping[int, str], problem_id: int) -> bool:
    return problem_id in texts if isinstance(texts, Mapping) else problem_id < len(texts)


def _type_error(source: str, field: str, expected: str, value: Any) -> ValueError:
    shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
    return ValueError(f"{source}: field {field}: expected {expected}, got {shown}")


def _check_value(source: str, field: str, kind: Any, value: Any) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == _INT and not is_int:
        raise _type_error(source, field, "an integer", value)
    if kind == _NUMBER and not (is_int or isinstance(value, float)):
        raise _type_error(source, field, "a number", value)
    if kind == _TEXT and not isinstance(value, str):
        raise _type_error(source, field, "a string", value)
    if isinstance(kind, tuple) and value not in kind:
        raise _type_error(source, field, f"one of {list(kind)}", value)


def validate_memory_json(data: Any, source: str = "memory json") -> None:
    """Raise a ValueError naming `source` and the first bad field (e.g. experience[3].reward)."""
    if not isinstance(data, dict):
        raise _type_error(source, "<top level>", "an object", data)
    if data.get("format") != FORMAT:
        raise _type_error(source, "format", repr(FORMAT), data.get("format"))
    if data.get("step") is not None:
        _check_value(source, "step", _INT, data["step"])
    for field in ("config", "problem_texts"):
        if not isinstance(data.get(field, {}), dict):
            raise _type_error(source, field, "an object", data[field])
    for key, text in data.get("problem_texts", {}).items():
        _check_value(source, f"problem_texts[{key!r}]", _TEXT, text)
    for level, fields in ITEM_FIELDS.items():
        if level not in data:
            raise ValueError(f"{source}: missing field {level} (a list of items)")
        if not isinstance(data[level], list):
            raise _type_error(source, level, "a list", data[level])
        for index, item in enumerate(data[level]):
            where = f"{level}[{index}]"
            if not isinstance(item, dict):
                raise _type_error(source, where, "an object", item)
            for field, kind in fields.items():
                if field not in item:
                    raise ValueError(f"{source}: missing field {where}.{field}")
                _check_value(source, f"{where}.{field}", kind, item[field])
            embedding = item.get("embedding")
            if embedding is not None and not (
                isinstance(embedding, list)
                and all(isinstance(x, int | float) and not isinstance(x, bool) for x in embedding)
            ):
                raise _type_error(source, f"{where}.embedding", "a list of numbers", embedding)


def _check_slot(where: str, item: Mapping[str, Any], config: MemoryConfig, level: str) -> None:
    """Raise when an item does not fit the target config (problem id, slot, slot kind)."""
    if level != "behaviours" and not 0 <= item["problem_id"] < config.num_problems:
        raise ValueError(
            f"{where}.problem_id={item['problem_id']} outside [0, MemoryConfig.num_problems="
            f"{config.num_problems})"
        )
    if level == "experience":
        success = item["kind"] == "success"
        low, high = (
            (0, config.success_slots)
            if success
            else (config.success_slots, config.experience_slots)
        )
        bound = f"[{low}, {high}) for a {item['kind']}"
    else:
        low, high = 0, config.insight_slots if level == "insights" else config.behaviour_slots
        bound = f"[{low}, {high})"
    if not low <= item["slot"] < high:
        raise ValueError(f"{where}.slot={item['slot']} outside {bound} (MemoryConfig)")


def _embeddings(
    level: str, items: list[dict], config: MemoryConfig, embed_fn: EmbedFn | None
) -> np.ndarray:
    """Embeddings [N, D] float32 of one level: from the JSON, else `embed_fn` of the key text."""
    vectors = np.zeros((len(items), config.embed_dim), np.float32)
    missing = [i for i, item in enumerate(items) if item.get("embedding") is None]
    for i, item in enumerate(items):
        if item.get("embedding") is not None:
            if len(item["embedding"]) != config.embed_dim:
                raise ValueError(
                    f"{level}[{i}].embedding has {len(item['embedding'])} values, "
                    f"MemoryConfig.embed_dim={config.embed_dim}"
                )
            vectors[i] = item["embedding"]
    if missing and embed_fn is None:
        raise ValueError(
            f"{level}[{missing[0]}]: no embedding in the JSON ({len(missing)} {level} items lack "
            "one) and no embed_fn given; export with include_embeddings=True or pass embed_fn"
        )
    if missing:
        computed = np.asarray(embed_fn([key_text(level, items[i]) for i in missing]), np.float32)
        if computed.shape != (len(missing), config.embed_dim):
            raise ValueError(
                f"embed_fn returned shape {computed.shape} for {len(missing)} {level} texts, "
                f"expected ({len(missing)}, {config.embed_dim})"
            )
        vectors[missing] = computed
    # Keys are unit norm (state.py); exported vectors already are and are kept bit-exact.
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    off = np.abs(norms - 1.0) > 1e-5
    return np.where(off, vectors / np.maximum(norms, 1e-12), vectors).astype(np.float32)


def _encode_column(tokenizer: Tokenizer, texts: list[str], width: int, pad_id: int):
    return pad_ids([tokenizer.encode(text) for text in texts], width, pad_id)


def memory_from_json(
    data: Mapping[str, Any],
    memory_config: MemoryConfig,
    tokenizer: Tokenizer,
    embed_fn: EmbedFn | None = None,
) -> MemoryState:
    """Rebuild a MemoryState for `memory_config` from `memory_to_json` output, items in their slots.

    Text is re-encoded and fitted to the config's widths; embeddings come from the JSON when
    present, else from `embed_fn(texts [N]) -> [N, D]` of `key_text`. Raises a ValueError naming
    the item and field that do not fit (problem id, slot, embedding width, duplicate slot).
    """
    validate_memory_json(data)
    host = jax.tree.map(np.array, init_memory(memory_config))
    pad = memory_config.pad_id
    columns = {
        "experience": (
            host.experience,
            [
                ("tokens", "length", "response", memory_config.response_len),
                ("feedback", "feedback_len", "feedback", memory_config.feedback_len),
            ],
        ),
        "insights": (
            host.insight,
            [
                ("title", "title_len", "title", memory_config.title_len),
                ("content", "content_len", "content", memory_config.content_len),
            ],
        ),
        "behaviours": (
            host.behaviours,
            [
                ("name", "name_len", "name", memory_config.name_len),
                ("instruction", "instruction_len", "instruction", memory_config.instruction_len),
            ],
        ),
    }
    for level, (table, texts) in columns.items():
        items = data[level]
        if not items:
            continue
        where = [_item_index(level, item) for item in items]
        first = {}
        for index, (item, at) in enumerate(zip(items, where, strict=True)):
            _check_slot(f"{level}[{index}]", item, memory_config, level)
            if first.setdefault(at, index) != index:
                raise ValueError(f"{level}[{index}]: slot {at} already holds {level}[{first[at]}]")
        at = tuple(np.array(column) for column in zip(*where, strict=True))
        for ids_name, len_name, text_field, width in texts:
            ids, lengths = _encode_column(tokenizer, [i[text_field] for i in items], width, pad)
            getattr(table, ids_name)[at] = ids
            getattr(table, len_name)[at] = lengths
        table.embedding[at] = _embeddings(level, items, memory_config, embed_fn)
        if level == "behaviours":
            table.alive[at] = True
            for field in ("source_cluster", "created_step", "updated_step"):
                getattr(table, field)[at] = [item[field] for item in items]
            continue
        table.occupied[at] = True
        table.step[at] = [item["step"] for item in items]
        if level == "experience":
            table.reward[at] = [item["reward"] for item in items]
        else:
            kinds = {name: code for code, name in INSIGHT_KINDS.items()}
            table.kind[at] = [kinds[item["kind"]] for item in items]
    return jax.tree.map(jnp.asarray, host)


def _item_index(level: str, item: Mapping[str, Any]) -> tuple[int, ...]:
    """Where an item lives: (slot,) in the bank, else (problem_id, slot)."""
    if level == "behaviours":
        return (item["slot"],)
    return (item["problem_id"], item["slot"])


def save_memory_json(path: str | os.PathLike, data: Mapping[str, Any]) -> pathlib.Path:
    """Write `data` to `path` atomically (a temporary file in the same folder, then os.replace)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as file:
            json.dump(data, file, ensure_ascii=False, indent=1)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_memory_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a memory JSON file; errors name the file and the bad field."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such memory json file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    validate_memory_json(data, str(path))
    return data
