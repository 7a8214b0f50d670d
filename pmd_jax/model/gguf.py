"""GGUF files (llama architecture) -> (ModelConfig, params), with the `gguf` package and numpy.

Quantized tensors are dequantized to float32 in torch layout [out, in]; llama.cpp's rope permutation
of the Q and K rows is undone, so the weights equal what transformers' GGUF loader produces.
"""

from __future__ import annotations

import pathlib
from typing import Any

import gguf
import numpy as np

from pmd_jax.model.config import ModelConfig
from pmd_jax.model.hf import assemble_params

SUPPORTED_ARCHITECTURES = ("llama",)

# Our per-layer module name -> the GGUF tensor under blk.{i}.
_LAYER_TENSORS = {
    "attn_norm": "attn_norm",
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "mlp_norm": "ffn_norm",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
_TOP_LEVEL = {
    ("embed", "embedding"): "token_embd.weight",
    ("final_norm", "scale"): "output_norm.weight",
    ("lm_head", "kernel"): "output.weight",
}


def gguf_tensor_name(path: tuple[str, ...], layer: int | None = None) -> str:
    """The GGUF name of one param: ("layers", "q_proj", "kernel"), 3 -> blk.3.attn_q.weight."""
    if path[0] != "layers":
        return _TOP_LEVEL[path]
    suffix = "bias" if path[2] == "bias" else "weight"
    return f"blk.{layer}.{_LAYER_TENSORS[path[1]]}.{suffix}"


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation. weight: [num_heads * Dh, ...] (a kernel or a bias).

    llama.cpp stores each head's rows as (Dh/2, 2) interleaved pairs for its rope; HF uses halves.
    """
    half = weight.shape[0] // num_heads // 2
    pairs = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return pairs.swapaxes(1, 2).reshape(weight.shape)


def _field(reader: gguf.GGUFReader, key: str, path: pathlib.Path, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ValueError(f"{path}: GGUF metadata field {key!r} is missing")
        return default
    return field.contents()


def _config_from_metadata(reader: gguf.GGUFReader, path: pathlib.Path) -> ModelConfig:
    """ModelConfig from the llama.* metadata; vocabulary size from the token list."""
    arch = _field(reader, "general.architecture", path)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{path}: GGUF general.architecture={arch!r} is not supported "
            f"(supported: {list(SUPPORTED_ARCHITECTURES)})"
        )
    tensor_names = {tensor.name for tensor in reader.tensors}
    if "rope_freqs.weight" in tensor_names:
        # llama3-style rope scaling baked into per-frequency factors; ModelConfig cannot hold them.
        raise ValueError(f"{path}: tensor 'rope_freqs.weight' (GGUF rope scaling) is not supported")
    scaling_type = _field(reader, f"{arch}.rope.scaling.type", path, "none")
    if scaling_type not in ("none", ""):
        raise ValueError(f"{path}: {arch}.rope.scaling.type={scaling_type!r} is not supported")

    def meta(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", path, default)

    # llama.cpp's sliding window (n_swa): a key at position p_k is masked for the query at p_q
    # when p_q - p_k >= n_swa, transformers' convention. A per-layer pattern is not supported.
    pattern_key = f"{arch}.attention.sliding_window_pattern"
    if pattern_key in reader.fields:
        raise ValueError(
            f"{path}: GGUF metadata {pattern_key!r} (per-layer sliding window) is not supported"
        )
    sliding_window = int(meta("attention.sliding_window", 0)) or None

    hidden = int(meta("embedding_length"))
    num_heads = int(meta("attention.head_count"))
    tokens = _field(reader, "tokenizer.ggml.tokens", path)
    bos = _field(reader, "tokenizer.ggml.bos_token_id", path, -1)
    eos = _field(reader, "tokenizer.ggml.eos_token_id", path, -1)
    return ModelConfig(
        architecture=arch,
        vocab_size=len(tokens),
        hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")),
        num_layers=int(meta("block_count")),
        num_heads=num_heads,
        num_kv_heads=int(meta("attention.head_count_kv", num_heads)),
        head_dim=int(meta("attention.key_length", hidden // num_heads)),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensor_names,
        qkv_bias="blk.0.attn_q.bias" in tensor_names,
        o_bias="blk.0.attn_output.bias" in tensor_names,
        max_position_embeddings=int(meta("context_length", 4096)),
        bos_id=int(bos) if bos >= 0 else None,
        eos_id=int(eos) if eos >= 0 else None,
        sliding_window=sliding_window,
    )


def read_gguf_config(path: str | pathlib.Path) -> ModelConfig:
    """The ModelConfig in a GGUF file's header (no tensor is read)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    return _config_from_metadata(gguf.GGUFReader(path), path)


def load_gguf(
    path: str | pathlib.Path, *, param_dtype: str | None = None
) -> tuple[ModelConfig, dict]:
    """Read a llama-architecture GGUF into (ModelConfig, params), dequantizing every tensor.

    param_dtype: "float32" (default; the dequantized values exactly) | "bfloat16" | "float16".
    The compute dtype follows param_dtype; change it with `config.replace(dtype=...)`.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    reader = gguf.GGUFReader(path)
    param_dtype = param_dtype or "float32"
    config = _config_from_metadata(reader, path).replace(param_dtype=param_dtype, dtype=param_dtype)
    tensors = {tensor.name: tensor for tensor in reader.tensors}

    def read(name: str) -> np.ndarray:
        if name not in tensors:
            raise ValueError(f"tensor {name!r} is missing from {path}")
        tensor = tensors[name]
        weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if ".attn_q." in name:
            weight = unpermute_rope_rows(weight, config.num_heads)
        elif ".attn_k." in name:
            weight = unpermute_rope_rows(weight, config.num_kv_heads)
        return weight

    return config, assemble_params(config, read, name_of=gguf_tensor_name)
