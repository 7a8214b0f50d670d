"""The record schema shared by every task's TFDS builder, and its decoding to Python values.

One record is one problem: `id` (int64, stable index in its split), `question`, `solution` (full
worked answer), `answer` (final number as a string), `family` (problem family, e.g. "gsm8k"),
`num_steps` (int32, reasoning steps; how each task counts them is documented in its builder).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow_datasets as tfds

TEXT_FIELDS = ("question", "solution", "answer", "family")
INT_FIELDS = ("id", "num_steps")
FIELDS = INT_FIELDS + TEXT_FIELDS


def problem_features() -> tfds.features.FeaturesDict:
    """The TFDS features of one problem record."""
    return tfds.features.FeaturesDict(
        {
            "id": tfds.features.Scalar(np.int64, doc="0-based index of the problem in its split"),
            "question": tfds.features.Text(),
            "solution": tfds.features.Text(),
            "answer": tfds.features.Text(doc="final number, commas removed"),
            "family": tfds.features.Text(),
            "num_steps": tfds.features.Scalar(np.int32, doc="number of reasoning steps"),
        }
    )


def problem_info(builder: tfds.core.DatasetBuilder, description: str, **kwargs: Any):
    """DatasetInfo for a problem builder; generation order is kept so position == id."""
    # disable_shuffling keeps records in generation order, so `source[i]["id"] == i` and a
    # "first n by id" subset is a slice, without reading every record to sort.
    return tfds.core.DatasetInfo(
        builder=builder,
        description=description,
        features=problem_features(),
        disable_shuffling=True,
        **kwargs,
    )


def decode_record(record: dict[str, Any]) -> dict[str, Any]:
    """TFDS record (bytes, numpy scalars) -> plain Python values (str, int)."""
    missing = [name for name in FIELDS if name not in record]
    if missing:
        raise KeyError(f"record is missing fields {missing}; has {sorted(record)}")
    decoded: dict[str, Any] = {name: int(record[name]) for name in INT_FIELDS}
    for name in TEXT_FIELDS:
        value = record[name]
        decoded[name] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return decoded


def collate(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Stack decoded records into a batch: ints -> int64 [B], text -> object [B] of str."""
    batch: dict[str, np.ndarray] = {
        name: np.asarray([record[name] for record in records], dtype=np.int64)
        for name in INT_FIELDS
    }
    for name in TEXT_FIELDS:
        column = np.empty(len(records), dtype=object)
        column[:] = [record[name] for record in records]
        batch[name] = column
    return batch
