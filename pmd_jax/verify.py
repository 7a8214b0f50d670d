"""Answer extraction, binary rewards and feedback for numeric answers (GSM8K, arith).

`verify(response, gold_answer)` extracts the final answer, parses it as a number and compares
it with the gold number within an absolute tolerance. It returns a `Verdict` (reward 1.0 or
0.0, a feedback sentence the self-teacher can read, the raw extracted text). Pure Python;
nothing is evaluated.

Extraction
- "hash": the text after the last '####' in the response, up to the end of that line. The
  marker may follow other text on its line ("So: #### 42"). "boxed": the content of the last
  `\\boxed{...}` (nested braces allowed, e.g. `\\boxed{\\frac{3}{4}}`).

Accepted numbers (after stripping whitespace, markdown bold/italics/backticks, `$...$` / `\\(...\\)`
math delimiters and one trailing period)
- integers and decimals in ASCII digits: 42, -7, +3, 0.5, .5, 42.0; a Unicode minus (U+2212) is a
  minus sign;
- thousands separators in groups of three: 1,234 and 1,234,567.5 (but '1,23' is not a number, as
  a decimal comma would be ambiguous); LaTeX `1{,}234` and `1\\,234` in boxed answers;
- a currency sign before the number ($, €, £, ¥, also `\\$`), before or after a minus: -$5, $-5;
- a percent sign after it (50% -> 50, as GSM8K writes percentages as plain numbers);
- simple fractions a/b and `\\frac{a}{b}`: 3/4 -> 0.75, -1/2 -> -0.5 (b = 0 is not a number);
- up to three unit words after the number: '42 dollars', '5 km/h', '12 apples.' -> the number.
  Number words are not parsed ('forty-two' is not a number), and a tail that contains any digit
  ('5 or 6', '3 apples and 2 pears') makes the whole answer not a number.
Not accepted: scientific notation (1e3), mixed numbers (1 1/2), words before the number
('#### The answer is 42'), expressions (2+3, x = 5).

Reward-hacking rules
- Several '####' lines (or several boxes): only the last counts, so hedging with many answers
  gains nothing; a non-numeric last answer scores 0 even when an earlier one was right.
- The question echoed in the response: only the marked answer counts, never numbers in prose;
  an echoed '#### n' line from a prompt example counts only if nothing follows it.
- Giant numbers: an answer with |x| > `VerifierConfig.max_abs` (1e15, above every GSM8K and arith
  answer) scores 0 with feedback, so float rounding cannot make a huge guess "close". Non-finite
  values cannot be written in the accepted syntax ('inf', 'nan' are not numbers).
- Unicode digits (Arabic-Indic '٤٢', fullwidth '４２', ...) are not accepted: only 0-9 count,
  and the feedback says so. Python's float() would accept them; the parser never calls it on
  anything but ASCII digits, dot and minus.
- An answer inside a code block counts like any other line: a '#### 42' line between ``` fences is
  an answer; code such as `print("#### 42")` leaves '42")', which is not a number.
- An answer only in prose ("the answer is 42") has no marker and scores 0.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np

ANSWER_FORMATS = ("hash", "boxed")
_FEEDBACK_MAX_CHARS = 60

_DIGITS = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+"
_UNIT_WORD = r"[^\W\d_]+(?:[/'.\-][^\W\d_]+)*"  # letters (any script, no digits): km/h, o'clock
_NUMBER_RE = re.compile(
    # Every '\s*' follows a mandatory character, so the pattern cannot backtrack quadratically.
    r"(?:(?P<sign>[+\-])\s*)?(?:[$€£¥]\s*)?(?:(?P<sign2>[+\-])\s*)?"
    rf"(?:(?P<num>[0-9]+)\s*/\s*(?P<den>[0-9]+)|(?P<value>{_DIGITS}))"
    r"(?:\s*%)?"
    rf"(?:\s+(?P<unit>{_UNIT_WORD}(?:\s+{_UNIT_WORD}){{0,2}}))?"
    r"\.?"
)
_MATH_DELIMITERS = (("\\(", "\\)"), ("\\[", "\\]"), ("$", "$"))
_WRAPPERS = ("**", "__", "`", "*", "_")
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_TEXT_RE = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")
_LATEX_DROP_RE = re.compile(r"\\[,!;: ]|\\left|\\right|\{,\}")
_BOXED = "\\boxed{"
_BRACE_RE = re.compile(r"[{}]")


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
    """How answers are extracted and compared."""

    answer_format: str = "hash"  # "hash": text after the last '####'; "boxed": last \boxed{...}
    # No relative tolerance by default: 1e-6 would accept 1000001 for 1000000 (GSM8K has answers
    # up to 1.9e8). Integers up to max_abs are exact in float64, so abs_tol alone covers
    # decimals and fractions (1/3 vs 0.333333).
    rel_tol: float = 0.0
    abs_tol: float = 1e-6
    max_abs: float = 1e15  # larger answers are not accepted (see the module docstring)

    def __post_init__(self):
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(
                f"VerifierConfig.answer_format={self.answer_format!r}; expected one of "
                f"{ANSWER_FORMATS}"
            )
        for name in ("rel_tol", "abs_tol", "max_abs"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"VerifierConfig.{name}={getattr(self, name)!r} must be >= 0")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one response."""

    reward: float  # 1.0 or 0.0
    feedback: str  # "" when correct; a sentence the teacher can read otherwise
    extracted: str | None  # the raw extracted answer text, None when none was found


def _strip_wrappers(text: str) -> str:
    """Removes surrounding whitespace, markdown emphasis/backticks and math delimiters."""
    previous = None
    while text != previous:
        previous = text
        text = text.strip()
        for left, right in _MATH_DELIMITERS:
            wrapped = text.startswith(left) and text.endswith(right)
            if wrapped and len(text) > len(left) + len(right):
                inner = text[len(left) : -len(right)]
                # '$5$ or $6$' is two math spans; only strip '$' when no other '$' is inside.
                if left != "$" or "$" not in inner:
                    text = inner
        for mark in _WRAPPERS:
            if len(text) > 2 * len(mark) and text.startswith(mark) and text.endswith(mark):
                text = text[len(mark) : -len(mark)]
        if text.endswith(".") and not text[:-1].endswith("."):
            text = text[:-1]
        # A trailing bold marker after a period ('**42**.') or a unit ('**42** dollars').
        if text.startswith("**") and text.count("**") == 2:
            text = text.replace("**", "", 2)
    return text


def _normalise_latex(text: str) -> str:
    """Rewrites the LaTeX that appears in boxed numbers into plain text: \\frac{a}{b} -> a/b."""
    if "\\" not in text and "{" not in text:
        return text
    text = _LATEX_DROP_RE.sub(lambda m: "," if m.group(0) in ("\\,", "{,}") else "", text)
    text = _LATEX_FRAC_RE.sub(r"\1/\2", text)
    text = _LATEX_TEXT_RE.sub(r" \1", text)
    return text.replace("\\$", "$").replace("\\%", "%").replace("\\cdot", "*")


def parse_number(text: str) -> float | None:
    """Parses an answer string into a float after normalisation; None when it is not a number.

    See the module docstring for what is accepted. Never raises on str input.
    """
    text = _strip_wrappers(_normalise_latex(text.replace("\u2212", "-")))
    match = _NUMBER_RE.fullmatch(text)
    if match is None:
        return None
    if match["sign"] and match["sign2"]:
        return None
    negative = "-" in (match["sign"], match["sign2"])
    if match["unit"] is not None and any(char.isnumeric() for char in match["unit"]):
        return None  # '4 ½' or '3 ²': numeric characters that the letter class lets through
    if match["value"] is not None:
        value = float(match["value"].replace(",", ""))
    else:
        # float, not int: int() refuses digit strings longer than 4300 characters.
        denominator = float(match["den"])
        if denominator == 0:
            return None
        value = float(match["num"]) / denominator
    return -value if negative else value


def _closing_braces(text: str, start: int) -> dict[int, int]:
    """{position of a '{' at or after start: position of its matching '}'} (unmatched: absent)."""
    closing, open_positions = {}, []
    for match in _BRACE_RE.finditer(text, start):
        if match.group() == "{":
            open_positions.append(match.start())
        elif open_positions:
            closing[open_positions.pop()] = match.start()
    return closing


def _last_boxed(response: str) -> str | None:
    """The content of the last \\boxed{...} with balanced braces; None when there is none.

    An unclosed box falls back to an earlier, closed one. One pass over the braces, so a response
    of many unclosed boxes costs linear time (a rescan per box was quadratic: 100 s at 140k chars).
    """
    begins = [match.end() for match in re.finditer(re.escape(_BOXED), response)]
    if not begins:
        return None
    closing = _closing_braces(response, begins[0] - 1)
    for begin in reversed(begins):
        end = closing.get(begin - 1)
        if end is not None:
            return response[begin:end]
    return None


def extract_answer(response: str, answer_format: str = "hash") -> str | None:
    """The raw final-answer text of a response (stripped); None when no answer marker is found."""
    if answer_format == "hash":
        start = response.rfind("####")
        if start == -1:
            return None
        end = response.find("\n", start)
        return response[start + 4 : end if end != -1 else None].strip()
    if answer_format == "boxed":
        content = _last_boxed(response)
        return None if content is None else content.strip()
    raise ValueError(f"answer_format={answer_format!r}; expected one of {ANSWER_FORMATS}")


def _shorten(text: str) -> str:
    return text if len(text) <= _FEEDBACK_MAX_CHARS else text[: _FEEDBACK_MAX_CHARS - 3] + "..."


def _has_non_ascii_digit(text: str) -> bool:
    return any(char.isdigit() and not char.isascii() for char in text)


def _parse_gold(gold_answer: str) -> float:
    gold = parse_number(gold_answer)
    if gold is None:
        raise ValueError(f"gold answer {gold_answer!r} is not a number")
    return gold


def _judge(response: str, gold: float, config: VerifierConfig) -> Verdict:
    extracted = extract_answer(response, config.answer_format)
    if extracted is None:
        missing = (
            "no line of the form '#### <number>' was found"
            if config.answer_format == "hash"
            else "no final answer of the form \\boxed{<number>} was found"
        )
        return Verdict(0.0, missing, None)
    if not extracted:
        return Verdict(0.0, "the final answer is empty", extracted)
    value = parse_number(extracted)
    shown = _shorten(extracted)
    if value is None:
        hint = " (write it with the digits 0-9)" if _has_non_ascii_digit(extracted) else ""
        return Verdict(0.0, f"the final answer '{shown}' is not a number{hint}", extracted)
    if not abs(value) <= config.max_abs:  # also catches inf and nan (from huge digit strings)
        return Verdict(0.0, f"the final answer {shown} is too large to be accepted", extracted)
    if math.isclose(value, gold, rel_tol=config.rel_tol, abs_tol=config.abs_tol):
        return Verdict(1.0, "", extracted)
    return Verdict(0.0, f"the final answer {shown} is not correct", extracted)


def verify(response: str, gold_answer: str, config: VerifierConfig = VerifierConfig()) -> Verdict:
    """Verifies one response against a gold number string (e.g. "1,234" or "18").

    Raises ValueError when the gold answer itself is not a number.
    """
    return _judge(response, _parse_gold(gold_answer), config)


def verify_batch(
    responses: Sequence[str],
    gold_answers: Sequence[str],
    config: VerifierConfig = VerifierConfig(),
) -> tuple[np.ndarray, list[str]]:
    """Verifies N responses against N gold answers.

    Returns rewards: float32 [N] (1.0 or 0.0) and the N feedback strings ("" where correct).
    """
    if len(responses) != len(gold_answers):
        raise ValueError(
            f"verify_batch got {len(responses)} responses but {len(gold_answers)} gold answers"
        )
    golds: dict[str, float] = {}  # the J rollouts of a prompt share one gold
    rewards = np.zeros(len(responses), dtype=np.float32)
    feedback = []
    for index, (response, gold_answer) in enumerate(zip(responses, gold_answers, strict=True)):
        if gold_answer not in golds:
            try:
                golds[gold_answer] = _parse_gold(gold_answer)
            except ValueError as err:
                raise ValueError(f"verify_batch: item {index}: {err}") from None
        verdict = _judge(response, golds[gold_answer], config)
        rewards[index] = verdict.reward
        feedback.append(verdict.feedback)
    return rewards, feedback
