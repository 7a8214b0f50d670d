"""Reflection output -> insight items (tolerant, never raises) and the shortcut filter.

Parsing (`parse_reflection`), pure Python, never `eval`:
- "json": the first ```json (or bare ```) fence if any, else the whole text; the object starts
  at the first "{"; leading and trailing prose are ignored. When the object does not decode,
  a text without any double quote is retried with single quotes turned into double quotes
  (only then: an apostrophe inside a double-quoted string would otherwise be corrupted). When it
  still fails (truncated or malformed), the complete {"title", "content"} objects inside each
  "strategies"/"lessons" array are recovered up to the first broken one.
  Keys: "strategies"/"strategy" and "lessons"/"lesson", any case. Items that are not objects,
  lack a key, or have non-string or empty values are dropped.
- "lines": lines like `STRATEGY: <title> | <content>` (kind in any case, optional bullet,
  numbering or markdown bold such as `- **Lesson 2**:`); "|" separates title and content, and a
  line without "|" is split at its first ": " or " - " instead (a line with no separator at
  all is dropped: it has no title). Other lines (chatter) are ignored.
Both: whitespace is collapsed; an item is dropped when a field is empty or echoes the prompt's
placeholders ("<title>", "..."), the title has no letter, the content has fewer than 3 words or
repeats the title (degenerate outputs of small models, seen with SmolLM2-135M: "No" / "No").
ok is False when no item survives (a parse failure).

Shortcut filter (`shortcut_reason`), the first reason that applies, in this order:
- "refers_to_attempts": the noun "attempt(s)", "the responses", "the model/assistant/AI",
  "previous/failed/successful/incorrect solution", "correct solutions", "solution 2", "previous
  answer", "responses above", "no solution was correct", or the task's own "2-3 lessons"
  ("a correct answer" and "the solution" alone are general);
- "option_letter": "option B", "choice (C)", "answer (C)", "the answer is D.", "(E)"; a bare
  letter after "answer" counts only before punctuation ("answer A correct ..." is prose);
- "problem_numbers": quotes numbers of this question. Rule: a question number with two or more
  digits (or a decimal) appearing in the item, or at least two distinct one-digit question
  numbers. One small number alone ("divide by 2") is general, and so are number words ("two
  steps"), 0, 1 and 100 (identities and the percent base);
- "problem_names": names of this question's people, shops or things ("Zoe", "Ali"): capitalised
  words that the question never writes in lower case, minus function words ("She", "How");
- "generic_advice": test-taking advice (read carefully, double-check, check your work, show your
  work, take your time, be careful, don't rush, pay attention to details, stay focused...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import NamedTuple

KINDS = ("strategy", "lesson")
SHORTCUT_REASONS = (
    "refers_to_attempts",
    "option_letter",
    "problem_numbers",
    "problem_names",
    "generic_advice",
)


class InsightItem(NamedTuple):
    """One parsed reflection item."""

    kind: str  # "strategy" | "lesson"
    title: str
    content: str


class ParsedReflection(NamedTuple):
    """items: usable items in output order; ok: at least one; error: what went wrong, if anything
    (set also when some items were recovered, e.g. from truncated JSON)."""

    items: tuple[InsightItem, ...]
    ok: bool
    error: str | None


MIN_CONTENT_WORDS = 3  # shorter content ("No", "Incorrect") is what degenerate outputs look like
_PLACEHOLDER = re.compile(r"^(<[^<>]*>|\.{2,}|…|\[[^\[\]]*\])$")


def _clean(field: object) -> str:
    """A string field with collapsed whitespace; "" for non-strings and placeholders."""
    if not isinstance(field, str):
        return ""
    text = " ".join(field.split()).strip(" \"'`*")
    return "" if _PLACEHOLDER.match(text) else text


def _item(kind: str, title: object, content: object) -> InsightItem | None:
    """An item when both fields are usable, else None (degenerate items are not insights)."""
    title, content = _clean(title), _clean(content)
    usable = (
        any(char.isalpha() for char in title)
        and len(content.split()) >= MIN_CONTENT_WORDS
        and content.lower() != title.lower()
    )
    return InsightItem(kind, title, content) if usable else None


def _result(items: list[InsightItem], error: str | None) -> ParsedReflection:
    if not items and error is None:
        error = "no items"
    return ParsedReflection(tuple(items), bool(items), error)


# ---------------------------------------------------------------- json

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
_ARRAY_KEY = re.compile(r"[\"']?(strateg(?:y|ies)|lessons?)[\"']?\s*:\s*\[", re.IGNORECASE)
_DECODER = json.JSONDecoder()


def _kind_of(key: str) -> str | None:
    key = key.strip().lower()
    if key in ("strategies", "strategy"):
        return "strategy"
    if key in ("lessons", "lesson"):
        return "lesson"
    return None


def _items_from_object(obj: object) -> list[InsightItem]:
    if not isinstance(obj, dict):
        return []
    items = []
    for key, entries in obj.items():
        kind = _kind_of(str(key))
        if kind is None or not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, dict):
                item = _item(kind, entry.get("title"), entry.get("content"))
                if item is not None:
                    items.append(item)
    return items


def _decode_object(text: str) -> object | None:
    try:
        return _DECODER.raw_decode(text)[0]
    except (json.JSONDecodeError, RecursionError):
        return None


def _recover_items(text: str) -> list[InsightItem]:
    """Complete item objects of each "strategies"/"lessons" array, up to the first broken one."""
    items = []
    for match in _ARRAY_KEY.finditer(text):
        kind = _kind_of(match.group(1))
        position = match.end()
        while True:
            while position < len(text) and text[position] in " \t\r\n,":
                position += 1
            if position >= len(text) or text[position] != "{":
                break  # "]", truncation, or something that is not an item
            try:
                entry, position = _DECODER.raw_decode(text, position)
            except (json.JSONDecodeError, RecursionError):
                break
            if isinstance(entry, dict):
                item = _item(kind, entry.get("title"), entry.get("content"))
                if item is not None:
                    items.append(item)
    return items


def parse_json(text: str) -> ParsedReflection:
    """Items of a JSON reflection (rules in the module doc)."""
    fence = _FENCE.search(text)
    body = fence.group(1) if fence else text
    start = body.find("{")
    if start < 0:
        return _result([], "no JSON object")
    body = body[start:]
    obj = _decode_object(body)
    if obj is None and '"' not in body:
        obj = _decode_object(body.replace("'", '"'))
        if obj is None:
            body = body.replace("'", '"')  # for the recovery below
    if obj is not None:
        items = _items_from_object(obj)
        return _result(items, None if items else "no valid items in the JSON object")
    items = _recover_items(body)
    error = f"malformed or truncated JSON; recovered {len(items)} complete items"
    return _result(items, error)


# ---------------------------------------------------------------- lines

_LINE = re.compile(
    r"^[\s>*\-•+#]*(?:\d+[.)]\s*)?[*_]*\s*(strategy|lesson)(?:\s*\d+)?\s*[*_]*\s*[:\-–]\s*[*_]*"
    r"\s*(.*)$",
    re.IGNORECASE,
)


def _split_title(rest: str) -> tuple[str, str]:
    for separator in ("|", ": ", " - ", " – ", " — "):
        if separator in rest:
            title, content = rest.split(separator, 1)
            return title, content
    return "", rest


def parse_lines(text: str) -> ParsedReflection:
    """Items of a line-format reflection (rules in the module doc)."""
    items, unusable = [], 0
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        title, content = _split_title(match.group(2))
        item = _item(match.group(1).lower(), title, content)
        if item is not None:
            items.append(item)
        else:
            unusable += 1
    error = f"{unusable} item lines unusable (no title, placeholder or degenerate)"
    return _result(items, error if unusable else None)


def parse_reflection(text: str, output_format: str) -> ParsedReflection:
    """Model output -> ParsedReflection; never raises on any text."""
    if output_format == "json":
        return parse_json(text)
    if output_format == "lines":
        return parse_lines(text)
    raise ValueError(f"parse_reflection: unknown output_format {output_format!r}")


# ---------------------------------------------------------------- shortcut filter

_REFERS = re.compile(
    "|".join(
        [
            r"\battempts?\b(?!\s+to\b)",  # the noun; "attempt to" is a verb
            r"\b(?:the|these|those|both|all|each|other)\s+(?:responses?|outputs?)\b",
            r"\b(?:previous|earlier|prior|first|second|third|other|failed|successful|correct|"
            r"incorrect|wrong|above|given|shown)\s+(?:solutions|responses?|outputs?|ones)\b",
            r"\b(?:previous|earlier|prior|first|second|failed|successful|incorrect|above|given|"
            r"shown)\s+solution\b",
            r"\b(?:previous|earlier|prior|above|given|shown)\s+answers?\b",
            r"\bsolution\s+\d\b",  # the prompt labels them "Correct solution 1"
            r"\b(?:the|this|a|an)\s+(?:model|assistant|ai)\b",
            r"\b(?:solutions?|responses?|answers?)\s+(?:above|shown|provided)\b",
            r"\b(?:solutions?|attempts?|responses?)\s+(?:was|were)\s+(?:in)?correct\b",
            r"\b2-3\s+(?:strategies|lessons)\b",  # the task's own wording copied back
        ]
    ),
    re.IGNORECASE,
)
_OPTION = re.compile(
    "|".join(
        [
            r"\b(?i:options?|choices?)[ \t]*[:\-]?[ \t]*\(?[A-E]\)?(?![\w'])",
            # "answer" + a bare letter only before punctuation: "answer A correct ..." is prose
            r"\b(?i:answers?)[ \t]*(?i:is)?[ \t]*[:\-]?[ \t]*[A-E](?=[.,;:!?)]|$)",
            r"\([A-E]\)(?!\w)",
        ]
    ),
    re.MULTILINE,
)
_ADVICE = re.compile(
    r"\b(?:read\s+(?:the|each|every|all)?\s*(?:question|problem|statement)s?\s+(?:very\s+)?"
    r"carefully|re-?read|double[\s-]?check|check\s+your\s+(?:work|answers?|calculations?|math)|"
    r"review\s+your\s+(?:work|answers?)|show\s+(?:all\s+)?(?:of\s+)?your\s+work|take\s+your\s+"
    r"time|be\s+careful|don'?t\s+rush|do\s+not\s+rush|pay\s+(?:close\s+)?attention\s+to\s+"
    r"(?:the\s+)?details?|stay\s+(?:calm|focused)|practi[cs]e\s+(?:more|regularly))",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?")
_GENERAL_NUMBERS = frozenset({"0", "1", "100"})
_CAPITALISED = re.compile(r"\b[A-Z][a-z]+\b")
# Capitalised words of questions that are not names (sentence starts, days are kept as names).
_NOT_NAMES = frozenset(
    "a an the he she they it we you i his her their its if how what which who when where why "
    "each every all some one two three then after before there this that these those in on at "
    "for from to with by of and but so as during while later next first finally now also".split()
)


def _numbers(text: str) -> set[str]:
    """Numeric literals of a text, normalised ("1,200" -> "1200", "3.50" -> "3.5")."""
    found = set()
    for literal in _NUMBER.findall(text):
        literal = literal.replace(",", "")
        if "." in literal:
            literal = literal.rstrip("0").rstrip(".")
        found.add(literal or "0")
    return found


def quotes_problem_numbers(text: str, question: str) -> bool:
    """The "problem_numbers" rule of the module doc."""
    shared = (_numbers(text) & _numbers(question)) - _GENERAL_NUMBERS
    return any(len(n.replace(".", "")) >= 2 or "." in n for n in shared) or len(shared) >= 2


def problem_names(question: str) -> set[str]:
    """Names of a question: capitalised words never written in lower case there, minus
    sentence-start function words ("She", "How", "Each")."""
    lower_words = set(re.findall(r"\b[a-z]+\b", question))
    return {
        word
        for word in _CAPITALISED.findall(question)
        if word.lower() not in _NOT_NAMES and word.lower() not in lower_words
    }


def shortcut_reason(item: InsightItem, question: str) -> str | None:
    """Why an item is a shortcut (one of SHORTCUT_REASONS), or None when it is general."""
    text = f"{item.title}\n{item.content}"
    if _REFERS.search(text):
        return "refers_to_attempts"
    if _OPTION.search(text):
        return "option_letter"
    if quotes_problem_numbers(text, question):
        return "problem_numbers"
    if set(_CAPITALISED.findall(text)) & problem_names(question):
        return "problem_names"
    if _ADVICE.search(text):
        return "generic_advice"
    return None


def filter_shortcuts(
    items: Sequence[InsightItem], question: str
) -> tuple[tuple[InsightItem, ...], dict[str, int]]:
    """(items without shortcuts, dropped count per reason: every SHORTCUT_REASONS key present)."""
    kept, counts = [], dict.fromkeys(SHORTCUT_REASONS, 0)
    for item in items:
        reason = shortcut_reason(item, question)
        if reason is None:
            kept.append(item)
        else:
            counts[reason] += 1
    return tuple(kept), counts
