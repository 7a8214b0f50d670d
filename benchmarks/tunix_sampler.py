"""Decode throughput of google-tunix's sampler on SmolLM2-135M-Instruct (CPU, float32).

Runs inside a separate venv that has google-tunix (never ours: it pins older libraries):

    python3 -m venv /tmp/tunix_venv && /tmp/tunix_venv/bin/pip install google-tunix
    /tmp/tunix_venv/bin/python benchmarks/tunix_sampler.py --hf-dir D --prompts P.npy --out R.json

D is our weights exported by `pmd_jax.model.hf.export_hf`, P the [B, T] int32 prompts of
benchmarks/sampler.py; `benchmarks.run_all` prepares both. tunix's llama3 ignores the configured
rope theta (always 1e6); it is patched to SmolLM2's 1e5 here so its tokens are comparable (the
speed does not depend on it). Greedy, no early stop, a warm-up call first (it compiles);
tokens/s = B * new tokens / wall time of one call (prefill included), as in
benchmarks/sampler.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pathlib
import time

import jax
import numpy as np
from tunix.generate import sampler as sampler_lib
from tunix.models.llama3 import model as model_lib
from tunix.models.llama3 import params as params_lib

LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


class IdTokenizer:
    """Prompts travel as space-separated token ids, so no tokenizer files are needed."""

    def encode(self, text: str, **kwargs) -> list[int]:
        return [int(token) for token in text.split()]

    def decode(self, ids, **kwargs) -> str:
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self) -> int:
        return 1

    def eos_id(self) -> int:
        return 2

    def pad_id(self) -> int:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf-dir", required=True)
    parser.add_argument("--prompts", required=True, help=".npy of [B, T] int32 token ids")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    hf = json.loads((pathlib.Path(args.hf_dir) / "config.json").read_text())
    rope_theta = hf.get("rope_theta") or hf.get("rope_parameters", {}).get("rope_theta", 1e5)
    config = model_lib.ModelConfig(
        num_layers=hf["num_hidden_layers"],
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"],
        num_heads=hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        num_kv_heads=hf["num_key_value_heads"],
        rope_theta=int(rope_theta),
        norm_eps=hf["rms_norm_eps"],
        weight_tying=bool(hf.get("tie_word_embeddings", True)),
    )
    model_lib.apply_rope = functools.partial(model_lib.apply_rope, rope_theta=config.rope_theta)
    model = params_lib.create_model_from_safe_tensors(args.hf_dir, config, dtype=np.float32)
    prompts = np.load(args.prompts)
    batch, prompt_len = prompts.shape
    cache = sampler_lib.CacheConfig(
        # tunix pads prompts (bos added) to a power of two and needs one spare slot.
        cache_size=2 ** math.ceil(math.log2(prompt_len + 1)) + args.new_tokens + 1,
        num_layers=config.num_layers,
        num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim,
    )
    sampler = sampler_lib.Sampler(model, IdTokenizer(), cache)
    texts = [" ".join(str(int(t)) for t in row) for row in prompts]
    kwargs = dict(max_prompt_length=prompt_len, temperature=0.0, eos_tokens=[-1])

    def generate(steps: int):
        out = sampler(texts, max_generation_steps=steps, **kwargs)
        jax.block_until_ready(out.tokens)
        return out

    lowered = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: lowered.append(event) if event == LOWERING_EVENT else None
    )
    start = time.perf_counter()
    # Compile + warm-up at the measured length (its output buffers are sized by it).
    generate(args.new_tokens)
    warmup_s = time.perf_counter() - start
    compiled_before = len(lowered)
    start = time.perf_counter()
    out = generate(args.new_tokens)
    seconds = time.perf_counter() - start
    tokens = [np.asarray(t)[-args.new_tokens :] for t in out.tokens]
    result = {
        "tokens_per_s": batch * args.new_tokens / seconds,
        "seconds_per_call": seconds,
        "warmup_call_seconds": warmup_s,
        # > 0 would mean the timed call compiled too (and its time is an overestimate).
        "compiles_during_timed_call": len(lowered) - compiled_before,
        "jax": jax.__version__,
        "rope_theta_patched": config.rope_theta,
        "tokens": [t.tolist() for t in tokens],
    }
    pathlib.Path(args.out).write_text(json.dumps(result))
    print(f"[tunix] {result['tokens_per_s']:.1f} tokens/s ({seconds:.2f} s per call)")


if __name__ == "__main__":
    main()
