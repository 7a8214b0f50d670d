"""ModelConfig: the architecture of one decoder-only transformer, from HF config.json or GGUF."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, NamedTuple

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
    # Sliding-window attention (Mistral, Qwen2/3 with use_sliding_window): a query at real-token
    # index i of its row attends to the keys at j with i - sliding_window < j <= i, transformers'
    # convention (masking_utils.sliding_window_overlay). Indices count the row's real tokens (as
    # `positions_from_mask` does), so left padding does not shift the window. None: full causal.
    sliding_window: int | None = None
    # Which layers use the window, one bool per layer (Qwen2/3's max_window_layers / layer_types);
    # None: every layer, when sliding_window is set. Normalized: all-True becomes None, all-False
    # clears the window.
    sliding_window_layers: tuple[bool, ...] | None = None

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
        self._check_sliding_window()

    def _check_sliding_window(self) -> None:
        window, layers = self.sliding_window, self.sliding_window_layers
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)):
            raise ValueError(f"ModelConfig.sliding_window={window!r}: expected an int or None")
        if window is not None and window < 1:
            raise ValueError(f"ModelConfig.sliding_window={window}: must be >= 1 (or None)")
        if layers is not None:
            layers = tuple(bool(flag) for flag in layers)
            if window is None:
                raise ValueError(
                    "ModelConfig.sliding_window_layers is set but sliding_window is None"
                )
            if len(layers) != self.num_layers:
                raise ValueError(
                    f"ModelConfig.sliding_window_layers has {len(layers)} entries, "
                    f"expected num_layers={self.num_layers}"
                )
            if all(layers):
                layers = None
            elif not any(layers):
                window = layers = None
            object.__setattr__(self, "sliding_window", window)
            object.__setattr__(self, "sliding_window_layers", layers)
        if window is not None and self.attention_impl == "splash":
            raise ValueError(
                f"ModelConfig.sliding_window={window} is not implemented for "
                "attention_impl='splash' (transformer.splash_attention builds a causal mask "
                "and padding segments only); use attention_impl='xla', 'cudnn' or 'naive'"
            )

    @property
    def window_layers(self) -> tuple[bool, ...]:
        """Per layer: whether it attends through the sliding window (all False without one)."""
        if self.sliding_window is None:
            return (False,) * self.num_layers
        return self.sliding_window_layers or (True,) * self.num_layers

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


class Refused(NamedTuple):
    """An HF_FIELDS rule: the field is never supported, for `reason`."""

    reason: str


# What each config.json field of a supported model_type does to the computation, checked against
# transformers 5.24's modeling_{llama,mistral,qwen2,qwen3}.py and modeling_rope_utils.py (and the
# fields transformers 4 wrote). A rule is one of:
# - READ: `config_from_hf_dict` reads it into ModelConfig (values it cannot represent raise there);
# - INERT: it does not change the function the model computes (bookkeeping, tokenizer ids,
#   generation defaults, weight initialization, torch runtime switches);
# - a tuple: it changes the computation unless its value is one of these; any other value raises;
# - Refused(reason): never supported; raises whenever present.
# A field outside its model_type's table raises as well (`check_hf_fields`): a field we do not
# know may change the computation (a new transformers option, another model's field), and a
# refusal costs one visible error where acceptance could cost silently wrong logits. Keys that
# start with "_" (transformers' private bookkeeping: _name_or_path, _commit_hash,
# _attn_implementation...) are inert.
READ, INERT = "read", "inert"
HFRule = str | tuple | Refused

_GENERIC_INERT = (
    # PretrainedConfig's own fields (transformers 4 and 5): no Llama/Mistral/Qwen module reads them.
    "architectures", "transformers_version", "dtype", "torch_dtype", "use_cache",
    "initializer_range", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "return_dict", "output_hidden_states", "output_attentions", "output_scores",
    "return_dict_in_generate", "torchscript", "use_bfloat16", "tf_legacy_loss",
    "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "tie_encoder_decoder", "id2label", "label2id", "num_labels",
    "problem_type", "finetuning_task", "tokenizer_class", "prefix", "task_specific_params",
    "gradient_checkpointing",
    # Generation defaults of transformers 4 configs: our sampler takes its own SampleConfig.
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    # transformers.js runtime hints (SmolLM2's config.json).
    "transformers.js_config",
)  # fmt: skip
_COMMON_READ = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
    "tie_word_embeddings", "max_position_embeddings", "rope_theta", "rope_scaling",
    "rope_parameters", "bos_token_id", "eos_token_id",
)  # fmt: skip
_COMMON_RULES: dict[str, HFRule] = {
    **{name: INERT for name in _GENERIC_INERT},
    **{name: READ for name in _COMMON_READ},
    "hidden_act": ("silu", "swish"),  # ACT2FN: both are SiLU; the MLP is SwiGLU
    "attention_dropout": (0, 0.0, None),  # dropout on the attention probabilities in training
    "partial_rotary_factor": (1, 1.0, None),  # RoPE on a fraction of each head
    "rope_interleaved": (False, None),  # nanotron's field (SmolLM2): True = pairwise rotation
    "pruned_heads": ({}, None),
    "quantization_config": Refused(
        "quantized checkpoints are not supported; load the unquantized safetensors"
    ),
    "auto_map": Refused(
        "the checkpoint ships its own modeling code, which may compute something other "
        "than transformers' class for its model_type"
    ),
}
_QWEN_WINDOW_RULES: dict[str, HFRule] = {
    name: READ
    for name in ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types")
}
HF_FIELDS: dict[str, dict[str, HFRule]] = {
    "llama": {
        **_COMMON_RULES,
        "attention_bias": READ,
        "mlp_bias": READ,
        # transformers 5 does not read it; transformers 4 with pretraining_tp > 1 splits the same
        # matmuls into slices and sums/concatenates them: the same function.
        "pretraining_tp": INERT,
    },
    "mistral": {
        **_COMMON_RULES,
        "sliding_window": READ,
        # MistralModel reads neither (the window is on every layer when sliding_window is set):
        # read only to refuse values that say otherwise.
        "use_sliding_window": READ,
        "layer_types": READ,
        # MistralModel has no biases; older pmd_jax exports wrote these as False.
        "attention_bias": (False, None),
        "mlp_bias": (False, None),
    },
    "qwen2": {**_COMMON_RULES, **_QWEN_WINDOW_RULES},
    "qwen3": {**_COMMON_RULES, **_QWEN_WINDOW_RULES, "attention_bias": READ},
}


def check_hf_fields(hf: dict[str, Any], where: str = "config.json") -> None:
    """Raise ValueError unless every field of `hf` is one HF_FIELDS[model_type] allows."""
    model_type = hf["model_type"]
    table = HF_FIELDS[model_type]
    unknown = sorted(key for key in hf if key not in table and not key.startswith("_"))
    if unknown:
        raise ValueError(
            f"{where}: unknown config.json field(s) {unknown} for model_type={model_type!r}: "
            "pmd_jax refuses fields it does not know rather than risk computing another model "
            "than transformers does. If transformers' modeling code does not read one, list it "
            "as INERT in HF_FIELDS (pmd_jax/model/config.py)"
        )
    for key, rule in table.items():
        if key not in hf:
            continue
        if isinstance(rule, Refused):
            raise ValueError(f"{where}: {key} is not supported: {rule.reason}")
        if isinstance(rule, tuple) and hf[key] not in rule:
            raise ValueError(
                f"{where}: {key}={hf[key]!r} changes the computation and is not implemented "
                f"for model_type={model_type!r} (supported: {list(rule)})"
            )


# The keys each rope type's transformers function reads (modeling_rope_utils.py).
_ROPE_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
_ROPE_KIND_KEYS = {
    "default": _ROPE_KEYS,
    "linear": _ROPE_KEYS | {"factor"},
    "llama3": _ROPE_KEYS
    | {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}


def _rope_from_hf(hf: dict[str, Any], where: str) -> tuple[float, RopeScaling]:
    """Rope theta and scaling from transformers 4 (rope_theta, rope_scaling) or 5 (rope_parameters)."""
    params = dict(hf.get("rope_parameters") or {})
    scaling_dict = dict(hf.get("rope_scaling") or {}) or params
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    kind = scaling_dict.get("rope_type", scaling_dict.get("type", "default")) or "default"
    if kind not in _ROPE_KIND_KEYS:
        raise ValueError(f"{where}: rope scaling type {kind!r} is not supported (linear, llama3)")
    extra = sorted(set(scaling_dict) - _ROPE_KIND_KEYS[kind])
    if extra:
        raise ValueError(f"{where}: rope field(s) {extra} of rope type {kind!r} are not supported")
    if scaling_dict.get("partial_rotary_factor") not in (1, 1.0, None):
        raise ValueError(
            f"{where}: rope partial_rotary_factor={scaling_dict['partial_rotary_factor']!r} "
            "is not supported (RoPE on every dimension only)"
        )
    if kind == "default":
        return float(theta), RopeScaling()
    return float(theta), RopeScaling(
        kind=kind,
        factor=float(scaling_dict.get("factor", 1.0)),
        low_freq_factor=float(scaling_dict.get("low_freq_factor", 1.0)),
        high_freq_factor=float(scaling_dict.get("high_freq_factor", 4.0)),
        original_max_position=int(scaling_dict.get("original_max_position_embeddings", 8192)),
    )


_LAYER_TYPES = ("full_attention", "sliding_attention")
_QWEN_MAX_WINDOW_LAYERS = 28  # Qwen2Config / Qwen3Config's default


def _sliding_window_from_hf(
    hf: dict[str, Any], model_type: str, num_layers: int, where: str
) -> tuple[int | None, tuple[bool, ...] | None]:
    """(sliding_window, sliding_window_layers) as transformers 5.24 builds the layers' masks."""
    window = hf.get("sliding_window")
    window = None if window is None else int(window)
    layer_types = hf.get("layer_types")
    if layer_types is not None and (
        not isinstance(layer_types, list)
        or len(layer_types) != num_layers
        or any(kind not in _LAYER_TYPES for kind in layer_types)
    ):
        raise ValueError(
            f"{where}: layer_types={layer_types!r} is not supported: expected "
            f"num_hidden_layers={num_layers} entries, each one of {list(_LAYER_TYPES)}"
        )
    if model_type == "llama":
        return None, None  # LlamaConfig has neither field (check_hf_fields refuses them)
    if model_type == "mistral":
        # MistralModel: the window on every layer when sliding_window is set, whatever
        # use_sliding_window or layer_types say. Refuse them where they say otherwise.
        expected = "full_attention" if window is None else "sliding_attention"
        if layer_types is not None and any(kind != expected for kind in layer_types):
            raise ValueError(
                f"{where}: mistral layer_types={layer_types} disagree with "
                f"sliding_window={window!r}: transformers' MistralForCausalLM ignores "
                "layer_types and applies sliding_window to every layer (per-layer patterns are "
                "model_type 'ministral', not supported)"
            )
        if "use_sliding_window" in hf and bool(hf["use_sliding_window"]) != (window is not None):
            raise ValueError(
                f"{where}: mistral use_sliding_window={hf['use_sliding_window']!r} disagrees "
                f"with sliding_window={window!r}: transformers' MistralForCausalLM ignores "
                "use_sliding_window and applies sliding_window whenever it is set"
            )
        return window, None
    # Qwen2/Qwen3 (Qwen2Config.__post_init__): no window unless use_sliding_window; then layer
    # i uses it where layer_types[i] == "sliding_attention" or, without layer_types (configs
    # of transformers 4), where i >= max_window_layers. layer_types wins where both are given,
    # as in transformers 5.
    if not hf.get("use_sliding_window", False) or window is None:
        return None, None
    if layer_types is None:
        first = int(hf.get("max_window_layers", _QWEN_MAX_WINDOW_LAYERS))
        return window, tuple(layer >= first for layer in range(num_layers))
    return window, tuple(kind == "sliding_attention" for kind in layer_types)


def config_from_hf_dict(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """Build a ModelConfig from the fields of an HF config.json (a dict).

    Every field must be one HF_FIELDS allows for the model_type (`check_hf_fields`)."""
    missing = [key for key in _HF_REQUIRED if key not in hf]
    if missing:
        raise ValueError(f"{where}: missing required field(s) {missing}")
    model_type = hf["model_type"]
    if model_type not in _HF_MODEL_TYPES:
        raise ValueError(
            f"{where}: model_type={model_type!r} is not supported; "
            f"expected one of {sorted(_HF_MODEL_TYPES)}"
        )
    check_hf_fields(hf, where)
    num_heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    num_layers = int(hf["num_hidden_layers"])
    head_dim = hf.get("head_dim") or hidden // num_heads
    theta, scaling = _rope_from_hf(hf, where)
    window, window_layers = _sliding_window_from_hf(hf, model_type, num_layers, where)
    # Which projections have biases, as each transformers model builds them.
    attention_bias = bool(hf.get("attention_bias", False))
    qkv_bias = {"llama": attention_bias, "mistral": False, "qwen2": True, "qwen3": attention_bias}
    o_bias = model_type in ("llama", "qwen3") and attention_bias
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    try:
        return ModelConfig(
            architecture=_HF_MODEL_TYPES[model_type],
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias[model_type],
            o_bias=o_bias,
            mlp_bias=model_type == "llama" and bool(hf.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            bos_id=hf.get("bos_token_id"),
            eos_id=eos,
            sliding_window=window,
            sliding_window_layers=window_layers,
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


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
    # The biases each transformers model can hold.
    biases = {
        "llama": config.qkv_bias == config.o_bias,
        "mistral": not (config.qkv_bias or config.o_bias or config.mlp_bias),
        "qwen2": config.qkv_bias and not config.o_bias and not config.mlp_bias,
        "qwen3": config.qkv_bias == config.o_bias and not config.mlp_bias,
    }
    if not biases[model_type]:
        raise ValueError(
            f"{model_type} export: transformers cannot hold qkv_bias={config.qkv_bias}, "
            f"o_bias={config.o_bias}, mlp_bias={config.mlp_bias} for this model_type"
        )
    if model_type == "llama":
        hf["attention_bias"] = config.qkv_bias
        hf["mlp_bias"] = config.mlp_bias
    if model_type == "qwen3":
        hf["attention_bias"] = config.qkv_bias
    if config.sliding_window is not None and model_type == "llama":
        raise ValueError("llama export: LlamaConfig has no sliding window (use mistral or qwen2)")
    if model_type == "mistral":
        if config.sliding_window_layers is not None:
            raise ValueError(
                "mistral export: MistralConfig applies sliding_window to every layer; "
                f"sliding_window_layers={config.sliding_window_layers} cannot be written"
            )
        hf["sliding_window"] = config.sliding_window
    if model_type in ("qwen2", "qwen3"):
        layers = config.window_layers
        hf["use_sliding_window"] = config.sliding_window is not None
        hf["sliding_window"] = config.sliding_window
        # transformers 4 reads max_window_layers (exact when the windowed layers are the last
        # ones), transformers 5 reads layer_types.
        hf["max_window_layers"] = layers.index(True) if any(layers) else config.num_layers
        hf["layer_types"] = [_LAYER_TYPES[flag] for flag in layers]
    return hf
