"""Arith TFDS builder, the grain pipeline (order, epochs, resumable state) and prompt formatting."""

import dataclasses
import json

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from pmd_jax.data import arith_tfds, pipeline, prompts
from pmd_jax.data.arith import ArithConfig, generate_split
from pmd_jax.tokenizer import CHATML_TOKENS, BPETokenizer, format_chat

# 6 families x 2 steps = 12 (family, steps) pairs; 30 train problems make batches of 4 cross
# every epoch boundary (30 % 4 == 2).
SMALL_ARITH = ArithConfig(max_steps=2, train_size=30, test_size=12)


@pytest.fixture(scope="module")
def arith_config(tmp_path_factory) -> pipeline.DataConfig:
    """A small arith curriculum prepared once per module, batches of 4."""
    config = pipeline.DataConfig(
        task="arith",
        data_dir=str(tmp_path_factory.mktemp("tfds")),
        arith=SMALL_ARITH,
        batch_size=4,
    )
    pipeline.prepare(config)
    return config


def _ids(batches) -> list[list[int]]:
    return [batch["id"].tolist() for batch in batches]


def _take(iterator, count: int) -> list[dict]:
    return [next(iterator) for _ in range(count)]


# --- arith builder ------------------------------------------------------------------------------


def test_arith_records_match_the_generator_in_id_order(arith_config):
    for split in arith_tfds.SPLITS:
        records = pipeline.load_split(arith_config, split)
        expected = [
            arith_tfds.problem_record(index, problem)
            for index, problem in enumerate(generate_split(SMALL_ARITH, split))
        ]
        assert [records[i] for i in range(len(records))] == expected
        assert len(records) == {"train": 30, "test": 12}[split]


def test_arith_build_is_deterministic_across_data_dirs(arith_config, tmp_path):
    other = dataclasses.replace(arith_config, data_dir=str(tmp_path))
    for split in arith_tfds.SPLITS:
        first, second = pipeline.load_split(arith_config, split), pipeline.load_split(other, split)
        assert [first[i] for i in range(len(first))] == [second[i] for i in range(len(second))]


def test_arith_curricula_land_in_different_directories(arith_config):
    builder = pipeline.make_builder(arith_config)
    assert builder.builder_config.arith == SMALL_ARITH
    assert f"/pmd_arith/{arith_tfds.config_name(SMALL_ARITH)}/" in str(builder.data_dir)
    names = {
        arith_tfds.config_name(dataclasses.replace(SMALL_ARITH, **change))
        for change in ({}, {"seed": 1}, {"families": ("add_sub",)}, {"max_operand": 30})
    }
    assert len(names) == 4


# --- grain pipeline -----------------------------------------------------------------------------


def test_batches_are_dicts_of_int_and_str_arrays(arith_config):
    batch = next(pipeline.make_iterator(arith_config, "train"))
    assert set(batch) == {"id", "question", "solution", "answer", "family", "num_steps"}
    assert batch["id"].dtype == np.int64 and batch["id"].shape == (4,)
    assert batch["question"].dtype == object
    assert all(isinstance(question, str) and question for question in batch["question"])


def test_same_seed_same_order_and_different_seed_different_order(arith_config):
    first = _ids(_take(pipeline.make_iterator(arith_config, "train"), 8))
    again = _ids(_take(pipeline.make_iterator(arith_config, "train"), 8))
    reseeded = dataclasses.replace(arith_config, seed=1)
    other = _ids(_take(pipeline.make_iterator(reseeded, "train"), 8))
    assert first == again
    assert first != other


def test_each_epoch_yields_every_id_once_then_stops(arith_config):
    config = dataclasses.replace(arith_config, num_epochs=3)
    batches = list(pipeline.make_iterator(config, "train"))
    assert len(batches) == 23  # ceil(3 * 30 / 4); the last batch holds the 2 left over
    ids = np.concatenate([batch["id"] for batch in batches])
    epochs = ids.reshape(3, 30)
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(30))
    assert epochs[0].tolist() != epochs[1].tolist()  # reshuffled every epoch


def test_unshuffled_subset_is_the_first_ids_in_order(arith_config):
    config = dataclasses.replace(arith_config, shuffle=False, num_epochs=1, subset=7)
    assert _ids(pipeline.make_iterator(config, "test")) == [[0, 1, 2, 3], [4, 5, 6]]
    assert len(pipeline.load_split(config, "test")) == 7


def test_drop_remainder_keeps_only_full_batches(arith_config):
    config = dataclasses.replace(arith_config, num_epochs=1, drop_remainder=True)
    assert [len(ids) for ids in _ids(pipeline.make_iterator(config, "train"))] == [4] * 7


@pytest.mark.parametrize("consumed", [3, 7, 8, 15])  # 7 and 15 sit at epoch boundaries
def test_restored_iterator_yields_the_same_next_batches(arith_config, consumed):
    original = pipeline.make_iterator(arith_config, "train")
    _take(original, consumed)
    state = json.loads(json.dumps(pipeline.get_state(original)))  # as a checkpoint stores it
    restored = pipeline.make_iterator(arith_config, "train")
    _take(restored, 1)  # a fresh iterator somewhere else: set_state must move it
    pipeline.set_state(restored, state)
    expected, actual = _take(original, 10), _take(restored, 10)
    assert _ids(actual) == _ids(expected)
    assert [b["question"].tolist() for b in actual] == [b["question"].tolist() for b in expected]


def test_state_accepts_numpy_scalars_from_a_checkpoint(arith_config):
    original = pipeline.make_iterator(arith_config, "train")
    _take(original, 5)
    state = {key: np.int64(value) for key, value in pipeline.get_state(original).items()}
    restored = pipeline.make_iterator(arith_config, "train")
    pipeline.set_state(restored, state)
    assert _ids(_take(restored, 3)) == _ids(_take(original, 3))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("task", "math", "DataConfig.task='math'"),
        ("batch_size", 0, "DataConfig.batch_size=0"),
        ("num_epochs", 0, "DataConfig.num_epochs=0"),
        ("subset", 0, "DataConfig.subset=0"),
    ],
)
def test_bad_data_config_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        pipeline.DataConfig(**{field: value})


def test_unknown_split_is_an_error(arith_config):
    with pytest.raises(ValueError, match="split='validation'"):
        pipeline.load_split(arith_config, "validation")


# --- prompts ------------------------------------------------------------------------------------


def test_default_messages_ask_for_a_hash_line():
    messages = prompts.build_messages("  What is 2 plus 3?\n", prompts.PromptConfig())
    assert messages == [
        ("system", prompts.DEFAULT_SYSTEM_PROMPTS["hash"]),
        ("user", "What is 2 plus 3?"),
    ]
    assert "#### <number>" in messages[0][1] and "boxed" not in messages[0][1]


def test_boxed_format_asks_for_a_box():
    (role, instruction), _ = prompts.build_messages("Q?", prompts.PromptConfig("boxed"))
    assert role == "system" and "\\boxed{<number>}" in instruction and "####" not in instruction


def test_custom_and_empty_system_prompts():
    custom = prompts.PromptConfig(system_prompt="Be brief.")
    assert prompts.build_messages("Q?", custom) == [("system", "Be brief."), ("user", "Q?")]
    assert prompts.build_messages("Q?", prompts.PromptConfig(system_prompt="")) == [("user", "Q?")]


def test_bad_prompt_input_is_an_error():
    with pytest.raises(ValueError, match="answer_format='latex'"):
        prompts.PromptConfig(answer_format="latex")
    with pytest.raises(ValueError, match="question is empty"):
        prompts.build_messages("   ", prompts.PromptConfig())


def _tiny_chatml_bpe() -> BPETokenizer:
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=list(CHATML_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(["What is 2 plus 3? #### 5", "Solve step by step."], trainer)
    return BPETokenizer.from_backend(backend)


def test_format_prompts_renders_the_chat_template_ending_at_the_assistant_turn():
    tokenizer = _tiny_chatml_bpe()
    config = prompts.PromptConfig()
    questions = ["What is 2 plus 3?", "What is 4 times 5?"]
    rendered = prompts.format_prompts(tokenizer, questions, config)
    assert len(rendered) == 2
    assert tokenizer.decode(rendered[0].ids, skip_special=False) == (
        f"<|im_start|>system\n{prompts.DEFAULT_SYSTEM_PROMPTS['hash']}<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n"
    )
    for prompt, question in zip(rendered, questions, strict=True):
        assert prompt.response_start == len(prompt.ids)
        assert prompt == format_chat(tokenizer, prompts.build_messages(question, config))
