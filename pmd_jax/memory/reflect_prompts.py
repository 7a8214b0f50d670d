"""Reflection prompts (METHOD.md section 3): which case, what is shown, and the output format.

A problem's attempts become one chat [(role, content)]: a system turn with the rules and the
output format, and a user turn with the problem, "k of n attempts were correct", the shown
successes, then the shown failures with their verifier feedback. Three cases:
- contrastive (some correct, some wrong): 2-3 strategies and 2-3 lessons;
- strategies (all correct): 2-3 strategies only;
- lessons (all wrong): 2-3 lessons only.

Output formats: "lines" (one item per line, `STRATEGY: <title> | <content>`) or "json"
(`{"strategies": [{"title", "content"}], "lessons": [...]}`). With `prime_response` the
assistant turn is started for the model (`STRATEGY:` / `LESSON:` or `{"strategies": [` ...):
`response_prefix` returns that text, and the parser reads prefix + generated text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

from pmd_jax.memory.state import MemoryConfig
from pmd_jax.remote import RemoteSpec

OUTPUT_FORMATS = ("lines", "json")
# Who answers a reflection (and, as BehaviourConfig.backend, an evolution) prompt: the policy,
# the initial params ("base"), or an OpenAI-compatible endpoint ("openai", see `remote`).
BACKENDS = ("policy", "base", "openai")
CASES = ("contrastive", "strategies", "lessons")
TRUNCATION_MARKER = " [...]"
_JSON_KEYS = {"STRATEGY": "strategies", "LESSON": "lessons"}


@dataclasses.dataclass(frozen=True)
class ReflectConfig:
    """How reflection prompts are built, sampled and filtered. Hashable."""

    output_format: str = "json"  # "lines" | "json"; chosen by parse rate (reflect.py docstring)
    max_new_tokens: int = 256
    temperature: float = 0.6
    top_p: float = 0.95
    max_successes_shown: int = 2
    max_failures_shown: int = 2
    max_response_chars: int = 600  # per shown attempt; longer ones are cut with " [...]"
    items_per_kind: int = 3  # keep at most this many strategies and this many lessons
    filter_shortcuts: bool = True
    # Who reflects: "policy" | "base" (the initial params) | "openai" (the endpoint in `remote`).
    # Was `reflector` (which also chose the evolver; that is now BehaviourConfig.backend).
    backend: str = "policy"
    remote: RemoteSpec = RemoteSpec()  # backend "openai": base_url, model, api_key_env, ...
    batch_size: int = 16  # prompts per sampler call
    prime_response: bool = True  # start the assistant turn with the format's opening text
    prompt_bucket: int = 64  # prompt widths are padded to a multiple of this (bounded compiles)
    # Every reflection prompt is padded to at least this width (0: its bucket only). Set it above
    # the longest prompt the run builds and the reflection sampler compiles once per run; a longer
    # prompt still works (its own bucket, one more compile) and counts in reflect/over_width.
    prompt_width: int = 0

    def __post_init__(self):
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(
                f"ReflectConfig.output_format={self.output_format!r}; expected one of "
                f"{OUTPUT_FORMATS}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"ReflectConfig.backend={self.backend!r}; expected one of {BACKENDS}")
        for name in ("max_new_tokens", "batch_size", "prompt_bucket", "items_per_kind"):
            if getattr(self, name) < 1:
                raise ValueError(f"ReflectConfig.{name}={getattr(self, name)} must be >= 1")
        for name in ("max_successes_shown", "max_failures_shown", "prompt_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"ReflectConfig.{name}={getattr(self, name)} must be >= 0")
        if self.max_response_chars < 20:
            raise ValueError(
                f"ReflectConfig.max_response_chars={self.max_response_chars} must be >= 20"
            )


class Attempt(NamedTuple):
    """One response to a problem: its text, reward (> success_reward is a success), feedback."""

    text: str
    reward: float
    feedback: str = ""


def reflection_case(num_correct: int, num_attempts: int) -> str:
    """ "contrastive", "strategies" (all correct) or "lessons" (none correct)."""
    if num_attempts < 1 or not 0 <= num_correct <= num_attempts:
        raise ValueError(
            f"reflection_case: need 0 <= num_correct <= num_attempts and num_attempts >= 1, "
            f"got num_correct={num_correct}, num_attempts={num_attempts}"
        )
    if num_correct == num_attempts:
        return "strategies"
    if num_correct == 0:
        return "lessons"
    return "contrastive"


def confidence_line(num_correct: int, num_attempts: int) -> str:
    """The "k of n" confidence signal shown to the reflector."""
    noun = "attempt was" if num_attempts == 1 else "attempts were"
    return f"{num_correct} of {num_attempts} {noun} correct."


def shorten(text: str, max_chars: int) -> str:
    """text stripped, cut to at most max_chars (marker included) with TRUNCATION_MARKER."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    return text[: max_chars - len(TRUNCATION_MARKER)].rstrip() + TRUNCATION_MARKER


_ASK = {
    "contrastive": "Compare the correct and the incorrect solutions. Write 2-3 strategies "
    "(methods that lead to a correct answer) and 2-3 lessons (mistakes to avoid).",
    "strategies": "All solutions were correct. Write 2-3 strategies (methods that lead to a "
    "correct answer).",
    "lessons": "No solution was correct. Write 2-3 lessons (mistakes to avoid and what to do "
    "instead).",
}

_RULES = (
    "Rules for every item:\n"
    "- It must be general and reusable on other problems of the same kind.\n"
    "- Do not mention the solutions, the attempts, the model or answer options.\n"
    "- Do not copy the numbers of this problem.\n"
    "- No generic advice such as reading carefully or double-checking.\n"
    "- The title has at most 10 words; the content has 2-4 sentences."
)


def _format_spec(case: str, output_format: str) -> str:
    kinds = {"contrastive": ("STRATEGY", "LESSON"), "strategies": ("STRATEGY",)}
    kinds = kinds.get(case, ("LESSON",))
    if output_format == "lines":
        lines = "\n".join(f"{kind}: <title> | <content>" for kind in kinds)
        return f"Answer with one item per line and nothing else, in this form:\n{lines}"
    item = '[{"title": "...", "content": "..."}]'
    body = ", ".join(f'"{_JSON_KEYS[kind]}": {item}' for kind in kinds)
    return f"Answer with one JSON object and nothing else:\n{{{body}}}"


def response_prefix(case: str, config: ReflectConfig) -> str:
    """The text the assistant turn starts with ("" when `prime_response` is off)."""
    if not config.prime_response:
        return ""
    if config.output_format == "lines":
        return "STRATEGY:" if case != "lessons" else "LESSON:"
    return '{"strategies": [' if case != "lessons" else '{"lessons": ['


def _shown(attempts: Sequence[Attempt], limit: int, prefer_short: bool) -> list[Attempt]:
    """At most `limit` attempts with distinct texts (shortest first when `prefer_short`)."""
    seen, unique = set(), []
    for attempt in attempts:
        key = attempt.text.strip()
        if key and key not in seen:
            seen.add(key)
            unique.append(attempt)
    if prefer_short:  # stable: equal lengths keep their order
        unique.sort(key=lambda a: len(a.text))
    return unique[:limit]


def build_messages(
    question: str,
    attempts: Sequence[Attempt],
    config: ReflectConfig,
    *,
    success_reward: float = MemoryConfig.success_reward,
    stored: Sequence[Attempt] = (),
) -> tuple[str, list[tuple[str, str]]]:
    """(case, chat messages) for one problem. A training run passes its
    `MemoryConfig.success_reward` (through `build_reflection_requests`, which requires it); the
    default is that field's default, for text-only callers (the scratch tokenizer's corpus).

    `attempts` is this round's group (it sets "k of n"); `stored` are attempts from experience
    memory, shown after this round's ones of the same kind when there is room, so a group that
    failed everywhere still gets a contrastive prompt when a stored success exists.
    """
    if not attempts:
        raise ValueError("build_messages: a reflection needs at least one attempt")
    is_success = lambda attempt: attempt.reward > success_reward
    num_correct = sum(is_success(a) for a in attempts)
    pool = [*attempts, *stored]
    successes = _shown([a for a in pool if is_success(a)], config.max_successes_shown, True)
    failures = _shown([a for a in pool if not is_success(a)], config.max_failures_shown, False)
    # The case follows what the group and memory hold, even if a limit of 0 hides one kind.
    case = reflection_case(sum(is_success(a) for a in pool), len(pool))
    parts = [f"Problem:\n{question.strip()}", confidence_line(num_correct, len(attempts))]
    if any(is_success(a) for a in stored) and num_correct == 0:
        parts[-1] += " A correct solution found earlier is shown too."
    for index, attempt in enumerate(successes, 1):
        text = shorten(attempt.text, config.max_response_chars)
        parts.append(f"Correct solution {index}:\n{text}")
    for index, attempt in enumerate(failures, 1):
        text = shorten(attempt.text, config.max_response_chars)
        feedback = attempt.feedback.strip() or "the answer is wrong"
        parts.append(f"Incorrect solution {index}:\n{text}\nVerifier feedback: {feedback}")
    parts.append(_ASK[case])
    system = (
        "You write short, reusable notes on how to solve math word problems.\n\n"
        f"{_RULES}\n\n{_format_spec(case, config.output_format)}"
    )
    return case, [("system", system), ("user", "\n\n".join(parts))]
