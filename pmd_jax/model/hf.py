"""HF safetensors checkpoints <-> our params pytree (numpy + safetensors only; no torch).

Our pytree stacks layers on a leading axis L and stores Dense kernels as [in, out]; HF stores one
tensor per layer in torch's [out, in]. `hf_tensor_name` maps one to the other, and
`assemble_params` builds the pytree from any reader of HF-named, torch-layout tensors (gguf.py
reuses it with GGUF names mapped onto HF ones).
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from pmd_jax.model.config import ModelConfig, config_to_hf_dict, load_hf_config
from pmd_jax.model.transformer import init_params

# Our per-layer module name -> the HF module under model.layers.{i}.
_LAYER_MODULES = {
    "attn_norm": "input_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "q_norm": "self_attn.q_norm",
    "k_norm": "self_attn.k_norm",
    "mlp_norm": "post_attention_layernorm",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}
_TOP_LEVEL = {
    ("embed", "embedding"): "model.embed_tokens.weight",
    ("final_norm", "scale"): "model.norm.weight",
    ("lm_head", "kernel"): "lm_head.weight",
}
_LEAF_SUFFIX = {"kernel": "weight", "scale": "weight", "bias": "bias"}

TensorReader = Callable[[str], np.ndarray]  # tensor name -> array in torch layout [out, in]
TensorNamer = Callable[[tuple[str, ...], int | None], str]  # (param path, layer) -> tensor name


def hf_tensor_name(path: tuple[str, ...], layer: int | None = None) -> str:
    """The HF tensor name of one param (layer: None outside the stacked layers).

    ("layers", "q_proj", "kernel"), 3 -> "model.layers.3.self_attn.q_proj.weight".
    """
    if path[0] != "layers":
        return _TOP_LEVEL[path]
    module, leaf = path[1], path[2]
    return f"model.layers.{layer}.{_LAYER_MODULES[module]}.{_LEAF_SUFFIX[leaf]}"


def param_shapes(config: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Each param path of the model for `config` -> its shape in our layout (traced, not built)."""
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {tuple(key.key for key in path): leaf.shape for path, leaf in flat}


def _to_ours(tensor: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    """torch layout [out, in] -> ours [in, out] for kernels; other tensors unchanged."""
    return tensor.T if path[-1] == "kernel" else tensor


def _read_checked(
    read: TensorReader, name: str, expected: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    tensor = read(name)
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(
            f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(expected)} "
            "from the model config"
        )
    return np.asarray(tensor).astype(dtype, copy=False)


def assemble_params(
    config: ModelConfig, read: TensorReader, name_of: TensorNamer = hf_tensor_name
) -> dict:
    """Build our params pytree (jax arrays of config.param_dtype) from torch-layout tensors.

    name_of gives each param's tensor name (HF names by default); shapes are checked against config.
    """
    dtype = np.dtype(jnp.dtype(config.param_dtype))
    params: dict = {}
    for path, shape in param_shapes(config).items():
        if path[0] == "layers":
            torch_shape = shape[1:][::-1] if path[-1] == "kernel" else shape[1:]
            per_layer = [
                _to_ours(_read_checked(read, name_of(path, i), torch_shape, dtype), path)
                for i in range(config.num_layers)
            ]
            value = np.stack(per_layer)
        else:
            torch_shape = shape[::-1] if path[-1] == "kernel" else shape
            value = _to_ours(_read_checked(read, name_of(path, None), torch_shape, dtype), path)
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(value)
    return params


def _weight_files(model_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Tensor name -> the safetensors file holding it (single file or sharded index)."""
    index_path = model_dir / "model.safetensors.index.json"
    single_path = model_dir / "model.safetensors"
    if index_path.exists():
        weight_map = json.loads(index_path.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_path}: no 'weight_map' object")
        return {name: model_dir / file for name, file in weight_map.items()}
    if single_path.exists():
        with safe_open(single_path, framework="np") as handle:
            return {name: single_path for name in handle.keys()}
    raise FileNotFoundError(
        f"{model_dir}: no model.safetensors or model.safetensors.index.json "
        "(only safetensors checkpoints are supported)"
    )


def _safetensors_reader(model_dir: pathlib.Path) -> tuple[TensorReader, Callable[[], None]]:
    """A reader over the directory's safetensors files (opened lazily), and a closer for them."""
    files = _weight_files(model_dir)
    handles: dict[pathlib.Path, object] = {}

    def read(name: str) -> np.ndarray:
        if name not in files:
            shown = sorted({file.name for file in files.values()})
            raise ValueError(f"tensor {name!r} is missing from {model_dir} (files: {shown})")
        file = files[name]
        if file not in handles:
            if not file.exists():
                raise FileNotFoundError(f"{file} (listed in the safetensors index) does not exist")
            handles[file] = safe_open(file, framework="np").__enter__()
        return handles[file].get_tensor(name)

    def close() -> None:
        for handle in handles.values():
            handle.__exit__(None, None, None)

    return read, close


def _stored_dtype(model_dir: pathlib.Path) -> str:
    """The dtype config.json declares ("dtype" in transformers 5, "torch_dtype" in 4) or float32."""
    hf = json.loads((model_dir / "config.json").read_text())
    declared = hf.get("dtype") or hf.get("torch_dtype")
    return declared if declared in ("float32", "bfloat16", "float16") else "float32"


def load_hf(
    model_dir: str | pathlib.Path, *, param_dtype: str | None = None
) -> tuple[ModelConfig, dict]:
    """Read an HF checkpoint directory (config.json + safetensors) into (ModelConfig, params).

    param_dtype: "float32" | "bfloat16" | "float16", or None for the dtype config.json declares.
    The compute dtype follows param_dtype; change it with `config.replace(dtype=...)`.
    """
    model_dir = pathlib.Path(model_dir)
    config = load_hf_config(model_dir)
    param_dtype = param_dtype or _stored_dtype(model_dir)
    config = config.replace(param_dtype=param_dtype, dtype=param_dtype)
    read, close = _safetensors_reader(model_dir)
    try:
        params = assemble_params(config, read)
    finally:
        close()
    return config, params


def export_hf(
    params: dict,
    config: ModelConfig,
    out_dir: str | pathlib.Path,
    *,
    tokenizer_files: Iterable[str | pathlib.Path] | None = None,
) -> pathlib.Path:
    """Write config.json + model.safetensors for transformers' from_pretrained; returns out_dir.

    params are stored in their own dtype; tokenizer_files (paths) are copied alongside.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for key_path, value in flat:
        path = tuple(key.key for key in key_path)
        array = np.asarray(value)
        if path[0] == "layers":
            for layer in range(array.shape[0]):
                tensors[hf_tensor_name(path, layer)] = np.ascontiguousarray(
                    _to_ours(array[layer], path)  # the transpose is its own inverse
                )
        else:
            tensors[hf_tensor_name(path)] = np.ascontiguousarray(_to_ours(array, path))
    hf = config_to_hf_dict(config)
    hf["dtype"] = hf.pop("torch_dtype")
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    for file in tokenizer_files or ():
        shutil.copy(file, out_dir / pathlib.Path(file).name)
    return out_dir
