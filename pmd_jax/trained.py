"""A trained run's policy: load it from a run directory (or its checkpoints) for memory-free
evaluation, or export it as an HF directory.

    python -m pmd_jax.trained export --checkpoint workdir/tiny --out /tmp/tiny_hf
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Sequence

import jax

from pmd_jax import checkpoint
from pmd_jax.config import TrainConfig, apply_overrides
from pmd_jax.model import registry
from pmd_jax.model.hf import export_hf
from pmd_jax.model.registry import LoadedModel
from pmd_jax.model.scratch import scratch_model


def run_dir_of(path: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(run workdir, checkpoints dir or step dir) from a workdir, checkpoints dir or step dir."""
    path = pathlib.Path(path).absolute()
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / "config.json").exists() and (candidate / "checkpoints").is_dir():
            inner = path if path != candidate else candidate / "checkpoints"
            return candidate, inner
    raise FileNotFoundError(
        f"{path}: not a run directory (expected config.json and checkpoints/ here or above)"
    )


def _config_of(run_dir: pathlib.Path) -> TrainConfig:
    """The run's TrainConfig, rebuilt from config.json via the same override parser."""
    saved = json.loads((run_dir / "config.json").read_text())
    model = saved["model"]
    overrides = [f"model.{key}={value}" for key, value in model.items() if value is not None]
    overrides += [f"seed={saved['seed']}", f"data.task={saved['data']['task']}"]
    return apply_overrides(TrainConfig(), overrides)


def load_trained(path: str | pathlib.Path, step: int | None = None) -> LoadedModel:
    """The student policy of a run (latest checkpoint by default) with its config and tokenizer."""
    run_dir, ckpt = run_dir_of(path)
    config = _config_of(run_dir)
    spec = config.model
    if spec.name == "scratch":
        if not (run_dir / "tokenizer" / "spm.model").exists():
            raise FileNotFoundError(
                f"{run_dir}/tokenizer/spm.model: the run's tokenizer is missing"
            )
        # The tokenizer is the run's cached one; the random params only give the tree's shapes.
        skeleton = scratch_model(spec, [{"question": "", "solution": ""}], run_dir / "tokenizer", 0)
    else:
        skeleton = registry.load(spec.name, param_dtype=spec.param_dtype, dtype=spec.dtype)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), skeleton.params)
    params = checkpoint.restore_params(ckpt, step, target=target)
    return LoadedModel(skeleton.config, params, skeleton.tokenizer)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a trained run's policy.")
    parser.add_argument("command", choices=("export",))
    parser.add_argument("--checkpoint", required=True, help="run workdir, checkpoints or step dir")
    parser.add_argument("--step", type=int, default=None)
    parser.add_argument("--out", required=True, help="HF directory to write")
    args = parser.parse_args(argv)
    model = load_trained(args.checkpoint, args.step)
    export_hf(jax.device_get(model.params), model.config, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
