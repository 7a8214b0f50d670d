"""The generated arithmetic curriculum as a TFDS builder (array_record), one config per curriculum.

Every `ArithConfig` field goes into the builder config, and the config name carries a digest of
all of them, so two curricula never share a directory:
  <data_dir>/pmd_arith/<config name>/<version>/.
Records follow `schema.problem_features()`; `id` is the index in the generated split and
`num_steps` is the generator's step count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

import tensorflow_datasets as tfds

from pmd_jax.data import schema
from pmd_jax.data.arith import ArithConfig, generate_split

SPLITS = ("train", "test")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9]+")


def config_fields(config: ArithConfig) -> dict[str, Any]:
    """ArithConfig as JSON-able values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_name(config: ArithConfig) -> str:
    """A directory-safe config name: the main fields, readable, plus a digest of all fields.

    e.g. "steps4_op20_n2000-200_seed0_3f2a9c1b07"
    """
    fields = config_fields(config)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    readable = (
        f"steps{config.max_steps}_op{config.max_operand}"
        f"_n{config.train_size}-{config.test_size}_seed{config.seed}"
    )
    return f"{_UNSAFE_NAME_CHARS.sub('-', readable)}_{digest}"


@dataclasses.dataclass(eq=False)
class ArithBuilderConfig(tfds.core.BuilderConfig):
    """A tfds BuilderConfig holding one curriculum."""

    arith: ArithConfig = ArithConfig()


def builder_config(config: ArithConfig) -> ArithBuilderConfig:
    """The builder config (name, description) of one curriculum."""
    return ArithBuilderConfig(
        name=config_name(config),
        description=json.dumps(config_fields(config), sort_keys=True),
        arith=config,
    )


def problem_record(index: int, problem: Any) -> dict[str, Any]:
    """An ArithProblem at position `index` of its split -> a schema record."""
    return {
        "id": index,
        "question": problem.question,
        "solution": problem.solution,
        "answer": problem.answer,
        "family": problem.family,
        "num_steps": int(problem.num_steps),
    }


class PmdArith(tfds.core.GeneratorBasedBuilder):
    """Generated multi-step arithmetic word problems (pmd_jax.data.arith)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [builder_config(ArithConfig())]

    def __init__(self, *, arith: ArithConfig | None = None, **kwargs: Any):
        """arith: the curriculum (shortcut for config=builder_config(arith))."""
        if arith is not None:
            if kwargs.get("config") is not None:
                raise ValueError("give either arith= or config=, not both")
            default = self.BUILDER_CONFIGS[0]
            kwargs["config"] = default if arith == default.arith else builder_config(arith)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return schema.problem_info(
            self, description="Generated arithmetic word problems, graded by number of steps."
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # generated, nothing to download
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        problems = generate_split(self.builder_config.arith, split)
        if not problems:
            raise ValueError(f"arith {split} split is empty for {self.builder_config.arith}")
        for index, problem in enumerate(problems):
            yield index, problem_record(index, problem)
