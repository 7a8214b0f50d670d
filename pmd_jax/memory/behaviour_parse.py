"""Parsing of behaviour-evolver output: tolerant JSON -> new/update/remove actions (host-side).

Accepted shapes: {"actions": [{"op", "name", "instruction"}]} (also under "behaviours" or
"behaviors"), a bare list of {name, instruction} items (the cold-start answer; an item without "op"
is "new"), a single item object. The JSON may sit in a code fence or in prose and may have
trailing commas. The first complete container wins; when there is none (output cut by the token
limit) the complete item objects found in the text are kept. Items of the wrong schema are dropped
and counted. Op synonyms (add/create, edit/modify, delete/drop, ...) map to the three ops. Names
are normalised to snake_case ([a-z0-9_], at most MAX_NAME_CHARS, cut at a word boundary); an
instruction is required for new/update, remove needs only the name. A new/update item is dropped
(and counted) when it is degenerate, the shapes SmolLM2-135M writes: a name without a letter
("10"), an instruction with fewer than MIN_INSTRUCTION_WORDS words that have a letter ("###",
"10 + 10 = 20"), or an instruction that only repeats the name. Such entries are not harmless:
put in a prompt, they are copied into answers (docs/RESULTS.md, "The ablation study"). Never raises,
never evaluates the text.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

MAX_NAME_CHARS = 64
MIN_INSTRUCTION_WORDS = 2  # words with a letter; "###" and "10 + 10 = 20" have none
_LETTER = re.compile(r"[a-zA-Z]")


class Action(NamedTuple):
    """One evolver action: op in ("new", "update", "remove"); instruction "" for remove."""

    op: str
    name: str
    instruction: str


class ParsedActions(NamedTuple):
    """Parser result: ok is False when no usable JSON was found (error says why); dropped counts
    items of the wrong schema."""

    actions: tuple[Action, ...]
    ok: bool
    error: str | None
    dropped: int = 0


_OPS = {
    **dict.fromkeys(("new", "add", "create", "insert"), "new"),
    **dict.fromkeys(("update", "edit", "modify", "revise", "replace"), "update"),
    **dict.fromkeys(("remove", "delete", "drop"), "remove"),
}
_LIST_KEYS = ("actions", "behaviours", "behaviors")
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_OPENING = re.compile(r"[\[{]")


def normalise_name(raw: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """'Check Units-first!' -> 'check_units_first'; cut at a word boundary to max_chars."""
    name = re.sub(r"[^a-z0-9]+", "_", raw.lower()).strip("_")
    if len(name) > max_chars:
        cut = name[: max_chars + 1]
        name = cut[: cut.rfind("_")] if "_" in cut else name[:max_chars]
    return name.strip("_")


def _json_values(text: str) -> list[Any]:
    """Complete JSON objects/arrays in `text`, left to right.

    A value that fails to decode (prose braces, truncation) is skipped one character at a time,
    so the complete items inside a truncated list are still found.
    """
    decoder = json.JSONDecoder()
    text = _TRAILING_COMMA.sub(r"\1", text)
    values, position = [], 0
    while (match := _OPENING.search(text, position)) is not None:
        try:
            value, position = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):  # deep nesting ("[[[[...") overflows the decoder
            position = match.start() + 1
            continue
        values.append(value)
    return values


def _to_action(item: Any) -> Action | None:
    """One item dict -> Action, None for the wrong schema."""
    if not isinstance(item, dict):
        return None
    op = _OPS.get(str(item.get("op", item.get("action", "new"))).strip().lower())
    name, instruction = item.get("name"), item.get("instruction", item.get("description", ""))
    if op is None or not isinstance(name, str) or not isinstance(instruction, str):
        return None
    name = normalise_name(name)
    instruction = " ".join(instruction.split()) if op != "remove" else ""
    if not name or (op != "remove" and is_degenerate(name, instruction)):
        return None
    return Action(op, name, instruction)


def is_degenerate(name: str, instruction: str) -> bool:
    """A new/update entry that says nothing: `name` (normalised) without a letter, fewer than
    MIN_INSTRUCTION_WORDS words with a letter in `instruction`, or an instruction that is the
    name again ("check units" for check_units)."""
    words = [word for word in instruction.split() if _LETTER.search(word)]
    return (
        not _LETTER.search(name)
        or len(words) < MIN_INSTRUCTION_WORDS
        or normalise_name(instruction) == name
    )


def _container_items(value: Any) -> list | None:
    """The item list of an actions container (a list that is empty or holds an object, or a dict
    with a list key), else None."""
    if isinstance(value, list) and (not value or any(isinstance(v, dict) for v in value)):
        return value
    if isinstance(value, dict):
        for key in _LIST_KEYS:
            if isinstance(value.get(key), list):
                return value[key]
    return None


def parse_behaviour_actions(text: str) -> ParsedActions:
    """Evolver output -> actions. Never raises, never evaluates the text.

    Accepts {"actions": [...]} (also "behaviours"/"behaviors"), a bare list of items (the cold-start
    shape; items without "op" are "new"), JSON in a code fence or inside prose, trailing commas.
    The first complete container wins; when there is none (truncated output) the complete item
    objects found in the text are kept. Items of the wrong schema and degenerate new/update items
    (`is_degenerate`) are dropped and counted; ok is False when nothing usable was found (an empty
    container is a valid "no change").
    """
    values = _json_values(text if isinstance(text, str) else "")
    containers = [items for value in values if (items := _container_items(value)) is not None]
    if containers:
        items = containers[0]
    else:
        items = [value for value in values if isinstance(value, dict) and "name" in value]
    actions = tuple(action for item in items if (action := _to_action(item)) is not None)
    dropped = len(items) - len(actions)
    if actions or (containers and not items):
        return ParsedActions(actions, True, None, dropped)
    if not values:
        return ParsedActions((), False, "no JSON object or list found", dropped)
    return ParsedActions((), False, "no item with the expected schema", dropped)
