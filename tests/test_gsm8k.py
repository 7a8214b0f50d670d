"""GSM8K TFDS builder: offline build, stable ids, record fields, and clear errors on bad input."""

import json
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmd_jax.data import gsm8k, pipeline

SPLIT_SIZES = {"train": 7473, "test": 1319}


def _config(data_dir, gsm8k_dir, **overrides) -> pipeline.DataConfig:
    return pipeline.DataConfig(
        task="gsm8k", data_dir=str(data_dir), gsm8k_dir=str(gsm8k_dir), **overrides
    )


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def gsm8k_config(gsm8k_dir, tmp_path_factory) -> pipeline.DataConfig:
    """GSM8K prepared once per test session in a temporary data_dir."""
    config = _config(tmp_path_factory.mktemp("tfds_a"), gsm8k_dir)
    pipeline.prepare(config)
    return config


def _write_split_dir(root: pathlib.Path, train_lines: list[str], test_lines: list[str]):
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text("".join(line + "\n" for line in train_lines))
    (root / "test.jsonl").write_text("".join(line + "\n" for line in test_lines))
    return root


GOOD_LINE = json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"})


def test_offline_build_has_the_official_split_sizes(gsm8k_config):
    for split, size in SPLIT_SIZES.items():
        assert len(pipeline.load_split(gsm8k_config, split)) == size


def _questions_by_id(config: pipeline.DataConfig, split: str) -> dict[int, str]:
    # The raw tfds source read in one call: about 2x faster than record-by-record.
    source = pipeline.prepare(config).as_data_source(split)
    return {
        int(record["id"]): record["question"].decode()
        for record in source.__getitems__(range(len(source)))
    }


def test_ids_are_jsonl_line_numbers_and_stable_across_data_dirs(gsm8k_config, gsm8k_dir, tmp_path):
    other_config = _config(tmp_path / "tfds_b", gsm8k_dir)
    for split in SPLIT_SIZES:
        rows = _read_jsonl(gsm8k_dir / f"{split}.jsonl")
        first = _questions_by_id(gsm8k_config, split)
        assert first == {line: row["question"] for line, row in enumerate(rows)}
        assert _questions_by_id(other_config, split) == first


def test_first_train_record_has_every_field(gsm8k_config):
    record = pipeline.load_split(gsm8k_config, "train")[0]
    assert record == {
        "id": 0,
        "question": (
            "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
            "clips in May. How many clips did Natalia sell altogether in April and May?"
        ),
        "solution": (
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
            "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
        ),
        "answer": "72",
        "family": "gsm8k",
        "num_steps": 2,
    }


def test_every_gold_answer_is_accepted_by_the_verifier(gsm8k_config):
    from pmd_jax.verify import verify

    records = pipeline.load_split(gsm8k_config, "test")
    for index in range(len(records)):
        answer = records[index]["answer"]
        assert "," not in answer
        assert verify(f"#### {answer}", answer).reward == 1.0, records[index]


def test_urls_are_those_of_the_tfds_gsm8k_module():
    from tensorflow_datasets.text.gsm8k import gsm8k as tfds_gsm8k

    assert gsm8k.URLS == {split: tfds_gsm8k._URLS[split] for split in gsm8k.SPLITS}


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_final_answer_removes_thousands_commas(number):
    assert gsm8k.final_answer(f"Some work.\n#### {number:,}") == str(number)


def test_num_steps_counts_annotations_else_reasoning_lines():
    assert gsm8k.count_steps("a <<1+1=2>>2\nb <<2*3=6>>6 and <<6-1=5>>5\n#### 5") == 3
    assert gsm8k.count_steps("First line.\n\nSecond line.\nThird.\n#### 7") == 3


def test_malformed_line_error_names_file_and_line(tmp_path):
    local = _write_split_dir(tmp_path / "jsonl", [GOOD_LINE, GOOD_LINE, "{not json"], [GOOD_LINE])
    with pytest.raises(ValueError, match=r"train\.jsonl, line 3: malformed JSON"):
        pipeline.prepare(_config(tmp_path / "tfds", local))


@pytest.mark.parametrize("missing", ["question", "answer"])
def test_missing_field_error_names_field_file_and_line(tmp_path, missing):
    row = json.loads(GOOD_LINE)
    del row[missing]
    local = _write_split_dir(tmp_path / "jsonl", [GOOD_LINE], [GOOD_LINE, json.dumps(row)])
    with pytest.raises(ValueError, match=rf"test\.jsonl, line 2: field '{missing}' is missing"):
        pipeline.prepare(_config(tmp_path / "tfds", local))


@pytest.mark.parametrize(
    "line, problem",
    [
        ('["question", "answer"]', "expected a JSON object, got list"),
        ('{"question": 7, "answer": "#### 7"}', "field 'question' is not a string"),
        ('{"question": "q?", "answer": null}', "field 'answer' is not a string"),
        ('{"question": "q?", "answer": "#### "}', "field 'answer': solution has an empty answer"),
        ('{"question": "q?"', "malformed JSON"),
    ],
)
def test_bad_line_error_names_file_line_and_problem(tmp_path, line, problem):
    path = tmp_path / "train.jsonl"
    with pytest.raises(ValueError) as caught:
        gsm8k.parse_line(line, path, 41)
    assert str(caught.value).startswith(f"{path}, line 42: {problem}")


def test_solution_without_final_answer_is_an_error(tmp_path):
    row = json.dumps({"question": "q?", "answer": "no marker here"})
    with pytest.raises(ValueError, match=r"line 1: field 'answer': .*'#### <number>'"):
        gsm8k.parse_line(row, tmp_path / "train.jsonl", 0)


def test_empty_split_is_an_error(tmp_path):
    local = _write_split_dir(tmp_path / "jsonl", [GOOD_LINE], [])
    with pytest.raises(ValueError, match=r"test\.jsonl: empty split"):
        pipeline.prepare(_config(tmp_path / "tfds", local))


def test_missing_directory_error_names_it_and_the_env_var(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*PMD_GSM8K_DIR"):
        pipeline.prepare(_config(tmp_path / "tfds", missing))


def test_env_var_selects_local_mode(tmp_path, monkeypatch):
    local = _write_split_dir(tmp_path / "jsonl", [GOOD_LINE, GOOD_LINE], [GOOD_LINE])
    monkeypatch.setenv(gsm8k.ENV_VAR, str(local))
    config = pipeline.DataConfig(task="gsm8k", data_dir=str(tmp_path / "tfds"))
    records = pipeline.load_split(config, "train")
    assert [records[i]["id"] for i in range(len(records))] == [0, 1]
    assert records[1]["answer"] == "5" and records[1]["num_steps"] == 1


def test_offline_download_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.delenv(gsm8k.ENV_VAR, raising=False)
    monkeypatch.setattr(gsm8k, "network_reachable", lambda *args, **kwargs: False)
    config = pipeline.DataConfig(task="gsm8k", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(ConnectionError, match="PMD_GSM8K_DIR"):
        pipeline.prepare(config)
