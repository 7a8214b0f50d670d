"""Sliding-window attention (Mistral, Qwen2/3) against transformers, and config.json fields:
every field of a supported model_type is implemented, inert, or refused by name."""

import dataclasses
import json

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_reference import save_random_models

from pmd_jax.model import export_hf, forward, load_hf, registry
from pmd_jax.model.config import HF_FIELDS, ModelConfig, config_from_hf_dict, config_to_hf_dict
from pmd_jax.model.gguf import read_gguf_config
from pmd_jax.model.transformer import init_params
from pmd_jax.sampling import SampleConfig, left_pad, sample

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 256
WINDOW = 16
PROMPT_LENGTHS = (60, 47, 40)  # every prompt runs well past the window
NEW_TOKENS = 32
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-5,
    bos_token_id=None,
    eos_token_id=None,  # greedy runs its 32 tokens in both libraries
    pad_token_id=0,
)
HF_CONFIGS = {
    "mistral": lambda: transformers.MistralConfig(**SMALL, sliding_window=WINDOW),
    # max_window_layers=1: layer 0 attends fully, layer 1 through the window.
    "qwen2_max_window_layers": lambda: transformers.Qwen2Config(
        **SMALL, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1
    ),
    # layer_types (transformers 5) in the other order: layer 0 windowed, layer 1 full.
    "qwen3_layer_types": lambda: transformers.Qwen3Config(
        **SMALL,
        use_sliding_window=True,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention"],
    ),
}
EXPECTED_LAYERS = {
    "mistral": None,
    "qwen2_max_window_layers": (False, True),
    "qwen3_layer_types": (True, False),
}


def randomize(model, seed: int) -> None:
    """Move every weight off its init (norm scales of 1, biases of 0) so each one matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.15 * noise)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory) -> dict:
    """name -> (checkpoint dir, transformers model), random float32 weights, built offline."""
    return save_random_models(HF_CONFIGS, randomize, tmp_path_factory)


def prompts(seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, size=n).tolist() for n in PROMPT_LENGTHS]


def left_padded(seqs, width=None):
    tokens, mask = left_pad(seqs, pad_id=0, length=width or max(map(len, seqs)))
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    return tokens, mask, positions


def torch_logits(model, tokens, mask, positions) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            position_ids=torch.from_numpy(positions).long(),
        )
    return out.logits.float().numpy()


def our_logits(params, config, tokens, mask, positions=None) -> np.ndarray:
    positions = None if positions is None else jnp.asarray(positions)
    return np.asarray(forward(params, config, jnp.asarray(tokens), jnp.asarray(mask), positions))


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_windowed_logits_match_transformers_and_full_attention_does_not(hf_models, name):
    model_dir, model = hf_models[name]
    config, params = load_hf(model_dir)
    assert (config.sliding_window, config.sliding_window_layers) == (WINDOW, EXPECTED_LAYERS[name])
    tokens, mask, positions = left_padded(prompts())
    ref = torch_logits(model, tokens, mask, positions)
    for impl in ("naive", "xla"):
        ours = our_logits(params, config.replace(attention_impl=impl), tokens, mask, positions)
        diff = float(np.abs(ours[mask] - ref[mask]).max())
        print(f"{name} {impl}: max |logit diff| {diff:.2e}")
        assert diff <= 1e-4
    # The window matters here: attending fully is far off from the first query past it.
    full = our_logits(params, config.replace(sliding_window=None, sliding_window_layers=None),
                      tokens, mask, positions)  # fmt: skip
    past = mask & (positions >= WINDOW)
    assert float(np.abs(full[past] - ref[past]).max()) > 1e-2
    within = mask & (positions < WINDOW)
    assert float(np.abs(full[within] - ref[within]).max()) <= 1e-4


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_greedy_decode_matches_transformers_generate(hf_models, name):
    model_dir, model = hf_models[name]
    config, params = load_hf(model_dir)
    seqs = prompts(seed=1)
    expected = []
    for seq in seqs:  # one unpadded prompt at a time: transformers' own positions
        with torch.no_grad():
            out = model.generate(
                torch.tensor([seq]),
                attention_mask=torch.ones(1, len(seq), dtype=torch.long),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                pad_token_id=0,
            )
        expected.append(out[0, len(seq) :].tolist())
    tokens, mask = left_pad(seqs, pad_id=0, bucket=16)  # ours: one left-padded batch
    greedy = SampleConfig(max_new_tokens=NEW_TOKENS, temperature=0.0)
    out = sample(params, config, tokens, mask, jax.random.PRNGKey(0), greedy)
    assert np.asarray(out.tokens).tolist() == expected
    ignored = config.replace(sliding_window=None, sliding_window_layers=None)
    unwindowed = sample(params, ignored, tokens, mask, jax.random.PRNGKey(0), greedy)
    assert np.asarray(unwindowed.tokens).tolist() != expected


def test_window_on_left_padded_rows_equals_each_row_unpadded(hf_models):
    config, params = load_hf(hf_models["qwen2_max_window_layers"][0])
    seqs = prompts(seed=2)
    tokens, mask, _ = left_padded(seqs, width=96)  # 36 or more padding columns per row
    for impl in ("naive", "xla"):
        batch = our_logits(params, config.replace(attention_impl=impl), tokens, mask)
        for row, seq in enumerate(seqs):
            alone = our_logits(params, config, np.array([seq]), np.ones((1, len(seq)), bool))
            np.testing.assert_allclose(batch[row][mask[row]], alone[0], atol=1e-5)
    # A mask with holes: the window counts real tokens, as the positions do.
    holed_tokens, holed_mask = tokens[:1].copy(), mask[:1].copy()
    holed_mask[0, -30:-25] = False
    holed_tokens[0, -30:-25] = 7
    holed = our_logits(params, config, holed_tokens, holed_mask)
    kept = np.array(seqs[0])[holed_mask[0, -len(seqs[0]) :]]
    alone = our_logits(params, config, kept[None], np.ones((1, len(kept)), bool))
    np.testing.assert_allclose(holed[0][holed_mask[0]], alone[0], atol=1e-5)


def test_exported_windowed_config_round_trips_through_transformers(hf_models, tmp_path):
    model_dir, model = hf_models["qwen2_max_window_layers"]
    config, params = load_hf(model_dir)
    out_dir = export_hf(params, config, tmp_path / "export")
    assert load_hf(out_dir)[0] == config
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    assert reloaded.config.layer_types == ["full_attention", "sliding_attention"]
    tokens, mask, positions = left_padded(prompts())
    ref = torch_logits(model, tokens, mask, positions)
    np.testing.assert_allclose(
        torch_logits(reloaded, tokens, mask, positions)[mask], ref[mask], atol=1e-5
    )


# ---------------------------------------------------------------------------- config fields


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(
        architecture="mistral", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
        num_layers=3, num_heads=2, num_kv_heads=1, head_dim=16,
    )  # fmt: skip
    return ModelConfig(**{**fields, **overrides})


def test_model_config_checks_and_normalizes_the_window():
    assert (
        tiny_config(sliding_window=8, sliding_window_layers=(True,) * 3).sliding_window_layers
        is None
    )
    cleared = tiny_config(sliding_window=8, sliding_window_layers=[False] * 3)
    assert (cleared.sliding_window, cleared.sliding_window_layers) == (None, None)
    assert tiny_config(sliding_window=8, sliding_window_layers=[0, 1, 1]).window_layers == (
        False, True, True,
    )  # fmt: skip
    with pytest.raises(ValueError, match="sliding_window=0: must be >= 1"):
        tiny_config(sliding_window=0)
    with pytest.raises(
        ValueError, match="sliding_window_layers has 2 entries, expected num_layers=3"
    ):
        tiny_config(sliding_window=8, sliding_window_layers=(True, False))
    with pytest.raises(ValueError, match="sliding_window_layers is set but sliding_window is None"):
        tiny_config(sliding_window_layers=(True, False, True))
    with pytest.raises(
        ValueError, match="sliding_window=8 is not implemented for attention_impl='splash'"
    ):
        tiny_config(sliding_window=8, attention_impl="splash")


def test_cudnn_with_a_window_gets_the_windowed_mask(monkeypatch):
    """cudnn cannot run here: check that it is handed the same windowed mask as xla (jax's cudnn
    path adds any boolean mask to the logits as a bias)."""
    from pmd_jax.model import transformer

    config = tiny_config(sliding_window=4, sliding_window_layers=(False, True, True))
    params = init_params(config, jax.random.PRNGKey(0))
    tokens = jnp.ones((1, 12), jnp.int32)
    mask = jnp.asarray(np.arange(12) >= 2)[None]  # two padding columns
    seen = {"xla": [], "cudnn": []}
    real = jax.nn.dot_product_attention

    def spy(q, k, v, mask=None, implementation=None):
        jax.debug.callback(lambda m: seen[implementation].append(np.asarray(m)), mask)
        return real(q, k, v, mask=mask, implementation="xla")

    monkeypatch.setattr(transformer, "target_backend", lambda: "gpu")
    monkeypatch.setattr(transformer.jax.nn, "dot_product_attention", spy)
    for impl in ("xla", "cudnn"):
        jax.block_until_ready(
            transformer.forward(params, config.replace(attention_impl=impl), tokens, mask)
        )
    assert len(seen["xla"]) == len(seen["cudnn"]) == 3  # one per layer
    i, j = np.indices((12, 12))
    causal = (j <= i) & (j >= 2)
    windowed = causal & (j > i - 4)
    for layer, expected in enumerate((causal, windowed, windowed)):
        np.testing.assert_array_equal(seen["cudnn"][layer][0, 0], expected)
        np.testing.assert_array_equal(seen["xla"][layer][0, 0], expected)


CONFIG_CLASSES = {
    "llama": lambda: transformers.LlamaConfig,
    "mistral": lambda: transformers.MistralConfig,
    "qwen2": lambda: transformers.Qwen2Config,
    "qwen3": lambda: transformers.Qwen3Config,
}


@pytest.mark.parametrize("model_type", list(CONFIG_CLASSES))
def test_every_transformers_config_field_is_classified(model_type):
    """Every field of the installed transformers Config class (and of PreTrainedConfig) has a rule,
    and a config.json of the defaults loads."""
    config_class = CONFIG_CLASSES[model_type]()
    assert set(HF_FIELDS) == set(CONFIG_CLASSES)
    defaults = config_class().to_dict()
    names = set(defaults) | {field.name for field in dataclasses.fields(config_class)}
    names |= set(transformers.PreTrainedConfig().to_dict())
    unclassified = sorted(n for n in names if n not in HF_FIELDS[model_type] and n[0] != "_")
    assert not unclassified
    config_from_hf_dict(json.loads(config_class().to_json_string(use_diff=False)))


def test_presets_and_transformers_4_configs_load():
    for name in registry.preset_names():
        assert registry.model_shape(name).sliding_window is None
    qwen25 = dict(  # Qwen2.5-0.5B-Instruct's config.json (transformers 4.43)
        architectures=["Qwen2ForCausalLM"], attention_dropout=0.0, bos_token_id=151643,
        eos_token_id=151645, hidden_act="silu", hidden_size=896, initializer_range=0.02,
        intermediate_size=4864, max_position_embeddings=32768, max_window_layers=21,
        model_type="qwen2", num_attention_heads=14, num_hidden_layers=24, num_key_value_heads=2,
        rms_norm_eps=1e-06, rope_theta=1000000.0, sliding_window=32768, tie_word_embeddings=True,
        torch_dtype="bfloat16", transformers_version="4.43.1", use_cache=True,
        use_sliding_window=False, vocab_size=151936,
    )  # fmt: skip
    assert config_from_hf_dict(qwen25).sliding_window is None
    windowed = config_from_hf_dict({**qwen25, "use_sliding_window": True})
    assert windowed.sliding_window == 32768
    assert windowed.window_layers == (False,) * 21 + (True,) * 3
    mistral_v01 = dict(  # Mistral-7B-v0.1's config.json (transformers 4.34)
        architectures=["MistralForCausalLM"], bos_token_id=1, eos_token_id=2, hidden_act="silu",
        hidden_size=4096, initializer_range=0.02, intermediate_size=14336,
        max_position_embeddings=32768, model_type="mistral", num_attention_heads=32,
        num_hidden_layers=32, num_key_value_heads=8, rms_norm_eps=1e-05, rope_theta=10000.0,
        sliding_window=4096, tie_word_embeddings=False, torch_dtype="bfloat16",
        transformers_version="4.34.0.dev0", use_cache=True, vocab_size=32000,
    )  # fmt: skip
    mistral = config_from_hf_dict(mistral_v01)
    assert (mistral.sliding_window, mistral.sliding_window_layers) == (4096, None)
    # What pmd_jax exported for mistral before it read windows, and SmolLM2's hub config.json.
    old_export = {**mistral_v01, "attention_bias": False, "mlp_bias": False,
                  "use_sliding_window": False, "sliding_window": None}  # fmt: skip
    assert config_from_hf_dict(old_export) == mistral.replace(sliding_window=None)
    smollm2 = {**registry._preset("smollm2-135m-instruct"), "rope_interleaved": False,
               "pretraining_tp": 1, "transformers.js_config": {"kv_cache_dtype": {}}}  # fmt: skip
    smollm2.pop("hub_id")
    assert config_from_hf_dict(smollm2) == registry.model_shape("smollm2-135m-instruct")
    # Exports read back, windows included.
    for config in (
        mistral,
        windowed,
        tiny_config(architecture="llama", qkv_bias=True, o_bias=True),
    ):
        assert config_from_hf_dict(config_to_hf_dict(config)) == config


MISTRAL = dict(model_type="mistral", **{k: v for k, v in SMALL.items() if k != "head_dim"})


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"foo_bar": 1}, r"unknown config.json field\(s\) \['foo_bar'\] for model_type='mistral'"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' changes the computation and is not impl"),
        ({"attention_dropout": 0.1}, "attention_dropout=0.1 changes the computation"),
        ({"attention_bias": True}, "attention_bias=True changes the computation"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5 changes the computation"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config is not supported"),
        ({"auto_map": {}}, "auto_map is not supported"),
        ({"rope_interleaved": True}, "rope_interleaved=True changes the computation"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope scaling type 'yarn'"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "truncate": False}},
         r"rope field\(s\) \['truncate'\] of rope type 'linear'"),
        ({"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
         "mistral layer_types=.* disagree with sliding_window=8.*ignores layer_types"),
        ({"sliding_window": 8, "use_sliding_window": False},
         "mistral use_sliding_window=False disagrees with sliding_window=8"),
        ({"sliding_window": 0}, "sliding_window=0: must be >= 1"),
    ],
)  # fmt: skip
def test_fields_that_change_the_computation_are_refused_by_name(fields, match):
    with pytest.raises(ValueError, match=match):
        config_from_hf_dict({**MISTRAL, **fields}, where="config.json")


def test_refusals_per_model_type():
    qwen2 = {**MISTRAL, "model_type": "qwen2"}
    with pytest.raises(ValueError, match=r"unknown config.json field\(s\) \['attention_bias'\]"):
        config_from_hf_dict({**qwen2, "attention_bias": True})
    with pytest.raises(ValueError, match=r"unknown config.json field\(s\) \['sliding_window'\]"):
        config_from_hf_dict({**MISTRAL, "model_type": "llama", "sliding_window": 8})
    with pytest.raises(ValueError, match="layer_types=.*expected num_hidden_layers=2 entries"):
        config_from_hf_dict({**qwen2, "use_sliding_window": True, "sliding_window": 8,
                             "layer_types": ["chunked_attention"] * 2})  # fmt: skip
    with pytest.raises(ValueError, match="llama export: LlamaConfig has no sliding window"):
        config_to_hf_dict(tiny_config(architecture="llama", sliding_window=8))
    with pytest.raises(ValueError, match="mistral export: MistralConfig applies sliding_window"):
        config_to_hf_dict(tiny_config(sliding_window=8, sliding_window_layers=(True, False, True)))
    # Inert fields and qwen's max_window_layers without a window change nothing.
    plain = config_from_hf_dict(qwen2)
    assert config_from_hf_dict({**qwen2, "sliding_window": 8, "max_window_layers": 0,
                                "use_cache": False, "temperature": 0.7}) == plain  # fmt: skip


# ---------------------------------------------------------------------------- GGUF


def write_gguf_header(path, **sliding) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(VOCAB)])
    if "window" in sliding:
        writer.add_sliding_window(sliding["window"])
    if "pattern" in sliding:
        writer.add_sliding_window_pattern(sliding["pattern"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_sliding_window_is_read_and_a_pattern_refused(tmp_path):
    write_gguf_header(tmp_path / "plain.gguf")
    assert read_gguf_config(tmp_path / "plain.gguf").sliding_window is None
    write_gguf_header(tmp_path / "swa.gguf", window=WINDOW)
    config = read_gguf_config(tmp_path / "swa.gguf")
    assert (config.sliding_window, config.sliding_window_layers) == (WINDOW, None)
    write_gguf_header(tmp_path / "pattern.gguf", window=WINDOW, pattern=2)
    with pytest.raises(ValueError, match="'llama.attention.sliding_window_pattern'.*not supported"):
        read_gguf_config(tmp_path / "pattern.gguf")
