"""Teacher context (METHOD.md section 5): per rollout, the self-teacher's chat prompt as token ids.

Host-side: plain Python data in (decoded questions, responses, feedback, `MemoryView`s), a
left-padded id batch out. The loss code appends the student's response ids to each row and reads
teacher log-probs there. Rows are prompt-major (row b*J + j is rollout j of problem b), like the
sampler.

The prompt is the student's chat (same system prompt) with one user message built from blocks,
in this order, each omitted when empty:
  problem; strategies; lessons; behaviours ("1. name: instruction"); one correct solution;
  this rollout's verifier feedback (only when no solution is shown); the closing instruction.
The solution is the first success of the group (reward > success_reward) other than the rollout
itself, else (ours) the newest stored success of the problem; a candidate whose text equals the
rollout's own response is skipped, so a rollout is never shown itself as the answer.

Blocks shown (`build_teacher_prompts(blocks=...)`: which optional blocks may appear besides
problem and closing). A run's are its RunPlan's `teacher_blocks` (pmd_jax/run_plan.py: SDPO's
preset, or PMD's every block less the levels its granularity leaves out). Named presets
(`MODE_BLOCKS`; our reading of METHOD section 5, which lists `behavior` as "problem +
behaviours" and `full` as "everything"):
  sdpo:             sibling solution, feedback (no memory at all, not even a stored success)
  behavior:         behaviours
  insight_behavior: strategies, lessons, behaviours
  full:             strategies, lessons, behaviours, sibling or stored solution, feedback
So the gap between insight_behavior and full is exactly the experience level (solutions and
feedback), matching the paper's granularity ablation.

Budget (ours): the whole prompt (template included) must fit `max_prompt_tokens`. While it does
not, the next block of `drop_order` that is shown is dropped whole. The default drops the
stored success (extra experience) first, then behaviours, lessons, strategies, the sibling
solution, and the feedback last (the cheapest and most rollout-specific signal). Dropping the
solution makes the feedback eligible again (feedback is shown whenever no solution is). The
problem and the closing instruction are never dropped: when they alone exceed the budget, a
ValueError names the rollout.

Layout (`TeacherConfig.layout`):
  user (METHOD section 5, the default): the student's system prompt, then one user message:
      problem, blocks, closing instruction.
  system (ours): the blocks go into the system turn, after the student's own system prompt and
      a one-line heading (SYSTEM_HELP_HEADING, which also carries the closing instruction), and
      the user turn is the question exactly as the student sees it. The teacher's prompt then
      ends exactly like the student's, and a teacher shown no block *is* the student (same ids).
      Measured on SmolLM2-135M (docs/RESULTS.md "Why self-distillation collapsed"): with `user`, the
      teacher starts its answers "The answer is N." and puts less probability on the student's
      '#### <n>' line than the student does; distilling that collapsed the policy. `system`
      keeps the teacher on the student's format.

Memory text is inserted as plain text: `format_chat` encodes message content with
allow_special=False, so a "<|im_start|>" inside a lesson is spelled as characters and can never
open a new role.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from pmd_jax.memory.state import STRATEGY, MemoryConfig, MemoryState, read_problem
from pmd_jax.sampling import left_pad
from pmd_jax.tokenizer import Tokenizer, format_chat

MODES = ("sdpo", "behavior", "insight_behavior", "full")  # the presets of MODE_BLOCKS
LAYOUTS = ("user", "system")
DROPPABLE_BLOCKS = (
    "stored_solution",
    "behaviours",
    "lessons",
    "strategies",
    "sibling_solution",
    "feedback",
)
# Optional blocks per preset; problem and closing are always shown.
MODE_BLOCKS = {
    "sdpo": ("sibling_solution", "feedback"),
    "behavior": ("behaviours",),
    "insight_behavior": ("strategies", "lessons", "behaviours"),
    "full": DROPPABLE_BLOCKS,
}
_MEMORY_BLOCKS = ("strategies", "lessons", "behaviours")
_SOLUTIONS = ("sibling_solution", "stored_solution")
# Rendering order of the user message (METHOD section 5).
_ORDER = ("problem", "strategies", "lessons", "behaviours", *_SOLUTIONS, "feedback", "closing")

HEADERS = {
    "problem": "Problem:\n",
    "strategies": "Strategies that worked on this problem:\n",
    "lessons": "Lessons from failed attempts at this problem:\n",
    "behaviours": "Reusable behaviours for problems like this one:\n",
    "sibling_solution": "A correct solution:\n",
    "stored_solution": "A correct solution:\n",
    "feedback": "Feedback on your previous attempt:\n",
}
CLOSING = "Using what helps above, solve the original problem correctly."
# layout="system": the heading of the privileged blocks in the system turn.
SYSTEM_HELP_HEADING = (
    "Privileged notes for the next problem. Use what helps to solve it correctly; "
    "do not mention these notes."
)


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """What the teacher sees and how long its prompt may be. Hashable."""

    layout: str = "user"  # one of LAYOUTS: blocks in the user message (METHOD) or system turn
    max_prompt_tokens: int = 1024  # whole teacher prompt, template included, response excluded
    num_behaviours: int = 3  # retrieved behaviours shown (the first of the view's, best first)
    max_strategies: int = 5  # newest first
    max_lessons: int = 5
    show_feedback: bool = True
    # True (PMD, ours): any memory block shown gives the sample teacher signal. False: SDPO rule,
    # only a shown solution or feedback does.
    signal_from_memory: bool = True
    drop_order: tuple[str, ...] = DROPPABLE_BLOCKS  # first dropped first
    bucket: int = 64  # padded prompt length is a multiple of this

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"TeacherConfig.layout={self.layout!r}; expected one of {LAYOUTS}")
        if sorted(self.drop_order) != sorted(DROPPABLE_BLOCKS):
            raise ValueError(
                f"TeacherConfig.drop_order={self.drop_order!r} must order exactly the blocks "
                f"{DROPPABLE_BLOCKS} (problem and closing are never dropped)"
            )
        for name in ("max_prompt_tokens", "bucket"):
            if getattr(self, name) < 1:
                raise ValueError(f"TeacherConfig.{name}={getattr(self, name)} must be >= 1")
        for name in ("num_behaviours", "max_strategies", "max_lessons"):
            if getattr(self, name) < 0:
                raise ValueError(f"TeacherConfig.{name}={getattr(self, name)} must be >= 0")


@dataclasses.dataclass(frozen=True)
class MemoryView:
    """The decoded memory one teacher prompt may use."""

    strategies: tuple[tuple[str, str], ...] = ()  # (title, content), newest first
    lessons: tuple[tuple[str, str], ...] = ()  # (title, content), newest first
    behaviours: tuple[tuple[str, str], ...] = ()  # (name, instruction), best retrieval first
    stored_successes: tuple[str, ...] = ()  # successful responses, newest first


@dataclasses.dataclass(frozen=True)
class TeacherBatch:
    """Teacher prompts of N rollouts, left-padded to T (a multiple of the bucket)."""

    prompt_tokens: np.ndarray  # [N, T] int32, pad_id on the left
    prompt_mask: np.ndarray  # [N, T] bool, True on prompt tokens
    has_signal: np.ndarray  # [N] bool: the loss mask of METHOD section 6
    blocks_dropped: np.ndarray  # [N] int32 blocks removed to fit the budget
    prompt_lengths: np.ndarray  # [N] int32 unpadded lengths
    texts: list[str]  # [N] the teacher-only text of each prompt (for debugging and reports)
    shown_blocks: list[tuple[str, ...]]  # [N] names of the blocks in each prompt, in order


def render_items(items: Sequence[tuple[str, str]], numbered: bool = True) -> str:
    """(title, content) pairs as lines "1. title: content" (or "- title: content"): the one
    renderer of memory items in prompts (the teacher's blocks, the evolver's library, the
    memory-as-prompt eval). A pair with one side empty shows the other; an empty pair is skipped
    and the numbering stays consecutive."""
    lines = []
    for title, content in items:
        title, content = title.strip(), content.strip()
        text = f"{title}: {content}" if title and content else title or content
        if text:
            lines.append(f"{len(lines) + 1}. {text}" if numbered else f"- {text}")
    return "\n".join(lines)


def _solution(row: int, group_size: int, responses: Sequence[str], successes: np.ndarray) -> str:
    """The first successful sibling of `row` whose text differs from the row's own response."""
    start = row - row % group_size
    own = responses[row].strip()
    for sibling in range(start, start + group_size):
        text = responses[sibling].strip()
        if sibling != row and successes[sibling] and text and text != own:
            return text
    return ""


def _candidate_blocks(
    config: TeacherConfig,
    allowed: Sequence[str],
    view: MemoryView,
    sibling: str,
    own: str,
    feedback: str,
) -> dict[str, str]:
    """Every non-empty optional block of `allowed` for one rollout: name -> text."""
    stored = next((s.strip() for s in view.stored_successes if s.strip() not in ("", own)), "")
    texts = {
        "strategies": render_items(view.strategies[: config.max_strategies], numbered=False),
        "lessons": render_items(view.lessons[: config.max_lessons], numbered=False),
        "behaviours": render_items(view.behaviours[: config.num_behaviours], numbered=True),
        "sibling_solution": sibling,
        "stored_solution": "" if sibling else stored,
        "feedback": feedback.strip() if config.show_feedback else "",
    }
    return {name: text for name, text in texts.items() if text and name in allowed}


def _shown(candidates: dict[str, str], dropped: Sequence[str]) -> list[str]:
    """Block names shown, in prompt order; feedback only when no solution is shown."""
    names = [name for name in _ORDER if name in candidates and name not in dropped]
    if any(name in _SOLUTIONS for name in names):
        names = [name for name in names if name != "feedback"]
    return names


def user_message(question: str, blocks: dict[str, str], names: Sequence[str]) -> str:
    """The teacher's user turn: problem, the named blocks (prompt order), closing instruction."""
    parts = [HEADERS["problem"] + question.strip()]
    parts += [HEADERS[name] + blocks[name] for name in _ORDER if name in names]
    parts.append(CLOSING)
    return "\n\n".join(parts)


def teacher_messages(
    question: str,
    blocks: dict[str, str],
    names: Sequence[str],
    system_prompt: str,
    layout: str = "user",
) -> tuple[list[tuple[str, str]], str]:
    """The teacher's chat [(role, content)] and its teacher-only text, for one rollout.

    layout "user": system prompt, then `user_message` (problem, blocks, closing). layout
    "system": system prompt + heading + blocks, then the bare question; with no block shown the
    chat is the student's own.
    """
    head = [("system", system_prompt)] if system_prompt else []
    if layout == "user":
        text = user_message(question, blocks, names)
        return [*head, ("user", text)], text
    if layout != "system":
        raise ValueError(f"teacher_messages: layout={layout!r}; expected one of {LAYOUTS}")
    parts = [HEADERS[name] + blocks[name] for name in _ORDER if name in names]
    if not parts:
        return [*head, ("user", question.strip())], ""
    text = "\n\n".join([SYSTEM_HELP_HEADING, *parts])
    system = f"{system_prompt}\n\n{text}" if system_prompt else text
    return [("system", system), ("user", question.strip())], text


def _fit(
    encode, config: TeacherConfig, question: str, candidates: dict[str, str], row: int
) -> tuple[list[int], str, list[str], int]:
    """Drop whole blocks in drop_order until the prompt fits -> (ids, text, shown, dropped).

    `encode` maps (question, names) to (ids, teacher-only text)."""
    dropped: list[str] = []
    while True:
        names = _shown(candidates, dropped)
        ids, text = encode(question, tuple(names))
        if len(ids) <= config.max_prompt_tokens:
            return ids, text, names, len(dropped)
        victim = next((name for name in config.drop_order if name in names), None)
        if victim is None:
            raise ValueError(
                f"teacher prompt of rollout {row}: the problem and closing instruction alone "
                f"take {len(ids)} tokens > TeacherConfig.max_prompt_tokens="
                f"{config.max_prompt_tokens}"
            )
        dropped.append(victim)


def _per_row(values: Sequence, num_rows: int, group_size: int, what: str) -> list:
    """Values given per rollout [N] or per problem [N / J] -> per rollout [N]."""
    if len(values) == num_rows:
        return list(values)
    if len(values) * group_size == num_rows:
        return [value for value in values for _ in range(group_size)]
    raise ValueError(
        f"build_teacher_prompts: {len(values)} {what} for {num_rows} rollouts in groups of "
        f"{group_size}; expected {num_rows} (per rollout) or {num_rows // group_size} (per problem)"
    )


def build_teacher_prompts(
    tokenizer: Tokenizer,
    questions: Sequence[str],
    responses: Sequence[str],
    rewards: Sequence[float] | np.ndarray,
    feedback: Sequence[str | None],
    views: Sequence[MemoryView] | None,
    config: TeacherConfig,
    system_prompt: str,
    *,
    group_size: int,
    success_reward: float,
    blocks: Sequence[str] = DROPPABLE_BLOCKS,
    chat_format: str | None = None,
) -> TeacherBatch:
    """Teacher prompts for N = B*J rollouts (prompt-major).

    questions: [N] or [B]; responses: [N] decoded student responses; rewards: [N] (a sibling
    with reward > success_reward, the run's `MemoryConfig.success_reward`, is a correct
    solution); feedback: [N] (None or "" when there is none); views: [N] or [B] MemoryViews, or
    None when `blocks` holds no memory block (SDPO's). blocks: the optional blocks that may be
    shown (a subset of DROPPABLE_BLOCKS; default every one). system_prompt: the student's
    ("" = no system turn).
    """
    num_rows = len(responses)
    if group_size < 1 or num_rows % group_size:
        raise ValueError(
            f"build_teacher_prompts: {num_rows} responses do not form groups of {group_size}"
        )
    rewards = np.asarray(rewards, np.float32)
    if rewards.shape != (num_rows,) or len(feedback) != num_rows:
        raise ValueError(
            f"build_teacher_prompts: rewards shape {rewards.shape} and {len(feedback)} feedback "
            f"strings must both match the {num_rows} responses"
        )
    unknown = sorted(set(blocks) - set(DROPPABLE_BLOCKS))
    if unknown:
        raise ValueError(
            f"build_teacher_prompts: unknown blocks {unknown}; expected a subset of "
            f"{DROPPABLE_BLOCKS}"
        )
    reads_memory = sorted(set(blocks) & {*_MEMORY_BLOCKS, "stored_solution"})
    if views is None and reads_memory:
        raise ValueError(
            f"build_teacher_prompts: showing memory blocks {reads_memory} needs memory views"
        )
    questions = _per_row(questions, num_rows, group_size, "questions")
    if views is None:
        views = [MemoryView()] * num_rows
    views = _per_row(views, num_rows, group_size, "views")
    successes = rewards > success_reward
    cache: dict[tuple, tuple[list[int], str]] = {}

    def encode_for(candidates: dict[str, str]):
        def encode(question: str, names: tuple[str, ...]) -> tuple[list[int], str]:
            messages, text = teacher_messages(
                question, candidates, names, system_prompt, config.layout
            )
            # Rollouts of one group often share a prompt: encode each distinct chat once.
            key = tuple(messages)
            if key not in cache:
                chat = format_chat(tokenizer, messages, chat_format=chat_format)
                cache[key] = (list(chat.ids), text)
            return cache[key]

        return encode

    prompts, texts, shown, dropped = [], [], [], []
    for row in range(num_rows):
        sibling = _solution(row, group_size, responses, successes)
        candidates = _candidate_blocks(
            config, blocks, views[row], sibling, responses[row].strip(), feedback[row] or ""
        )
        ids, text, names, num_dropped = _fit(
            encode_for(candidates), config, questions[row], candidates, row
        )
        prompts.append(ids)
        texts.append(text)
        shown.append(("problem", *names, "closing"))
        dropped.append(num_dropped)
    tokens, mask = left_pad(prompts, tokenizer.pad_id, bucket=config.bucket)
    signal_blocks = set(_SOLUTIONS) | {"feedback"}
    if config.signal_from_memory:
        signal_blocks |= set(_MEMORY_BLOCKS)
    return TeacherBatch(
        prompt_tokens=tokens,
        prompt_mask=mask,
        has_signal=np.array([bool(signal_blocks.intersection(s)) for s in shown], bool),
        blocks_dropped=np.asarray(dropped, np.int32),
        prompt_lengths=np.array([len(ids) for ids in prompts], np.int32),
        texts=texts,
        shown_blocks=shown,
    )


def teacher_stats(batch: TeacherBatch) -> dict[str, float]:
    """Metrics of a batch: fraction with signal, mean blocks dropped, mean prompt tokens."""
    return {
        "teacher/has_signal": float(np.mean(batch.has_signal)),
        "teacher/blocks_dropped": float(np.mean(batch.blocks_dropped)),
        "teacher/prompt_tokens": float(np.mean(batch.prompt_lengths)),
    }


def _decode(tokenizer: Tokenizer, ids: np.ndarray, length: int) -> str:
    return tokenizer.decode(ids[: int(length)].tolist())


def memory_views(
    state: MemoryState,
    memory_config: MemoryConfig,
    tokenizer: Tokenizer,
    problem_ids: Sequence[int] | np.ndarray,
    behaviour_indices: np.ndarray | None = None,
) -> list[MemoryView]:
    """Decode the memory of rows [R] (problem_ids [R]; behaviour_indices [R, k] from
    `retrieve_behaviours`, -1 = none) -> R MemoryViews. Insights and stored successes are
    newest first (insertion step descending, then slot); behaviours keep the given order and
    skip -1 and dead entries."""
    problem_ids = np.asarray(problem_ids, np.int32).reshape(-1)
    if behaviour_indices is not None:
        behaviour_indices = np.asarray(behaviour_indices, np.int64)
        if behaviour_indices.ndim != 2 or behaviour_indices.shape[0] != len(problem_ids):
            raise ValueError(
                f"memory_views: behaviour_indices shape {behaviour_indices.shape} must be "
                f"[{len(problem_ids)}, k]"
            )
    experience, insight = read_problem(state, jnp.asarray(problem_ids))
    experience = {
        k: np.asarray(getattr(experience, k)) for k in ("tokens", "length", "occupied", "step")
    }
    insight = {
        k: np.asarray(getattr(insight, k))
        for k in ("kind", "title", "title_len", "content", "content_len", "occupied", "step")
    }
    bank = state.behaviours
    bank = {
        k: np.asarray(getattr(bank, k))
        for k in ("name", "name_len", "instruction", "instruction_len", "alive")
    }
    num_slots = bank["alive"].shape[0]
    problem_memory: dict[int, tuple] = {}
    views = []
    for row, problem_id in enumerate(problem_ids.tolist()):
        if problem_id not in problem_memory:
            problem_memory[problem_id] = _problem_memory(
                tokenizer, memory_config, experience, insight, row
            )
        strategies, lessons, successes = problem_memory[problem_id]
        indices = [] if behaviour_indices is None else behaviour_indices[row].tolist()
        behaviours = tuple(
            _behaviour(tokenizer, bank, index)
            for index in indices
            if 0 <= index < num_slots and bank["alive"][index]
        )
        views.append(MemoryView(strategies, lessons, behaviours, successes))
    return views


def _behaviour(tokenizer: Tokenizer, bank: dict[str, np.ndarray], index: int) -> tuple[str, str]:
    name = _decode(tokenizer, bank["name"][index], bank["name_len"][index])
    return name, _decode(tokenizer, bank["instruction"][index], bank["instruction_len"][index])


def _newest_first(occupied: np.ndarray, step: np.ndarray) -> list[int]:
    return sorted(np.flatnonzero(occupied).tolist(), key=lambda slot: (-int(step[slot]), slot))


def _problem_memory(tokenizer, memory_config, experience, insight, row):
    """(strategies, lessons, stored successes) of one read row, decoded, newest first."""
    strategies, lessons = [], []
    for slot in _newest_first(insight["occupied"][row], insight["step"][row]):
        item = (
            _decode(tokenizer, insight["title"][row, slot], insight["title_len"][row, slot]),
            _decode(tokenizer, insight["content"][row, slot], insight["content_len"][row, slot]),
        )
        (strategies if insight["kind"][row, slot] == STRATEGY else lessons).append(item)
    success_slots = memory_config.success_slots
    occupied = experience["occupied"][row, :success_slots]
    successes = tuple(
        _decode(tokenizer, experience["tokens"][row, slot], experience["length"][row, slot])
        for slot in _newest_first(occupied, experience["step"][row, :success_slots])
    )
    return tuple(strategies), tuple(lessons), successes
