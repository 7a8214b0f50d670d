"""ModelConfig: the architecture of one decoder-only transformer, from HF config.json or GGUF."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import numpy as np

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
# Self-attention in training and prefill: "naive" (ours, the reference), "xla" / "cudnn" through
# jax.nn.dot_product_attention, "splash" (the TPU Pallas kernel). Decoding is model/decode.py's own.
ATTENTION_IMPLS = ("naive", "xla", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. kind: "default" | "linear" | "llama3"."""

    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and options of a llama/qwen2/qwen3-family decoder. Hashable: a static jit argument."""

    architecture: str
    vocab_size: int
    hidden_size: int  # D
    intermediate_size: int  # F (SwiGLU width)
    num_layers: int  # L
    num_heads: int  # H
    num_kv_heads: int  # K (grouped-query attention: H % K == 0)
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False  # qwen2; llama with attention_bias
    o_bias: bool = False  # llama with attention_bias
    mlp_bias: bool = False
    qk_norm: bool = False  # qwen3: RMSNorm over each head of q and k
    max_position_embeddings: int = 4096
    bos_id: int | None = None
    eos_id: int | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype
    attention_impl: str = "xla"  # one of ATTENTION_IMPLS; xla trains faster on CPU (measured)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"ModelConfig.architecture={self.architecture!r} is not supported; "
                f"expected one of {ARCHITECTURES}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"ModelConfig.attention_impl={self.attention_impl!r}: use one of {ATTENTION_IMPLS}"
            )
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(
                    f"ModelConfig.{name}={getattr(self, name)!r}: use float32 or bfloat16"
                )

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        """Parameter count (embedding counted once when tied)."""
        d, f, l = self.hidden_size, self.intermediate_size, self.num_layers
        h_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = d * h_dim * 2 + d * kv_dim * 2
        attn += (h_dim + 2 * kv_dim) * self.qkv_bias + d * self.o_bias
        attn += 2 * self.head_dim * self.qk_norm
        mlp = 3 * d * f + (2 * f + d) * self.mlp_bias
        per_layer = attn + mlp + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return l * per_layer + embed + d


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse RoPE frequencies [head_dim // 2] (float32), with the configured scaling applied."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    inv_freq = inv_freq.astype(np.float32)
    scaling = config.rope_scaling
    if scaling.kind == "default":
        return inv_freq
    if scaling.kind == "linear":
        return (inv_freq / scaling.factor).astype(np.float32)
    if scaling.kind == "llama3":
        low_wavelen = scaling.original_max_position / scaling.low_freq_factor
        high_wavelen = scaling.original_max_position / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(is_medium, smoothed, scaled).astype(np.float32)
    raise ValueError(
        f"rope_scaling kind {scaling.kind!r} is not supported (default, linear, llama3)"
    )


# ---------------------------------------------------------------------------- HF config.json

_HF_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}
_HF_REQUIRED = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)


def _rope_from_hf(hf: dict[str, Any], where: str) -> tuple[float, RopeScaling]:
    """Rope theta and scaling from transformers 4 (rope_theta, rope_scaling) or 5 (rope_parameters)."""
    params = dict(hf.get("rope_parameters") or {})
    scaling_dict = dict(hf.get("rope_scaling") or {}) or params
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    kind = scaling_dict.get("rope_type", scaling_dict.get("type", "default")) or "default"
    if kind == "default":
        return float(theta), RopeScaling()
    if kind not in ("linear", "llama3"):
        raise ValueError(f"{where}: rope scaling type {kind!r} is not supported (linear, llama3)")
    return float(theta), RopeScaling(
        kind=kind,
        factor=float(scaling_dict.get("factor", 1.0)),
        low_freq_factor=float(scaling_dict.get("low_freq_factor", 1.0)),
        high_freq_factor=float(scaling_dict.get("high_freq_factor", 4.0)),
        original_max_position=int(scaling_dict.get("original_max_position_embeddings", 8192)),
    )


def config_from_hf_dict(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """Build a ModelConfig from the fields of an HF config.json (a dict)."""
    missing = [key for key in _HF_REQUIRED if key not in hf]
    if missing:
        raise ValueError(f"{where}: missing required field(s) {missing}")
    model_type = hf["model_type"]
    if model_type not in _HF_MODEL_TYPES:
        raise ValueError(
            f"{where}: model_type={model_type!r} is not supported; "
            f"expected one of {sorted(_HF_MODEL_TYPES)}"
        )
    if model_type == "mistral" and hf.get("sliding_window"):
        # Mistral's sliding window only matters past `sliding_window` tokens; we attend densely.
        pass
    num_heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    head_dim = hf.get("head_dim") or hidden // num_heads
    theta, scaling = _rope_from_hf(hf, where)
    attention_bias = bool(hf.get("attention_bias", False))
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return ModelConfig(
        architecture=_HF_MODEL_TYPES[model_type],
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(head_dim),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=model_type in ("llama", "mistral") and attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        bos_id=hf.get("bos_token_id"),
        eos_id=eos,
    )


def load_hf_config(model_dir: str | pathlib.Path) -> ModelConfig:
    """Read `model_dir/config.json` into a ModelConfig."""
    path = pathlib.Path(model_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: an HF model directory needs config.json")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    return config_from_hf_dict(hf, where=str(path))


def config_to_hf_dict(config: ModelConfig) -> dict[str, Any]:
    """The HF config.json fields that reproduce `config` in transformers."""
    model_type = config.architecture
    arch_class = {
        "llama": "LlamaForCausalLM",
        "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
    }[model_type]
    hf: dict[str, Any] = {
        "architectures": [arch_class],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "torch_dtype": config.param_dtype,
        "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id,
    }
    rope_parameters: dict[str, Any] = {"rope_theta": config.rope_theta, "rope_type": "default"}
    if config.rope_scaling.kind != "default":
        scaling = config.rope_scaling
        rope_parameters.update(rope_type=scaling.kind, factor=scaling.factor)
        if scaling.kind == "llama3":
            rope_parameters.update(
                low_freq_factor=scaling.low_freq_factor,
                high_freq_factor=scaling.high_freq_factor,
                original_max_position_embeddings=scaling.original_max_position,
            )
        hf["rope_scaling"] = dict(rope_parameters)
    hf["rope_parameters"] = rope_parameters
    if model_type in ("llama", "mistral"):
        if config.qkv_bias != config.o_bias:
            raise ValueError("llama/mistral export needs qkv_bias == o_bias (attention_bias)")
        hf["attention_bias"] = config.qkv_bias
        hf["mlp_bias"] = config.mlp_bias
    if model_type == "qwen3":
        hf["attention_bias"] = config.qkv_bias
    if model_type in ("qwen2", "qwen3", "mistral"):
        hf["use_sliding_window"] = False
        hf["sliding_window"] = None
    return hf
