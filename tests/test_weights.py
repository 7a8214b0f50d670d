"""Weight import/export: logit parity with transformers for HF checkpoints, GGUF, named models."""

import functools
import json
import pathlib
import shutil

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_reference import save_random_models

from pmd_jax.model import export_hf, forward, load, load_gguf, load_hf
from pmd_jax.model.hf import hf_tensor_name, param_shapes
from pmd_jax.model.registry import resolve

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 300
LENGTHS = (12, 7, 3, 10)  # a left-padded batch of 4 sequences of different lengths
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-5,
)
LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=50000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,
)
HF_CONFIGS = {
    "llama_gqa_llama3_rope": lambda: transformers.LlamaConfig(**SMALL, rope_parameters=LLAMA3_ROPE),
    "llama_tied": lambda: transformers.LlamaConfig(**SMALL, tie_word_embeddings=True),
    "qwen2_qkv_bias": lambda: transformers.Qwen2Config(**SMALL),
    "qwen3_qk_norm": lambda: transformers.Qwen3Config(**SMALL),
}
CHATML_TEXT = "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n"
# CHATML_TEXT as transformers' GGUF tokenizer encodes it for SmolLM2 (fixed: the logit test needs
# no tokenizer).
CHATML_IDS = [1, 4093, 198, 1780, 314, 216, 33, 34, 1232, 216, 39, 47, 2, 198, 1, 520, 9531, 198]


def left_padded_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tokens [B, T] int, mask [B, T] bool (left pad); positions [B, T] = max(cumsum(mask)-1, 0)."""
    rng = np.random.default_rng(seed)
    width = max(LENGTHS)
    tokens = rng.integers(0, VOCAB, size=(len(LENGTHS), width))
    mask = np.arange(width)[None, :] >= width - np.array(LENGTHS)[:, None]
    tokens = np.where(mask, tokens, 0)
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    return tokens, mask, positions


def torch_logits(model, tokens: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            position_ids=torch.from_numpy(positions).long(),
        )
    return out.logits.float().numpy()


def our_logits(params, config, tokens, mask, positions) -> np.ndarray:
    logits = forward(params, config, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(positions))
    return np.asarray(logits)


def max_diff_on_tokens(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(ours[mask] - ref[mask]).max())


def randomize(model, seed: int) -> None:
    """Move every weight off its init (norm scales of 1, biases of 0) so each one matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.1 * noise)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory) -> dict:
    """name -> (checkpoint dir, transformers model), random float32 weights, built offline once."""
    return save_random_models(HF_CONFIGS, randomize, tmp_path_factory)


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_load_hf_logits_match_transformers_on_left_padded_batch(hf_models, name):
    model_dir, model = hf_models[name]
    config, params = load_hf(model_dir)
    tokens, mask, positions = left_padded_batch()
    ours = our_logits(params, config, tokens, mask, positions)
    assert max_diff_on_tokens(ours, torch_logits(model, tokens, mask, positions), mask) <= 1e-4


def test_load_hf_reads_architecture_options(hf_models):
    llama3 = load_hf(hf_models["llama_gqa_llama3_rope"][0])[0]
    assert (llama3.rope_scaling.kind, llama3.rope_theta, llama3.num_kv_heads) == ("llama3", 5e4, 2)
    tied_config, tied_params = load_hf(hf_models["llama_tied"][0])
    assert tied_config.tie_embeddings and "lm_head" not in tied_params
    assert load_hf(hf_models["qwen2_qkv_bias"][0])[0].qkv_bias
    assert load_hf(hf_models["qwen3_qk_norm"][0])[0].qk_norm


def test_load_hf_reads_sharded_checkpoint(hf_models, tmp_path):
    _, model = hf_models["qwen2_qkv_bias"]
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    config, params = load_hf(tmp_path)
    tokens, mask, positions = left_padded_batch(seed=1)
    ours = our_logits(params, config, tokens, mask, positions)
    assert max_diff_on_tokens(ours, torch_logits(model, tokens, mask, positions), mask) <= 1e-4


def test_load_hf_bfloat16_params_run_close_to_float32(hf_models):
    model_dir, model = hf_models["qwen3_qk_norm"]
    config, params = load_hf(model_dir, param_dtype="bfloat16")
    assert config.param_dtype == config.dtype == "bfloat16"
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    tokens, mask, positions = left_padded_batch()
    ours = our_logits(params, config, tokens, mask, positions)
    ref = torch_logits(model, tokens, mask, positions)
    assert ours.dtype == np.float32 and np.isfinite(ours).all()
    assert max_diff_on_tokens(ours, ref, mask) <= 0.05 * float(np.abs(ref[mask]).max())


def test_load_hf_reads_bfloat16_checkpoint_in_stored_or_requested_dtype(hf_models, tmp_path):
    _, model = hf_models["qwen2_qkv_bias"]
    model_bf16 = transformers.AutoModelForCausalLM.from_config(model.config, dtype=torch.bfloat16)
    model_bf16.load_state_dict(model.state_dict())
    model_bf16.save_pretrained(tmp_path)
    stored_config, stored_params = load_hf(tmp_path)  # None: the dtype config.json declares
    assert stored_config.param_dtype == "bfloat16"
    assert stored_params["layers"]["q_proj"]["bias"].dtype == jnp.bfloat16
    config, params = load_hf(tmp_path, param_dtype="float32")
    upcast = model_bf16.float().eval()
    tokens, mask, positions = left_padded_batch()
    ours = our_logits(params, config, tokens, mask, positions)
    assert max_diff_on_tokens(ours, torch_logits(upcast, tokens, mask, positions), mask) <= 1e-4


@pytest.mark.parametrize("name", ["llama_gqa_llama3_rope", "llama_tied", "qwen2_qkv_bias"])
def test_export_hf_round_trips_through_transformers(hf_models, tmp_path, name):
    model_dir, model = hf_models[name]
    config, params = load_hf(model_dir)
    tokenizer_file = tmp_path / "tokenizer.json"
    tokenizer_file.write_text("{}")
    out_dir = export_hf(params, config, tmp_path / "export", tokenizer_files=[tokenizer_file])
    assert (out_dir / "tokenizer.json").read_text() == "{}"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    tokens, mask, positions = left_padded_batch(seed=2)
    ref = torch_logits(model, tokens, mask, positions)
    assert max_diff_on_tokens(torch_logits(reloaded, tokens, mask, positions), ref, mask) <= 1e-5
    assert load_hf(out_dir)[0] == config


# ---------------------------------------------------------------------------- GGUF


def llamacpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (the inverse of what we undo)."""
    pairs = weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
    return pairs.swapaxes(1, 2).reshape(weight.shape)


def write_llama_gguf(path: pathlib.Path, model, arch: str = "llama") -> None:
    """A float32 GGUF of a transformers llama, written the way llama.cpp's converter does."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    tokens = [f"t{i}" for i in range(cfg.vocab_size)]
    tokens[2:6] = ["<|endoftext|>", "a", "b", "ab"]  # an end token, and one merge
    writer.add_token_list(tokens)
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for name, tensor in model.state_dict().items():
        array = tensor.numpy().astype(np.float32)
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name.startswith("model.layers."):
            _, _, layer, module = name.removesuffix(".weight").split(".", 3)
            if module == "self_attn.q_proj":
                array = llamacpp_permute(array, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                array = llamacpp_permute(array, cfg.num_key_value_heads)
            name = f"blk.{layer}.{names[module]}.weight"
        else:
            name = {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight",
            }[name]
        writer.add_tensor(name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_load_gguf_undoes_rope_permutation_and_matches_transformers(hf_models, tmp_path):
    _, model = hf_models["llama_tied"]
    write_llama_gguf(tmp_path / "tiny.gguf", model)
    config, params = load_gguf(tmp_path / "tiny.gguf")
    assert config.tie_embeddings and (config.bos_id, config.eos_id) == (1, 2)
    assert config.vocab_size == VOCAB and config.num_kv_heads == 2
    tokens, mask, positions = left_padded_batch()
    ours = our_logits(params, config, tokens, mask, positions)
    assert max_diff_on_tokens(ours, torch_logits(model, tokens, mask, positions), mask) <= 1e-4


def test_load_reads_gguf_file_and_hf_directory_with_their_tokenizers(hf_models, tmp_path):
    write_llama_gguf(tmp_path / "tiny.gguf", hf_models["llama_tied"][1])
    from_gguf = load(tmp_path / "tiny.gguf", param_dtype="bfloat16")
    assert (from_gguf.config.param_dtype, from_gguf.config.dtype) == ("bfloat16", "bfloat16")
    assert (from_gguf.tokenizer.vocab_size, from_gguf.tokenizer.eos_id) == (VOCAB, 2)
    tokenizer_json = tmp_path / "tokenizer.json"
    tokenizer_json.write_text(from_gguf.tokenizer.backend.to_str())
    out_dir = export_hf(
        from_gguf.params, from_gguf.config, tmp_path / "hf", tokenizer_files=[tokenizer_json]
    )
    from_dir = load(out_dir, param_dtype="bfloat16", dtype="float32")
    assert from_dir.config == from_gguf.config.replace(dtype="float32")
    assert (from_dir.tokenizer.vocab_size, from_dir.tokenizer.eos_id) == (VOCAB, 2)
    assert from_dir.tokenizer.encode("ab") == from_gguf.tokenizer.encode("ab") == [5]
    for ours, theirs in zip(
        jax.tree.leaves(from_dir.params), jax.tree.leaves(from_gguf.params), strict=True
    ):
        assert ours.dtype == jnp.bfloat16 and (ours == theirs).all()


# ---------------------------------------------------------------------------- bad input


def test_unknown_model_name_lists_known_names():
    with pytest.raises(ValueError, match="smollm2-135m-instruct.*path"):
        load("no-such-model")


def test_hub_id_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="could not download .*no-such-org/no-such-model.*Offline"):
        resolve("no-such-org/no-such-model")


def test_gguf_of_unsupported_architecture_names_it(hf_models, tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_llama_gguf(path, hf_models["llama_tied"][1], arch="gpt2")
    with pytest.raises(ValueError, match=r"gpt2\.gguf.*general\.architecture='gpt2'"):
        load_gguf(path)


def copy_checkpoint(hf_models, tmp_path) -> pathlib.Path:
    model_dir = tmp_path / "copy"
    shutil.copytree(hf_models["llama_gqa_llama3_rope"][0], model_dir)
    return model_dir


def test_config_missing_field_names_it(hf_models, tmp_path):
    model_dir = copy_checkpoint(hf_models, tmp_path)
    hf = json.loads((model_dir / "config.json").read_text())
    del hf["hidden_size"]
    (model_dir / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match="config.json.*hidden_size"):
        load_hf(model_dir)


def test_missing_config_json_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(tmp_path)


def test_missing_or_misshapen_tensor_is_named(hf_models, tmp_path):
    from safetensors.numpy import load_file, save_file

    model_dir = copy_checkpoint(hf_models, tmp_path)
    weights_path = model_dir / "model.safetensors"
    tensors = load_file(weights_path)
    name = "model.layers.1.self_attn.k_proj.weight"
    save_file({k: v for k, v in tensors.items() if k != name}, weights_path)
    with pytest.raises(ValueError, match=rf"{name}.*missing"):
        load_hf(model_dir)
    save_file({**tensors, name: tensors[name][:16]}, weights_path)
    with pytest.raises(ValueError, match=rf"{name}.*\(16, 64\).*\(32, 64\)"):
        load_hf(model_dir)


# ---------------------------------------------------------------------------- SmolLM2 GGUF


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_gguf_path):
    """transformers' GGUF loader applied to SmolLM2 (weights as transformers reads them)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    # from_pretrained(gguf_file=...) needs accelerate; this is the same loader without it.
    hf_config = transformers.AutoConfig.from_pretrained(
        smollm2_gguf_path.parent, gguf_file=smollm2_gguf_path.name
    )
    model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    state = load_gguf_checkpoint(smollm2_gguf_path, return_tensors=True, model_to_load=model)
    missing, unexpected = model.load_state_dict(state["tensors"], strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # tied to the embedding
    model.tie_weights()
    return model.eval()


@pytest.mark.slow
def test_smollm2_gguf_weights_and_logits_match_transformers(smollm2_gguf_path, smollm2_reference):
    config, params = load_gguf(smollm2_gguf_path)
    assert (config.num_layers, config.num_heads, config.num_kv_heads) == (30, 9, 3)
    assert config.tie_embeddings and config.rope_theta == 1e5
    state = {name: tensor.numpy() for name, tensor in smollm2_reference.state_dict().items()}
    for path in param_shapes(config):
        ours = np.asarray(functools.reduce(dict.__getitem__, path, params))
        layers = [(hf_tensor_name(path, i), ours[i]) for i in range(config.num_layers)]
        for name, value in layers if path[0] == "layers" else [(hf_tensor_name(path), ours)]:
            expected = state[name].T if path[-1] == "kernel" else state[name]
            np.testing.assert_array_equal(value, expected, err_msg=name)  # bit-identical
    tokens = np.array([CHATML_IDS])
    mask = np.ones_like(tokens, dtype=bool)
    positions = np.arange(tokens.shape[1])[None]
    ours = our_logits(params, config, tokens, mask, positions)
    ref = torch_logits(smollm2_reference, tokens, mask, positions)
    assert max_diff_on_tokens(ours, ref, mask) <= 1e-3
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.slow
def test_load_by_name_gives_smollm2_with_tokenizer(smollm2_gguf_path):
    pytest.importorskip("pmd_jax.tokenizer")
    loaded = load("SmolLM2-135M-Instruct", param_dtype="bfloat16", dtype="float32")
    assert (loaded.config.param_dtype, loaded.config.dtype) == ("bfloat16", "float32")
    assert loaded.config.vocab_size == 49152
    assert loaded.params["embed"]["embedding"].dtype == jnp.bfloat16
    assert loaded.tokenizer.encode(CHATML_TEXT, allow_special=True) == CHATML_IDS
