"""transformers `generate` throughput on random weights of given HF configs (bf16, greedy, no early
stop), for benchmarks/accelerator_check.py, which runs it as a child process so that torch gets
its own CUDA context and libraries, apart from JAX's.

Reads one JSON object on stdin: {"models": {name: HF config.json dict}, "prompts": {name: [B, T]
token ids}, "new_tokens": G, "allow_cpu": bool}, and prints one line, RESULT_PREFIX + JSON:
{"device", "torch", "transformers", "models": {name: {tokens_per_s, seconds_per_call,
tokens_shape [B, G]} or {"error"}}} or {"skipped": reason}. allow_cpu: without CUDA, run on the CPU
(the dry run) instead of skipping.
"""

from __future__ import annotations

import json
import sys
import time

RESULT_PREFIX = "HF_RESULT "


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:2000]


def generate_throughput(request: dict) -> dict:
    """The result dict of the module docstring for one request."""
    try:
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM
    except Exception as err:
        return {"skipped": f"torch/transformers not importable: {describe(err)}"}
    if torch.cuda.is_available():
        device = "cuda"
    elif request.get("allow_cpu"):
        device = "cpu"
    else:
        return {"skipped": f"torch.cuda is not available (torch {torch.__version__})"}
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "models": {},
    }
    new_tokens = request["new_tokens"]
    for name, hf_config in request["models"].items():
        try:
            hf_config = dict(hf_config)
            hf_config = AutoConfig.for_model(hf_config.pop("model_type"), **hf_config)
            torch.manual_seed(0)
            with torch.device(device):
                model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16).eval()
            input_ids = torch.tensor(request["prompts"][name], dtype=torch.long, device=device)
            settings = dict(attention_mask=torch.ones_like(input_ids), do_sample=False,
                            eos_token_id=None, pad_token_id=0)  # fmt: skip

            def generate(new, model=model, input_ids=input_ids, settings=settings):
                with torch.no_grad():
                    out = model.generate(
                        input_ids, max_new_tokens=new, min_new_tokens=new, **settings
                    )
                sync()
                return out

            generate(4)  # warm-up
            start = time.perf_counter()
            tokens = generate(new_tokens)
            seconds = time.perf_counter() - start
            batch, prompt_len = input_ids.shape
            result["models"][name] = {
                "tokens_per_s": batch * new_tokens / seconds,
                "seconds_per_call": seconds,
                "tokens_shape": [int(tokens.shape[0]), int(tokens.shape[1] - prompt_len)],
            }
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
        except Exception as err:
            result["models"][name] = {"error": describe(err)}
    return result


def main() -> None:
    print(RESULT_PREFIX + json.dumps(generate_throughput(json.load(sys.stdin))), flush=True)


if __name__ == "__main__":
    main()
