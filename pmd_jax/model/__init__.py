"""The transformer, its config, and weight import/export (HF safetensors, GGUF, named models)."""

from pmd_jax.model.config import ModelConfig
from pmd_jax.model.gguf import load_gguf
from pmd_jax.model.hf import export_hf, load_hf
from pmd_jax.model.registry import LoadedModel, load
from pmd_jax.model.transformer import Transformer, forward, init_params

__all__ = [
    "LoadedModel",
    "ModelConfig",
    "Transformer",
    "export_hf",
    "forward",
    "init_params",
    "load",
    "load_gguf",
    "load_hf",
]
