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
math delimiters and one trailing period). An answer is a number, then an optional unit tail.
- integers and decimals in ASCII digits: 42, -7, +3, 0.5, .5, 42.0; a Unicode minus (U+2212) is a
  minus sign;
- thousands separators in groups of three, one separator kind per number: a comma (1,234 and
  1,234,567.5), a space, a no-break space (U+00A0), a thin space (U+2009) or a narrow no-break
  space (U+202F) (1 000, 12 345 678, 1 000.5). The first group has 1-3 digits and does not start
  with 0, every later group exactly three: '1,23', '1 00', '0,500', '1 0000' and mixed
  separators ('1,000 000') are not numbers (a decimal comma would be ambiguous, and so is
  '1 000,5'). LaTeX `1{,}234` and `1\\,234` (a thin space) in boxed answers;
- a currency sign before the number ($, €, £, ¥, also `\\$`), before or after a minus: -$5, $-5;
- a percent sign after it (50% -> 50, as GSM8K writes percentages as plain numbers);
- simple fractions a/b and `\\frac{a}{b}` of plain digit strings: 3/4 -> 0.75, -1/2 -> -0.5
  (b = 0 is not a number);
- a unit tail, which never changes the value (units are not converted: '50 cents' is 50):
  [head] [rate] [qualifier], at least one of them, separated by whitespace, where
  head = a listed unit (`_UNITS`: length, area, mass, volume, time, time of day, speed,
  temperature, percent and currency words, with their plurals and abbreviations, an optional
  trailing period 'lbs.'), optionally after 'square'/'sq'/'cubic'/'cu'/'fluid'/'fl' and followed
  by ² or ³ ('km²', also '^2', '^{3}') or the word 'squared'/'cubed', a degree optionally
  followed by its scale ('° C', 'degrees Fahrenheit'); or one free word of at least two letters
  (any script; internal - ' . allowed: 'apples', 't-shirts', "o'clock") that is not in
  `_STOP_WORDS` (English negations, hedges, judgements, function words, number and scale
  words; compared case-insensitively, and none of its hyphen parts may be one either);
  rate = '/' or 'per' followed by a head ('5 km/h', '$5 per hour', '3 apples per person'), or
  'a'/'an' followed by a listed unit ('60 miles an hour');
  qualifier = one of `_QUALIFIERS` ('each', 'old', 'long', 'total', 'left', ...: '18 years old').
  Only a listed unit may follow the number without a space ('8km', '90°', '5/hour'). So
  '12 apples.', '42 dollars', '3 hours', '8 km²' are numbers; '8 is wrong', '8 no', '8 or so',
  '8 maybe', '8 million', '8 dozen', '8 squared', '12 red apples' (two free words) are not.
  Why a closed grammar: the verifier gets only the gold number (GSM8K and arith golds carry no
  unit), so it cannot accept "the gold's unit"; one free word admits any count noun but cannot
  express a hedge once the hedge and negation words are stopped, and number/scale words
  ('million', 'dozen', 'half', 'squared') would change the value, so they are stopped too.
- Number words are not parsed ('forty-two' is not a number), and a tail that contains any
  digit or other numeric character ('5 or 6', '3 apples and 2 pears', '4 ½', '8²') makes the
  whole answer not a number; the one exception is ² ³ / ^2 ^3 right after a listed unit.
- Space grouping vs two numbers: '5 100' is 5100 (SI style), never 5 and never 100. Reading it as
  the number 5 with the tail '100' would be rejected by the digit rule anyway, so grouping can
  only turn a rejected answer into the grouped value, which differs from each separate number
  (the first group does not start with 0, so '0 123' is not 123). Likewise '5 100 apples' is
  5100 apples; '5 10' and '5 1000' are not numbers.
Not accepted: scientific notation (1e3), mixed numbers (1 1/2), words before the number
('#### The answer is 42'), expressions (2+3, x = 5).

Reward-hacking rules
- Several '####' lines (or several boxes): only the last counts, so hedging with many answers
  gains nothing; a non-numeric last answer scores 0 even when an earlier one was right.
- Hedges after the number ('8 or so', '8 is wrong', '8 maybe') score 0 (the unit grammar above).
- The question echoed in the response: only the marked answer counts, never numbers in prose;
  an echoed '#### n' line from a prompt example counts only if nothing follows it.
- Giant numbers: an answer with |x| > `VerifierConfig.max_abs` (1e15, above every GSM8K and arith
  answer) scores 0 with feedback, so float rounding cannot make a huge guess "close". Non-finite
  values cannot be written in the accepted syntax ('inf', 'nan' are not numbers).
- Unicode digits (Arabic-Indic '٤٢', fullwidth '４２', ...: category Nd) are not accepted: only 0-9
  count, and the feedback says so. Python's float() would accept them; the parser never calls it
  on anything but ASCII digits, dot and minus. Other numeric characters (superscripts ², vulgar
  fractions ½: category No) get no such hint.
- An answer inside a code block counts like any other line: a '#### 42' line between ``` fences is
  an answer; code such as `print("#### 42")` leaves '42")', which is not a number.
- An answer only in prose ("the answer is 42") has no marker and scores 0.

Feedback for a non-number says "(write it with the digits 0-9)" when the answer holds non-ASCII
decimal digits, and "(only a unit may follow the number)" when it starts with a number but the
tail is not a unit.
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

ANSWER_FORMATS = ("hash", "boxed")
_FEEDBACK_MAX_CHARS = 60

# Thousands separators: comma, space, no-break space, thin space, narrow no-break space. The
# backreference keeps one kind per number; the lookahead makes every later group exactly three.
_GROUP_SEPARATORS = ", \u00a0\u2009\u202f"
_DIGITS = (
    rf"(?:[1-9][0-9]{{0,2}}(?P<sep>[{_GROUP_SEPARATORS}])[0-9]{{3}}(?:(?P=sep)[0-9]{{3}})*"
    r"(?![0-9])|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+"
)
_NUMBER_RE = re.compile(
    # Every '\s*' follows a mandatory character, so the pattern cannot backtrack quadratically.
    # Anchored at the start only: the rest of the text is the unit tail (`_is_unit_tail`).
    r"(?:(?P<sign>[+\-])\s*)?(?:[$€£¥]\s*)?(?:(?P<sign2>[+\-])\s*)?"
    rf"(?:(?P<num>[0-9]+)\s*/\s*(?P<den>[0-9]+)|(?P<value>{_DIGITS}))"
    r"(?:\s*%)?"
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Listed units (lower case). Single letters only where they are unambiguous units; no 'k'
# (thousand) and no 't'.
_UNITS = _words(
    # length
    "mm cm m km in inch inches ft foot feet yd yds yard yards mi mile miles meter meters metre"
    " metres millimeter millimeters millimetre millimetres centimeter centimeters centimetre"
    " centimetres kilometer kilometers kilometre kilometres"
    # area
    " acre acres hectare hectares ha"
    # mass
    " mg g kg gram grams kilogram kilograms milligram milligrams lb lbs pound pounds oz ounce"
    " ounces ton tons tonne tonnes"
    # volume
    " ml l liter liters litre litres milliliter milliliters millilitre millilitres gal gallon"
    " gallons qt quart quarts pt pint pints cup cups tbsp tsp tablespoon tablespoons teaspoon"
    " teaspoons cc"
    # time, time of day
    " ms s sec secs second seconds min mins minute minutes h hr hrs hour hours day days wk wks"
    " week weeks mo mos month months yr yrs year years decade decades century centuries"
    " am pm a.m p.m"
    # speed, temperature, percent
    " mph kph kmh knot knots ° °c °f deg degree degrees % percent pct"
    # currency
    " dollar dollars usd cent cents ¢ euro euros eur gbp yen jpy buck bucks penny pennies"
    " rupee rupees yuan peso pesos"
)
_UNIT_MODIFIERS = _words("square sq cubic cu fluid fl")
_DEGREES = _words("° deg degree degrees")
_DEGREE_SCALES = _words("c f k celsius fahrenheit kelvin")
_POWER_WORDS = _words("squared cubed")
_POWER_SUFFIX_RE = re.compile(r"(?:[²³]|\^[23]|\^\{[23]\})$")
_RATE_WORDS = _words("/ per")
_ARTICLES = _words("a an")
_QUALIFIERS = _words(
    "each apiece old long wide tall high deep away total altogether overall left remaining"
)
# Words that cannot be the free word of a unit tail: negations and judgements, hedges and
# approximations, connectors and other function words, number and scale words (they would
# change the value: '8 million', '8 dozen', '8 squared').
_STOP_WORDS = _words(
    "no not non nope nah never none nothing nor neither wrong incorrect false untrue invalid"
    " error yes yeah true right correct ok okay sure unsure unknown uncertain unclear undefined"
    " impossible maybe perhaps probably possibly presumably likely unlikely approximately approx"
    " approximate about around roughly nearly almost circa ca ish estimate estimated guess"
    " guessed think believe hopefully exactly precisely only just either or and but plus minus"
    " more less fewer over under above below least most max at to till until than then else"
    " instead etc if unless is isn't are aren't was wasn't were be been it it's its this that"
    " which what the of on for from with without by as per a an so too also i we you he she"
    " they zero one two three four five six seven eight nine ten eleven twelve thirteen"
    " fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty"
    " seventy eighty ninety hundred hundreds thousand thousands million millions billion"
    " billions trillion trillions dozen dozens half halves third thirds fourths fifths sixths"
    " sevenths eighths ninths tenths hundredths thousandths squared cubed square cubic"
)
_TAIL_TOKEN_RE = re.compile(r"/|[^\s/]+")
_FREE_WORD_RE = re.compile(r"[^\W\d_]+(?:[-'.][^\W\d_]+)*")

_MATH_DELIMITERS = (("\\(", "\\)"), ("\\[", "\\]"), ("$", "$"))
_WRAPPERS = ("**", "__", "`", "*", "_")
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_TEXT_RE = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")
_LATEX_DROP_RE = re.compile(r"\\[,!;: ]|\\left|\\right|\{,\}")
_LATEX_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
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
    text = _LATEX_DEGREE_RE.sub("°", text)  # 90^\\circ -> 90°
    # '\\,' is a thin space: a thousands separator in '1\\,234', a space in '5\\,\\text{km}'.
    drops = {"\\,": "\u2009", "{,}": ","}
    text = _LATEX_DROP_RE.sub(lambda m: drops.get(m.group(0), ""), text)
    text = _LATEX_FRAC_RE.sub(r"\1/\2", text)
    text = _LATEX_TEXT_RE.sub(r" \1", text)
    return text.replace("\\$", "$").replace("\\%", "%").replace("\\cdot", "*")


def _unit_at(tokens: list[str], i: int) -> int | None:
    """The index after a listed unit (with modifier, power, degree scale) at tokens[i], or None."""

    def listed(token: str) -> bool:
        if len(token) > 1 and token.endswith("."):
            token = token[:-1]  # an abbreviation's period: 'lbs.', 'hrs.'
        return token in _UNITS

    def base(token: str) -> str:
        return _POWER_SUFFIX_RE.sub("", token)

    n = len(tokens)
    if i + 1 < n and tokens[i].rstrip(".") in _UNIT_MODIFIERS and listed(base(tokens[i + 1])):
        i += 1  # 'square feet', 'sq. ft', 'fl oz'
    if i >= n or not listed(base(tokens[i])):
        return None
    unit, powered = tokens[i].rstrip("."), base(tokens[i]) != tokens[i]
    i += 1
    if i < n and not powered and tokens[i] in _POWER_WORDS:
        i += 1  # 'meters squared'
    elif i < n and unit in _DEGREES and tokens[i] in _DEGREE_SCALES:
        i += 1  # '° C', 'degrees fahrenheit'
    return i


def _is_free_word(token: str) -> bool:
    """One word of at least two letters, no digits, not a stop word (nor any hyphen part)."""
    if token in _STOP_WORDS or _FREE_WORD_RE.fullmatch(token) is None:
        return False
    letters = re.sub(r"[-'.]", "", token)
    # The regex's letter class lets numeric characters through ('²', '½'); isalpha does not.
    if len(letters) < 2 or not letters.isalpha():
        return False
    return not any(part in _STOP_WORDS for part in token.split("-"))


def _head_at(tokens: list[str], i: int) -> int | None:
    """The index after a head (a listed unit or one free word) at tokens[i], or None."""
    after_unit = _unit_at(tokens, i)
    if after_unit is not None:
        return after_unit
    return i + 1 if i < len(tokens) and _is_free_word(tokens[i]) else None


def _is_unit_tail(tail: str) -> bool:
    """Whether the text after the number is a unit tail (module docstring): [head] [rate] [qual]."""
    if not tail:
        return True
    tail = unicodedata.normalize("NFC", tail.replace("\u2019", "'")).lower()
    if tail.endswith(".") and not tail.endswith(".."):
        tail = tail[:-1]
    tokens = _TAIL_TOKEN_RE.findall(tail)
    if not tokens:
        return False
    attached = not tail[0].isspace()
    if attached and tokens[0] != "/" and _unit_at(tokens, 0) is None:
        return False  # '1e3', '8th', '0x10': only a listed unit may follow without a space
    i = _head_at(tokens, 0) or 0
    if i < len(tokens) and tokens[i] in _RATE_WORDS:
        i = _head_at(tokens, i + 1) or -1
    elif i < len(tokens) and tokens[i] in _ARTICLES:
        i = _unit_at(tokens, i + 1) or -1
    if 0 <= i < len(tokens) and tokens[i] in _QUALIFIERS:
        i += 1
    return i == len(tokens)


def _parse(text: str) -> tuple[float | None, bool]:
    """(the value or None, whether the text starts with a number whose tail was rejected)."""
    text = _strip_wrappers(_normalise_latex(text.replace("\u2212", "-")))
    match = _NUMBER_RE.match(text)
    if match is None:
        return None, False
    if not _is_unit_tail(text[match.end() :]):
        return None, True
    if match["sign"] and match["sign2"]:
        return None, False
    negative = "-" in (match["sign"], match["sign2"])
    if match["value"] is not None:
        value = float(re.sub(f"[{_GROUP_SEPARATORS}]", "", match["value"]))
    else:
        # float, not int: int() refuses digit strings longer than 4300 characters.
        denominator = float(match["den"])
        if denominator == 0:
            return None, False
        value = float(match["num"]) / denominator
    return (-value if negative else value), False


def parse_number(text: str) -> float | None:
    """Parses an answer string into a float after normalisation; None when it is not a number.

    See the module docstring for what is accepted. Never raises on str input.
    """
    return _parse(text)[0]


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
    # Category Nd only: superscripts and vulgar fractions (No) are not digits one could rewrite.
    return any(not char.isascii() and unicodedata.category(char) == "Nd" for char in text)


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
    value, bad_tail = _parse(extracted)
    shown = _shorten(extracted)
    if value is None:
        hint = ""
        if _has_non_ascii_digit(extracted):
            hint = " (write it with the digits 0-9)"
        elif bad_tail:
            hint = " (only a unit may follow the number)"
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
