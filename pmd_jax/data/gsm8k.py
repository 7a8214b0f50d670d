"""GSM8K as a TFDS builder (array_record), from the official jsonl files or a local copy.

Local mode (a directory with train.jsonl / test.jsonl) is chosen whenever a directory is given to
the builder or PMD_GSM8K_DIR is set; otherwise the official files are downloaded (the URLs of
tfds's own `gsm8k` module). Records follow `schema.problem_features()`:
  id        0-based line number in the split file (stable across builds)
  solution  the jsonl `answer` field (worked solution ending in `#### <number>`)
  answer    the number after '####', commas removed
  num_steps number of `<<...>>` calculator annotations; for the few solutions without any
            (95 train, 18 test), the number of non-empty reasoning lines before '####'.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from pmd_jax.data import schema

ENV_VAR = "PMD_GSM8K_DIR"
FAMILY = "gsm8k"
SPLITS = ("train", "test")
# Same files as tensorflow_datasets.text.gsm8k (copied: that module's constant is private).
URL_PREFIX = (
    "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/"
)
URLS = {split: f"{URL_PREFIX}{split}.jsonl" for split in SPLITS}
_DOWNLOAD_HOST = "raw.githubusercontent.com"
_ANNOTATION = re.compile(r"<<[^>]*>>")
_REQUIRED_FIELDS = ("question", "answer")


def final_answer(solution: str) -> str:
    """The number after the last '####' of a GSM8K solution, commas removed."""
    _, sep, tail = solution.rpartition("####")
    if not sep:
        raise ValueError("solution has no '#### <number>' line")
    answer = tail.strip().replace(",", "")
    if not answer:
        raise ValueError("solution has an empty answer after '####'")
    return answer


def count_steps(solution: str) -> int:
    """Calculator annotations `<<...>>` in a solution, else its non-empty reasoning lines."""
    annotations = len(_ANNOTATION.findall(solution))
    if annotations:
        return annotations
    reasoning = solution.rpartition("####")[0]
    return sum(1 for line in reasoning.splitlines() if line.strip())


def parse_line(line: str, path: pathlib.Path | str, line_index: int) -> dict[str, Any]:
    """One jsonl line -> a problem record; errors name the file and 1-based line number."""
    where = f"{path}, line {line_index + 1}"
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: malformed JSON ({err.msg})") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    for field in _REQUIRED_FIELDS:
        if not isinstance(raw.get(field), str):
            problem = "missing" if field not in raw else "not a string"
            raise ValueError(f"{where}: field {field!r} is {problem}")
    try:
        answer = final_answer(raw["answer"])
    except ValueError as err:
        raise ValueError(f"{where}: field 'answer': {err}") from err
    return {
        "id": line_index,
        "question": raw["question"],
        "solution": raw["answer"],
        "answer": answer,
        "family": FAMILY,
        "num_steps": count_steps(raw["answer"]),
    }


def read_split(path: pathlib.Path | str) -> Iterator[dict[str, Any]]:
    """Records of one jsonl split file, in line order; blank lines are skipped (ids keep gaps)."""
    count = 0
    with open(path, encoding="utf-8") as lines:
        for line_index, line in enumerate(lines):
            if line.strip():
                count += 1
                yield parse_line(line, path, line_index)
    if count == 0:
        raise ValueError(f"{path}: empty split (no examples)")


def resolve_local_dir(local_dir: str | os.PathLike | None) -> pathlib.Path | None:
    """The local jsonl directory: the given one, else $PMD_GSM8K_DIR, else None (download)."""
    chosen = local_dir if local_dir is not None else os.environ.get(ENV_VAR) or None
    return None if chosen is None else pathlib.Path(chosen).expanduser()


def local_split_paths(local_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """{split: path} of the jsonl files in a local GSM8K directory; clear errors when absent."""
    if not local_dir.is_dir():
        raise FileNotFoundError(
            f"GSM8K directory {local_dir} does not exist (set {ENV_VAR} or data.gsm8k_dir "
            "to a directory holding train.jsonl and test.jsonl)"
        )
    paths = {split: local_dir / f"{split}.jsonl" for split in SPLITS}
    for split, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"GSM8K {split} split file {path} not found ({ENV_VAR})")
    return paths


def network_reachable(host: str = _DOWNLOAD_HOST, timeout_s: float = 5.0) -> bool:
    """Whether a TCP connection to host:443 opens within the timeout."""
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


class PmdGsm8k(tfds.core.GeneratorBasedBuilder):
    """GSM8K train/test with stable ids, final answers and step counts."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: id, question, solution, answer, family, steps."}

    def __init__(self, *, local_dir: str | os.PathLike | None = None, **kwargs: Any):
        """local_dir: jsonl directory for offline builds (else $PMD_GSM8K_DIR, else download)."""
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self._local_dir = resolve_local_dir(local_dir)
        # tfds pickles builders by re-running __init__ on _original_state.
        self._original_state["local_dir"] = local_dir

    def _info(self) -> tfds.core.DatasetInfo:
        return schema.problem_info(
            self,
            description="GSM8K grade school math word problems (Cobbe et al. 2021).",
            homepage="https://github.com/openai/grade-school-math",
            license="MIT",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        if self._local_dir is not None:
            paths = local_split_paths(self._local_dir)
        else:
            # tfds's downloader retries for minutes when offline; fail fast and say what to do.
            if not network_reachable():
                raise ConnectionError(
                    f"cannot reach {_DOWNLOAD_HOST} to download GSM8K; offline, set {ENV_VAR} "
                    "(or data.gsm8k_dir) to a directory with train.jsonl and test.jsonl"
                )
            paths = dl_manager.download(URLS)
        return {split: self._generate_examples(path) for split, path in paths.items()}

    def _generate_examples(self, path: pathlib.Path | str):
        for record in read_split(path):
            yield record["id"], record
