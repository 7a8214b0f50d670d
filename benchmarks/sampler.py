"""Decode throughput of our sampler vs transformers `generate` on SmolLM2-135M-Instruct (CPU, f32).

Both generate greedily from the same 32 prompts of exactly 64 tokens, 128 new tokens each, with no
early stop, after a warm-up call. tokens/s = 32 * 128 / wall time of one whole generate call
(prefill included, for both). Our jit compile time is measured by the first call and reported apart.
Writes benchmarks/results/sampler.json.  Run: `make bench-sampler`.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks.common import best_time, machine_description, write_result
from pmd_jax.model import load
from pmd_jax.model.registry import find_smollm2_gguf
from pmd_jax.sampling import SampleConfig, sample_program

PASSAGE = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she "
    "needs. Her parents decided to give her $15 for that purpose, and her grandparents twice as much "
    "as her parents. James writes a 3-page letter to 2 different friends twice a week. "
)


def make_prompts(tokenizer, batch: int, length: int) -> np.ndarray:
    """[batch, length] token ids: windows of a fixed passage, each a different offset."""
    ids = tokenizer.encode(PASSAGE * 8)
    return np.stack([ids[row * 7 : row * 7 + length] for row in range(batch)]).astype(np.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    batch, new_tokens = args.batch, args.new_tokens

    model = load("smollm2-135m-instruct")
    prompts = make_prompts(model.tokenizer, batch, args.prompt_len)
    mask = np.ones_like(prompts, dtype=bool)
    config = SampleConfig(max_new_tokens=new_tokens, temperature=0.0)

    print(f"[sampler] ours: compiling (batch {batch}, {new_tokens} new tokens)...")
    args_ = (model.params, model.config, prompts, mask, jax.random.PRNGKey(0), config)
    start = time.perf_counter()
    compiled = sample_program.lower(*args_).compile()
    compile_s = time.perf_counter() - start
    dynamic_args = (model.params, prompts, mask, jax.random.PRNGKey(0))

    def ours():
        return jax.block_until_ready(compiled(*dynamic_args))

    our_out = ours()  # warm-up
    ours_s, ours_all = best_time(ours, args.repeats)
    ours_tps = batch * new_tokens / ours_s
    print(f"[sampler] ours: {ours_tps:.1f} tokens/s ({ours_s:.2f} s per call)")
    result = {
        "benchmark": "sampler",
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to float32)",
        "batch": batch,
        "prompt_len": args.prompt_len,
        "new_tokens": new_tokens,
        "machine": machine_description(),
        "ours": {
            "tokens_per_s": ours_tps,
            "seconds_per_call": ours_s,
            "all_seconds": ours_all,
            "compile_seconds": compile_s,
        },
    }
    if not args.skip_transformers:
        import torch
        from transformers import AutoModelForCausalLM

        gguf = find_smollm2_gguf()
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        ).eval()
        input_ids = torch.tensor(prompts, dtype=torch.long)
        kwargs = dict(
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )

        def theirs():
            with torch.no_grad():
                return hf.generate(input_ids, **kwargs)

        print("[sampler] transformers: warm-up...")
        with torch.no_grad():
            hf.generate(input_ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
        start = time.perf_counter()
        hf_tokens = theirs()[:, prompts.shape[1] :].numpy()
        hf_s = time.perf_counter() - start
        hf_tps = batch * new_tokens / hf_s
        print(f"[sampler] transformers: {hf_tps:.1f} tokens/s ({hf_s:.2f} s per call)")
        result["transformers"] = {
            "tokens_per_s": hf_tps,
            "seconds_per_call": hf_s,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        result["speedup_vs_transformers"] = ours_tps / hf_tps
        # Sanity check, not a parity test: both are greedy on the same weights.
        result["greedy_token_agreement"] = float(np.mean(np.asarray(our_out.tokens) == hf_tokens))
        print(f"[sampler] speed-up vs transformers: {result['speedup_vs_transformers']:.2f}x")
    path = write_result("sampler", result)
    print(f"[sampler] wrote {path}")


if __name__ == "__main__":
    main()
