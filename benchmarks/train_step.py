"""Train-step throughput: our jit'd PMD update vs the same computation in PyTorch (CPU, float32).

One step = student forward on [prompt | response] + teacher forward (no grad) on [teacher prompt |
response] + top-k(100)+tail divergence with alpha 0.5 (METHOD section 6, weighted by the clipped
rollout correction) + backward + clip-by-global-norm + AdamW + EMA teacher (tau 0.05). Ours is
`pmd_jax.train_step.make_train_step`; theirs is transformers' LlamaForCausalLM loaded from our
weights exported with `pmd_jax.model.hf.export_hf` (SmolLM2-135M-Instruct), with torch.optim.AdamW.
Both see the same batch (windows of an English passage); the first-step losses are printed and compared.

tokens/s = rows * (prompt + response) student tokens per step / best step time (the teacher's
tokens are extra work that both sides do). Writes benchmarks/results/train_step.json.
Run: `python -m benchmarks.train_step [--quick]`.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import jax
import numpy as np

from benchmarks.common import best_time, machine_description, write_result
from benchmarks.sampler import PASSAGE
from pmd_jax import sharding
from pmd_jax.losses import LossConfig
from pmd_jax.model import load
from pmd_jax.model.hf import export_hf
from pmd_jax.optimizer import OptimizerConfig, make_optimizer
from pmd_jax.train_step import RolloutBatch, StepConfig, init_train_state, make_train_step

LOSS = LossConfig(alpha=0.5, top_k=100)
OPTIMIZER = OptimizerConfig(learning_rate=1e-5, warmup_steps=0)
TEACHER_TAU = 0.05


def text_batch(
    ids: np.ndarray, rows: int, prompt: int, teacher: int, response: int, seed: int = 0
) -> RolloutBatch:
    """Windows of a token stream `ids`: row r reads [teacher context | response] from its own
    offset; the student prompt is the last `prompt` ids of the teacher's. Full prompts, ragged
    (right-padded) responses, every sample with a teacher signal, sampler log-probs in [-4, -0.5].
    """
    rng = np.random.default_rng(seed)
    if len(ids) < rows * 5 + teacher + response:
        raise ValueError(f"text_batch: {len(ids)} ids are too few for {rows} rows")
    windows = np.stack([ids[r * 5 : r * 5 + teacher + response] for r in range(rows)])
    windows = windows.astype(np.int32)
    lengths = rng.integers(response // 2, response + 1, size=rows)
    response_mask = np.arange(response)[None, :] < lengths[:, None]
    return RolloutBatch(
        prompt_tokens=windows[:, teacher - prompt : teacher],
        prompt_mask=np.ones((rows, prompt), bool),
        response_tokens=np.where(response_mask, windows[:, teacher:], 0).astype(np.int32),
        response_mask=response_mask,
        sampler_logprobs=np.where(
            response_mask, -rng.uniform(0.5, 4.0, size=(rows, response)), 0.0
        ).astype(np.float32),
        rewards=rng.integers(0, 2, size=rows).astype(np.float32),
        teacher_tokens=windows[:, :teacher],
        teacher_mask=np.ones((rows, teacher), bool),
        sample_mask=np.ones((rows,), bool),
    )


def ours(model, batch: RolloutBatch, repeats: int) -> dict:
    """Compile, run one step (its loss is the parity number), then time `repeats` steps."""
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), jax.devices()[:1])
    optimizer = make_optimizer(OPTIMIZER, total_steps=100)
    config = StepConfig(
        algorithm="pmd", loss=LOSS, group_size=batch.rewards.shape[0], teacher_tau=TEACHER_TAU
    )
    state = init_train_state(model.params, optimizer, "pmd")
    step = make_train_step(model.config, config, optimizer, mesh, state, batch)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, batch)
    first_loss = float(metrics["train/loss"])
    holder = [state]

    def one_step():
        holder[0], step_metrics = compiled(holder[0], batch)
        jax.block_until_ready(step_metrics)

    seconds, all_seconds = best_time(one_step, repeats)
    return {
        "first_loss": first_loss,
        "seconds_per_step": seconds,
        "all_seconds": all_seconds,
        "compile_seconds": compile_s,
    }


def torch_divergence(student, teacher, alpha: float, top_k: int, tail_epsilon: float):
    """Top-k + tail divergence of logits [M, V] -> [M] (losses.topk_divergence in PyTorch)."""
    import torch

    def with_tail(logp):
        mass = torch.logsumexp(logp, dim=-1).clamp(max=math.log1p(-tail_epsilon))
        tail = torch.where(
            mass > -math.log(2.0), torch.log(-torch.expm1(mass)), torch.log1p(-torch.exp(mass))
        )
        return torch.cat([logp, tail[:, None]], dim=-1)

    ids = torch.topk(student.detach(), top_k, dim=-1).indices
    student_logp = with_tail(
        student.gather(-1, ids) - torch.logsumexp(student, dim=-1, keepdim=True)
    )
    teacher_logp = with_tail(
        teacher.gather(-1, ids) - torch.logsumexp(teacher, dim=-1, keepdim=True)
    )
    mixture = torch.logaddexp(student_logp + math.log(1 - alpha), teacher_logp + math.log(alpha))
    student_kl = (student_logp.exp() * (student_logp - mixture)).sum(-1)
    teacher_kl = (teacher_logp.exp() * (teacher_logp - mixture)).sum(-1)
    return (1 - alpha) * student_kl + alpha * teacher_kl


def torch_loss(student, teacher, batch):
    """The PMD loss of a batch of torch tensors (train_step.batch_loss with LOSS, on-policy)."""
    import torch

    def response_logits(model, prompt_tokens, prompt_mask):
        tokens = torch.cat([prompt_tokens, batch["response_tokens"]], dim=1)
        mask = torch.cat([prompt_mask, batch["response_mask"]], dim=1).long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = model.model(
            input_ids=tokens, attention_mask=mask, position_ids=positions
        ).last_hidden_state
        start = prompt_tokens.shape[1] - 1
        hidden = hidden[:, start : start + batch["response_tokens"].shape[1]]
        return hidden @ model.lm_head.weight.T  # [N, G, V]

    student_logits = response_logits(student, batch["prompt_tokens"], batch["prompt_mask"])
    with torch.no_grad():
        teacher_logits = response_logits(teacher, batch["teacher_tokens"], batch["teacher_mask"])
    n, g, v = student_logits.shape
    divergence = torch_divergence(
        student_logits.reshape(n * g, v),
        teacher_logits.reshape(n * g, v),
        LOSS.alpha,
        LOSS.top_k,
        LOSS.tail_epsilon,
    ).reshape(n, g)
    mask = batch["response_mask"] & batch["sample_mask"][:, None]
    with torch.no_grad():
        logprobs = torch.log_softmax(student_logits, -1)
        now = logprobs.gather(-1, batch["response_tokens"][..., None].long())[..., 0]
        log_ratio = torch.where(mask, now - batch["sampler_logprobs"], 0.0)
        weight = log_ratio.exp().clamp(max=LOSS.rollout_correction_clip)
    weighted = torch.where(mask, weight * divergence, 0.0)
    return weighted.sum() / mask.sum().clamp(min=1)


def theirs(hf_dir: str, batch: RolloutBatch, repeats: int) -> dict:
    """The same step in PyTorch on LlamaForCausalLM loaded from our exported weights."""
    import torch
    from transformers import LlamaForCausalLM

    student = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    teacher = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    student.train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = [p for p in student.parameters()]
    decayed = [p for p in params if p.ndim > 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decayed, "weight_decay": OPTIMIZER.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=OPTIMIZER.learning_rate,
        betas=(OPTIMIZER.b1, OPTIMIZER.b2),
        eps=OPTIMIZER.eps,
    )
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in batch._asdict().items()}
    tensors = {k: v.long() if v.dtype == torch.int32 else v for k, v in tensors.items()}
    teacher_params = [p for p in teacher.parameters()]

    def one_step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = torch_loss(student, teacher, tensors)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, OPTIMIZER.grad_clip)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(teacher_params, [p.detach() for p in params], TEACHER_TAU)
        return float(loss.detach())

    first_loss = one_step()
    seconds, all_seconds = best_time(one_step, repeats)
    return {
        "first_loss": first_loss,
        "seconds_per_step": seconds,
        "all_seconds": all_seconds,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--teacher-len", type=int, default=256)
    parser.add_argument("--response-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 rows, prompt 64/128, response 32")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.prompt_len, args.teacher_len, args.response_len = 4, 64, 128, 32
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = load("smollm2-135m-instruct")
    ids = np.asarray(model.tokenizer.encode(PASSAGE * 12))
    batch = text_batch(ids, args.rows, args.prompt_len, args.teacher_len, args.response_len)
    tokens = args.rows * (args.prompt_len + args.response_len)
    with tempfile.TemporaryDirectory() as hf_dir:
        # Exported first: our step donates the state, params included.
        export_hf(jax.device_get(model.params), model.config, hf_dir)
        print(f"[train_step] ours: compiling ({args.rows} rows x {tokens // args.rows} tokens)")
        our = ours(model, batch, args.repeats)
        our["tokens_per_s"] = tokens / our["seconds_per_step"]
        print(
            f"[train_step] ours: {our['tokens_per_s']:.1f} tokens/s, loss {our['first_loss']:.7f}"
        )
        their = theirs(hf_dir, batch, args.repeats)
    their["tokens_per_s"] = tokens / their["seconds_per_step"]
    print(
        f"[train_step] pytorch: {their['tokens_per_s']:.1f} tokens/s, "
        f"loss {their['first_loss']:.7f}"
    )
    loss_diff = abs(our["first_loss"] - their["first_loss"])
    relative = loss_diff / max(abs(their["first_loss"]), 1e-12)
    result = {
        "benchmark": "train_step",
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to float32)",
        "shape": {
            "rows": args.rows,
            "prompt_len": args.prompt_len,
            "teacher_len": args.teacher_len,
            "response_len": args.response_len,
            "student_tokens_per_step": tokens,
        },
        "loss": {"alpha": LOSS.alpha, "top_k": LOSS.top_k},
        "machine": machine_description(),
        "ours": our,
        "pytorch": their,
        "first_loss_abs_diff": loss_diff,
        "first_loss_rel_diff": relative,
        "speedup_vs_pytorch": our["tokens_per_s"] / their["tokens_per_s"],
    }
    print(
        f"[train_step] speed-up vs pytorch: {result['speedup_vs_pytorch']:.2f}x "
        f"(first-step losses differ by {loss_diff:.2e}, relative {relative:.1e})"
    )
    print(f"[train_step] wrote {write_result('train_step', result)}")
    return result


if __name__ == "__main__":
    main()
