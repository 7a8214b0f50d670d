"""Eval harness: avg@k / pass@k arithmetic, determinism, JSONL consistent with the summary."""

import json

import jax
import numpy as np
import pytest

from pmd_jax.data.arith import ArithConfig, generate_split
from pmd_jax.evaluate import EvalConfig, evaluate, summarise
from pmd_jax.model.config import ModelConfig
from pmd_jax.model.transformer import init_params


def test_summarise_computes_avg_and_pass_at_k_per_level():
    records = [
        {"family": "a", "num_steps": 1, "rewards": [1.0, 0.0, 0.0, 1.0]},
        {"family": "a", "num_steps": 1, "rewards": [0.0, 0.0, 0.0, 0.0]},
        {"family": "b", "num_steps": 2, "rewards": [1.0, 1.0, 1.0, 0.0]},
    ]
    summary = summarise(records)
    assert summary["k"] == 4 and summary["num_problems"] == 3
    assert summary["avg_at_k"] == pytest.approx((0.5 + 0.0 + 0.75) / 3)
    assert summary["pass_at_k"] == pytest.approx(2 / 3)
    assert summary["by_steps"]["steps=1"] == {"num_problems": 2, "avg_at_k": 0.25, "pass_at_k": 0.5}
    assert summary["by_group"]["b/steps=2"]["avg_at_k"] == pytest.approx(0.75)


def _tiny_config(tokenizer) -> ModelConfig:
    return ModelConfig(
        architecture="llama",
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
    )


def _problems(n):
    problems = generate_split(ArithConfig(train_size=50, test_size=24), "test")[:n]
    return [dict(vars(p), id=i) for i, p in enumerate(problems)]


def test_evaluate_is_deterministic_and_jsonl_matches_summary(arith_tokenizer, tmp_path):
    tok = arith_tokenizer
    config = _tiny_config(tok)
    params = init_params(config, jax.random.PRNGKey(0))
    problems = _problems(5)  # batch 4: the last call is padded with repeats that are dropped
    eval_config = EvalConfig(num_samples=3, max_new_tokens=12, batch_size=4, seed=1)
    first = evaluate(
        params, config, tok, problems, eval_config, jsonl_path=tmp_path / "a.jsonl", progress=False
    )
    again = evaluate(
        params, config, tok, problems, eval_config, jsonl_path=tmp_path / "b.jsonl", progress=False
    )
    lines_a = (tmp_path / "a.jsonl").read_text().splitlines()
    assert lines_a == (tmp_path / "b.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines_a]
    assert [r["id"] for r in records] == [p["id"] for p in problems]
    assert all(len(r["responses"]) == 3 and len(r["rewards"]) == 3 for r in records)
    assert all(max(r["lengths"]) <= 12 for r in records)
    assert first == again
    assert first["avg_at_k"] == pytest.approx(np.mean([np.mean(r["rewards"]) for r in records]))
    greedy = evaluate(
        params,
        config,
        tok,
        problems,
        EvalConfig(num_samples=3, temperature=0.0, max_new_tokens=12, batch_size=4),
        progress=False,
    )
    assert greedy["k"] == 1


def test_evaluate_rejects_an_empty_problem_list(arith_tokenizer):
    with pytest.raises(ValueError, match="no problems"):
        evaluate({}, None, arith_tokenizer, [], EvalConfig(), progress=False)


def test_cli_parses_and_reports(monkeypatch, arith_tokenizer, tmp_path):
    """The CLI wires its flags into EvalConfig and writes the JSONL and the summary."""
    from pmd_jax import evaluate as evaluate_module
    from pmd_jax.model import registry

    config = _tiny_config(arith_tokenizer)
    loaded = registry.LoadedModel(
        config, init_params(config, jax.random.PRNGKey(0)), arith_tokenizer
    )
    monkeypatch.setattr(registry, "load", lambda name: loaded)
    monkeypatch.setattr(evaluate_module, "load_problems", lambda *a, **k: _problems(3))
    out = tmp_path / "eval.jsonl"
    summary = evaluate_module.main(
        [
            "--k",
            "2",
            "--max-new-tokens",
            "8",
            "--batch-size",
            "2",
            "--no-stop-at-answer",
            "--out",
            str(out),
        ]
    )
    assert summary["config"]["stop_at_answer"] is False and summary["config"]["num_samples"] == 2
    assert len(out.read_text().splitlines()) == 3
    assert json.loads(out.with_suffix(".summary.json").read_text())["num_problems"] == 3
