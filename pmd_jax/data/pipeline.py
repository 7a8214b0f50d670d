"""One data path for every task: prepared TFDS split -> grain shuffle / repeat / batch -> iterator.

    config = DataConfig(task="gsm8k", batch_size=8)
    iterator = make_iterator(config, "train")
    batch = next(iterator)        # {"id": int64 [B], "question": object [B] of str, ...}
    state = get_state(iterator)   # {"next_index": int}, JSON-able: store it in the checkpoint
    set_state(iterator, state)    # resume: the next batches are the ones that followed the save

The shuffle is a grain index permutation (seeded, reseeded each epoch), so the order depends only
on (seed, split size, subset) and an iterator state is a single batch counter.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import Any

import grain
import tensorflow_datasets as tfds

from pmd_jax.data import schema
from pmd_jax.data.arith import ArithConfig
from pmd_jax.data.arith_tfds import PmdArith
from pmd_jax.data.gsm8k import PmdGsm8k

TASKS = ("arith", "gsm8k")
SPLITS = ("train", "test")
TFDS_DIR_ENV_VAR = "PMD_TFDS_DIR"
# Records are tiny and the train step dominates: one reader thread, a few batches ahead.
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which problems, in which order, in batches of how many prompts."""

    task: str = "arith"  # "arith" | "gsm8k"
    data_dir: str | None = None  # TFDS data_dir; else $PMD_TFDS_DIR, else ~/tensorflow_datasets
    gsm8k_dir: str | None = None  # local jsonl dir for offline GSM8K; else $PMD_GSM8K_DIR
    arith: ArithConfig = ArithConfig()
    batch_size: int = 8  # prompts per batch (B)
    seed: int = 0
    num_epochs: int | None = None  # None = repeat forever
    shuffle: bool = True
    subset: int | None = None  # first n examples (by id) only, for evals and smoke runs
    drop_remainder: bool = False  # drop the last short batch of a finite pass

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"DataConfig.task={self.task!r}; expected one of {TASKS}")
        if self.batch_size < 1:
            raise ValueError(f"DataConfig.batch_size={self.batch_size}; must be >= 1")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"DataConfig.num_epochs={self.num_epochs}; must be >= 1 or None")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"DataConfig.subset={self.subset}; must be >= 1 or None")


def resolve_data_dir(config: DataConfig) -> str | None:
    """The TFDS data_dir: config, else $PMD_TFDS_DIR, else None (tfds's default)."""
    chosen = config.data_dir or os.environ.get(TFDS_DIR_ENV_VAR) or None
    return None if chosen is None else str(pathlib.Path(chosen).expanduser())


def make_builder(config: DataConfig) -> tfds.core.DatasetBuilder:
    """The TFDS builder of the configured task (not yet prepared)."""
    data_dir = resolve_data_dir(config)
    if config.task == "gsm8k":
        return PmdGsm8k(data_dir=data_dir, local_dir=config.gsm8k_dir)
    return PmdArith(data_dir=data_dir, arith=config.arith)


def prepare(config: DataConfig) -> tfds.core.DatasetBuilder:
    """Build the task's dataset into data_dir if it is not there yet; returns the builder."""
    builder = make_builder(config)
    builder.download_and_prepare(file_format="array_record")
    return builder


def _checked_record(size: int, index: int, record: dict[str, Any]) -> dict[str, Any]:
    decoded = schema.decode_record(record)
    # grain indexes past the end wrap around (repeat), hence the modulo. The builders keep
    # generation order; a mismatch means a dataset built some other way.
    if decoded["id"] != index % size:
        raise ValueError(
            f"record at position {index % size} has id {decoded['id']}; expected ids 0..{size - 1}"
        )
    return decoded


def load_split(config: DataConfig, split: str) -> grain.MapDataset:
    """Random-access records of one split in id order, as dicts of str/int; prepares if needed.

    len() is the split size (or config.subset); dataset[i] is the record with id i.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    source = prepare(config).as_data_source(split)
    if len(source) == 0:
        raise ValueError(f"{config.task} split {split!r} in {resolve_data_dir(config)} is empty")
    checked = functools.partial(_checked_record, len(source))
    dataset = grain.MapDataset.source(source).map_with_index(checked)
    if config.subset is not None:
        dataset = dataset[: config.subset]
    return dataset


def batch_dataset(records: grain.MapDataset, config: DataConfig) -> grain.MapDataset:
    """Records -> shuffled (per epoch), repeated batches of config.batch_size (dicts of [B])."""
    if config.shuffle:
        records = records.shuffle(seed=config.seed)
    return records.repeat(config.num_epochs).batch(
        config.batch_size, drop_remainder=config.drop_remainder, batch_fn=schema.collate
    )


def make_iterator(config: DataConfig, split: str) -> grain.DatasetIterator:
    """A checkpointable iterator over batches of one split (see the module docstring)."""
    batches = batch_dataset(load_split(config, split), config)
    return batches.to_iter_dataset(_READ_OPTIONS).__iter__()


def get_state(iterator: grain.DatasetIterator) -> dict[str, Any]:
    """The iterator's position as a small JSON-able dict (plain ints) for a checkpoint."""
    return {key: _plain(value) for key, value in iterator.get_state().items()}


def set_state(iterator: grain.DatasetIterator, state: dict[str, Any]) -> None:
    """Move the iterator to a position saved by get_state (same config and split)."""
    iterator.set_state({key: _plain(value) for key, value in state.items()})


def _plain(value: Any) -> Any:
    # Orbax may hand back numpy scalars; grain and JSON want Python ints.
    return value.item() if hasattr(value, "item") else value
