"""The tiny world's warm-start demonstrations match what the train loop will ask and allow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.tiny import CONFIG
from pmd_jax.data import pipeline
from pmd_jax.memory.behaviours import RESPONSE_PRIMES, attempt_note, insight_note
from pmd_jax.model.scratch import scratch_model
from pmd_jax.warm_start import demonstrations

NOTE_LABELS = ("Strategy: ", "Mistake to avoid: ", "A correct solution: ", "A wrong attempt: ")


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_world")
    data = pipeline.DataConfig(
        task=CONFIG.data.task, arith=CONFIG.data.arith, data_dir=str(root / "tfds")
    )
    source = pipeline.load_split(data, "train")
    problems = [source[i] for i in range(len(source))]
    loaded = scratch_model(CONFIG.model, problems, root / "tokenizer", CONFIG.seed)
    examples = demonstrations(problems, CONFIG, loaded.tokenizer, np.random.default_rng(0))
    return problems, loaded.tokenizer, examples


def test_every_demonstration_fits_the_budget_the_loop_generates_with(tiny_world):
    """A demonstration longer than its sampler's max_new_tokens teaches an output the loop always
    cuts off: reflections cut before their closing brackets never parse."""
    problems, _, examples = tiny_world
    n = len(problems)
    parts = {
        "rollout.max_new_tokens": (examples[:n], CONFIG.rollout.max_new_tokens),
        "reflect.max_new_tokens": (examples[n : 2 * n], CONFIG.reflect.max_new_tokens),
        "behaviours.max_new_tokens": (examples[2 * n :], CONFIG.behaviours.max_new_tokens),
    }
    assert len(examples) == 3 * n
    for name, (part, budget) in parts.items():
        longest = max(len(target) for _, target in part)  # target ids end with eos
        assert longest <= budget, f"a demonstration of {longest} tokens > {name}={budget}"


def test_cold_start_demonstrations_show_notes_as_the_evolver_writes_them(tiny_world):
    _, tokenizer, examples = tiny_world
    behaviour_examples = examples[2 * len(tiny_world[0]) :]
    labels = set()
    for prompt, target in behaviour_examples:
        text = tokenizer.decode(prompt, skip_special=False)
        notes = [line[2:] for line in text.splitlines() if line.startswith("- ")]
        assert notes, text
        for note in notes:
            label = next((label for label in NOTE_LABELS if note.startswith(label)), None)
            assert label is not None, note
            labels.add(label)
        listed = json.loads(RESPONSE_PRIMES["cold_start"] + tokenizer.decode(target))
        assert all(set(item) == {"name", "instruction"} for item in listed)
    assert labels == set(NOTE_LABELS)  # both note sources of `problem_notes` are demonstrated


def test_note_lines_are_the_ones_problem_notes_writes():
    assert insight_note(False, "Track it.", "Add the gains.", 200) == (
        "Strategy: Track it. Add the gains."
    )
    assert insight_note(True, "Skip none", "Every   event\ncounts.", 200) == (
        "Mistake to avoid: Skip none. Every event counts."
    )
    assert attempt_note("4 + 5 = 9\n#### 9", None, 200) == "A correct solution: 4 + 5 = 9 #### 9"
    assert attempt_note("#### 8", "the final answer 8 is not correct", 200) == (
        "A wrong attempt: #### 8 Feedback: the final answer 8 is not correct"
    )
    assert attempt_note("#### 8", "", 200) == "A wrong attempt: #### 8"
    assert attempt_note("a b c d e f", None, 5) == "A correct solution: a b c..."
