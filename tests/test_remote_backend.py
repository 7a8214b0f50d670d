"""The external reflector and evolver (reflect.backend / behaviours.backend = "openai") against
the fake OpenAI-compatible server of tests/fake_openai.py: the same prompts as the policy path,
the same parsers, counted failures, the API key kept out of every file, exact replay on resume,
and the config checks."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fake_openai import serve

from pmd_jax import phases, remote, train
from pmd_jax.config import TrainConfig, apply_overrides, load_experiment
from pmd_jax.memory import behaviours as bh
from pmd_jax.memory import reflect as reflect_module
from pmd_jax.memory import state as st
from pmd_jax.memory.reflect import ReflectConfig
from pmd_jax.remote import Recorder, RemoteConfig, RemoteSpec
from pmd_jax.tokenizer import format_chat
from pmd_jax.validate import ConfigError, config_errors, validate_run

REFLECT = ReflectConfig()
KEY_ENV = "PMD_TEST_BACKEND_KEY"
SECRET = "sk-backend-Hq73Lm0secret"
DIM = 16
MEMORY = st.MemoryConfig(
    num_problems=8,
    insight_slots=4,
    behaviour_slots=4,
    response_len=24,
    feedback_len=16,
    title_len=12,
    content_len=24,
    name_len=24,
    instruction_len=24,
    embed_dim=DIM,
)
QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples?",
    "Ann has 9 pens and gives 2 away. How many pens?",
    "Leo has 5 cards and finds 6 more. How many cards?",
    "Mia has 8 cups and breaks 3. How many cups?",
    "A pen costs $3. Sam buys 4 pens. How many dollars?",
]
# One reflection answer per question (the JSON format, contrastive case), all different.
STRATEGIES = [
    ("Add what is gained", "Start from the first amount and add the amount that arrives."),
    ("Subtract what leaves", "Take the amount given away from the amount held at the start."),
    ("Combine two groups", "Put the two groups together by adding their sizes."),
    ("Remove the broken ones", "What breaks is no longer counted, so take it from the total."),
    ("Multiply price by count", "A total cost is the price of one item times the number bought."),
]


def _reply_text(question_index: int) -> str:
    title, content = STRATEGIES[question_index]
    return json.dumps(
        {
            "strategies": [{"title": title, "content": content}],
            "lessons": [{"title": "Pick the operation", "content": f"{content} Do not guess."}],
        }
    )


def _question_of(body: dict) -> int:
    """Which QUESTIONS entry a reflection request is about."""
    user = body["messages"][-1]["content"]
    matches = [i for i, q in enumerate(QUESTIONS) if f"Problem:\n{q}" in user]
    assert len(matches) == 1, user[:200]
    return matches[0]


def _fake_embed(texts):
    rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=DIM) for t in texts]
    rows = np.asarray(rows, np.float32)
    return jnp.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True))


def _rollouts(count: int) -> phases.Rollouts:
    """`count` problems, two rollouts each (one right, one wrong): contrastive reflections."""
    texts, rewards, feedback = [], [], []
    for _ in range(count):
        texts += ["The answer is 7.\n#### 7", "The answer is 1.\n#### 1"]
        rewards += [1.0, 0.0]
        feedback += ["", "the answer 1 is wrong"]
    return phases.Rollouts(
        problem_ids=np.arange(count, dtype=np.int32),
        questions=QUESTIONS[:count],
        answers=["7"] * count,
        prompt_tokens=np.zeros((count, 1), np.int32),
        prompt_mask=np.ones((count, 1), bool),
        tokens=np.zeros((2 * count, 1), np.int32),
        logprobs=np.zeros((2 * count, 1), np.float32),
        lengths=np.ones(2 * count, np.int32),
        texts=texts,
        rewards=np.asarray(rewards, np.float32),
        feedback=feedback,
    )


def _reflect(tokenizer, count, config, *, remote_config=None, recorder=None, params=None):
    memory_config = dataclasses.replace(MEMORY, pad_id=tokenizer.pad_id)
    return phases.reflect_on_groups(
        st.init_memory(memory_config),
        memory_config,
        params,
        None,
        tokenizer,
        _rollouts(count),
        np.ones(count, bool),
        config,
        _fake_embed,
        jax.random.PRNGKey(0),
        step=1,
        remote=remote_config,
        recorder=recorder,
    )


def _insights(memory, tokenizer) -> dict[int, list[tuple[int, str, str]]]:
    """Problem -> [(kind, title, content)] of its occupied insight slots."""
    insight = jax.tree.map(np.asarray, memory.insight)
    decode = lambda ids, n: tokenizer.decode(ids[:n].tolist())
    return {
        int(p): [
            (
                int(insight.kind[p, s]),
                decode(insight.title[p, s], insight.title_len[p, s]),
                decode(insight.content[p, s], insight.content_len[p, s]),
            )
            for s in np.flatnonzero(insight.occupied[p])
        ]
        for p in range(insight.occupied.shape[0])
        if insight.occupied[p].any()
    }


def _remote(url: str, section=REFLECT, **kwargs) -> RemoteConfig:
    """The RemoteConfig a run builds (train.remote_configs) from a section's RemoteSpec."""
    fields = dict(model="fake-model", concurrency=4, timeout_s=5.0, retries=1, backoff_s=0.01)
    fields.update(kwargs)
    temperature = fields.pop("temperature", section.temperature)
    spec = RemoteSpec(base_url=url, **fields)
    return spec.config(max_tokens=section.max_new_tokens, temperature=temperature)


@pytest.fixture
def fake():
    with serve() as served:
        yield served


def test_openai_reflection_sends_the_policy_prompts_and_parses_like_the_policy(
    fake, monkeypatch, arith_tokenizer
):
    state, url = fake
    state.reply = lambda body: _reply_text(_question_of(body))
    config = ReflectConfig(batch_size=4)  # json format, primed: the policy continues '{"strat...'
    policy_prompts = []
    prefix = '{"strategies": ['

    def policy_sampler(params, model_config, tokenizer, prompts, sample_config, rng, **kwargs):
        policy_prompts.extend(tuple(p) for p in prompts)
        # The policy writes the same answers; its text starts after the primed prefix.
        return [_reply_text(i)[len(prefix) :] for i in range(len(prompts))]

    monkeypatch.setattr(reflect_module, "generate_texts", policy_sampler)
    policy_memory, policy_stats, policy_raw = _reflect(arith_tokenizer, 4, config)

    monkeypatch.setattr(reflect_module, "generate_texts", lambda *a, **k: pytest.fail("sampled"))
    memory, stats, raw = _reflect(arith_tokenizer, 4, config, remote_config=_remote(url))

    # The server got one request per problem, whose messages are the policy's prompt exactly:
    # the chat template of those messages plus the primed prefix is the policy's token ids.
    assert len(state.chat_requests) == 4
    by_question = {_question_of(body): body for body in state.chat_requests}
    assert sorted(by_question) == [0, 1, 2, 3]
    for index, body in by_question.items():
        messages = [(m["role"], m["content"]) for m in body["messages"]]
        assert [role for role, _ in messages] == ["system", "user"]
        ids = format_chat(arith_tokenizer, messages, response=prefix).ids
        assert ids == policy_prompts[index]
        assert body["model"] == "fake-model"
        assert body["max_tokens"] == config.max_new_tokens
        assert body["temperature"] == config.temperature
    # The replies parse into exactly the insights the policy's identical texts gave.
    assert raw == policy_raw
    assert _insights(memory, arith_tokenizer) == _insights(policy_memory, arith_tokenizer)
    assert stats["reflect/inserted"] == policy_stats["reflect/inserted"] == 8
    for key in ("reflect/requests", "reflect/parsed", "reflect/items", "reflect/inserted"):
        assert stats[key] == policy_stats[key], key
    assert stats["reflect/remote/requests"] == 4 and stats["reflect/remote/ok"] == 4
    assert stats["reflect/remote/failures"] == 0


def test_failed_requests_are_counted_and_the_other_problems_get_insights(fake, arith_tokenizer):
    state, url = fake
    state.reply = lambda body: _reply_text(_question_of(body))
    state.sleep_s = 0.6
    modes = {0: "500", 1: "bad_json", 2: "sleep"}  # 3 answers; 4 is past the budget
    state.mode_of = lambda body: modes.get(_question_of(body))
    remote_config = _remote(url, timeout_s=0.2, max_requests_per_step=4)
    memory, stats, raw = _reflect(arith_tokenizer, 5, ReflectConfig(), remote_config=remote_config)

    assert stats["reflect/remote/failures/http_5xx"] == 1
    assert stats["reflect/remote/failures/bad_json"] == 1
    assert stats["reflect/remote/failures/timeout"] == 1
    assert stats["reflect/remote/failures/over_budget"] == 1
    assert stats["reflect/remote/ok"] == 1 and stats["reflect/remote/failures"] == 4
    assert stats["reflect/remote/retries"] == 2  # the 500 and the timeout were retried once
    assert stats["reflect/requests"] == 5 and stats["reflect/parsed"] == 1
    assert (
        stats["reflect/parsed"] + stats["reflect/parse_failures"] + stats["reflect/remote/failures"]
        == stats["reflect/requests"]
    )
    assert raw[:3] == ["", "", ""] and raw[4] == "" and raw[3] == _reply_text(3)
    insights = _insights(memory, arith_tokenizer)
    assert sorted(insights) == [3]  # only the problem whose request came back
    assert (st.STRATEGY, STRATEGIES[3][0]) in [(kind, title) for kind, title, _ in insights[3]]
    assert len(state.chat_requests) == 4 + 2  # the budget held; 500 and timeout retried


def _evolve(tokenizer, memory_config, remote_config, recorder, step=1):
    embeddings = _fake_embed(QUESTIONS)
    return bh.evolve_behaviours(
        None,
        None,
        tokenizer,
        st.init_memory(memory_config),
        memory_config,
        QUESTIONS,
        embeddings,
        np.arange(len(QUESTIONS)),
        step,
        bh.BehaviourConfig(num_clusters=2, temperature=0.7),
        jax.random.PRNGKey(step),
        _fake_embed,
        remote=remote_config,
        recorder=recorder,
    )


def _bank_names(memory, tokenizer) -> list[str]:
    bank = jax.tree.map(np.asarray, memory.behaviours)
    return sorted(
        tokenizer.decode(bank.name[i][: bank.name_len[i]].tolist())
        for i in np.flatnonzero(bank.alive)
    )


def test_openai_evolver_gets_the_cluster_prompts_and_its_answers_fill_the_bank(
    fake, arith_tokenizer
):
    state, url = fake
    served = iter(range(100))
    # Sampled answers (temperature 0.7): a different name on every request.
    state.reply = lambda body: json.dumps(
        [{"name": f"rule_number_{next(served)}", "instruction": "Add the parts in order."}]
    )
    memory_config = dataclasses.replace(MEMORY, pad_id=arith_tokenizer.pad_id)
    output = _evolve(arith_tokenizer, memory_config, _remote(url, temperature=0.7), Recorder())
    assert len(state.chat_requests) == output.stats["behaviour/clusters"] == 2
    for body in state.chat_requests:
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["system", "user"] and body["messages"][0]["content"] == bh.SYSTEM_PROMPT
        assert "Propose 3 to 8 named behaviours" in body["messages"][1]["content"]
    assert output.stats["behaviour/remote/ok"] == 2
    assert output.stats["behaviour/parse_failures"] == 0
    assert len(_bank_names(output.state, arith_tokenizer)) == 2


def test_recording_saved_and_restored_replays_a_step_with_the_server_down(
    fake, monkeypatch, arith_tokenizer, tmp_path
):
    """A step's answers are journalled (train.step_recorder / journal_path); a rerun of the step
    answers from the journal: same memory and stats, no request, no key needed."""
    state, url = fake
    counter = iter(range(1000))
    # A sampled answer differs on every request: only a replay reproduces it.
    state.reply = lambda body: (
        _reply_text(_question_of(body))
        if "Problem:" in body["messages"][-1]["content"]
        else json.dumps([{"name": f"rule_{next(counter)}", "instruction": "Add in order."}])
    )
    state.api_key = SECRET
    monkeypatch.setenv(KEY_ENV, SECRET)
    remote_config = _remote(url, api_key_env=KEY_ENV, temperature=0.7)
    memory_config = dataclasses.replace(MEMORY, pad_id=arith_tokenizer.pad_id)

    recorder = train.step_recorder(tmp_path, 3)
    assert recorder.mode == "record" and len(recorder) == 0  # no journal yet
    first = _reflect(
        arith_tokenizer, 3, ReflectConfig(), remote_config=remote_config, recorder=recorder
    )
    evolved = _evolve(arith_tokenizer, memory_config, remote_config, recorder, step=3)
    path = train.journal_path(tmp_path, 3)
    path.parent.mkdir(parents=True)
    recorder.save(path)
    assert SECRET not in path.read_text() and len(recorder) == 5
    sent = len(state.chat_requests)
    assert sent == 5

    monkeypatch.setattr(remote, "_send", lambda *a: pytest.fail("a replayed step made a request"))
    monkeypatch.delenv(KEY_ENV)
    down = RemoteConfig(**{**vars(remote_config), "base_url": "http://127.0.0.1:9/v1"})
    replayer = train.step_recorder(tmp_path, 3)
    assert replayer.mode == "record_replay"
    again = _reflect(arith_tokenizer, 3, ReflectConfig(), remote_config=down, recorder=replayer)
    evolved_again = _evolve(arith_tokenizer, memory_config, down, replayer, step=3)
    assert again[2] == first[2]
    assert _insights(again[0], arith_tokenizer) == _insights(first[0], arith_tokenizer)
    assert again[1]["reflect/remote/replayed"] == 3 and again[1]["reflect/remote/requests"] == 0
    assert _bank_names(evolved_again.state, arith_tokenizer) == _bank_names(
        evolved.state, arith_tokenizer
    )
    assert [r["text"] for r in evolved_again.records] == [r["text"] for r in evolved.records]
    assert len(state.chat_requests) == sent


def test_record_replay_answers_recorded_prompts_and_sends_only_the_others(fake, monkeypatch):
    state, url = fake
    config = _remote(url, temperature=0.7, concurrency=1)
    recorder = Recorder("record")
    first = remote.chat(config, ["a", "b", "a"], recorder=recorder)
    assert len(state.chat_requests) == 3
    resumed = Recorder.from_json(recorder.to_json(), mode="record_replay")
    # "a" twice and "b" are recorded; the third "a" and "c" are not: only they are sent.
    again = remote.chat(config, ["a", "b", "a", "a", "c"], recorder=resumed)
    assert [r.text for r in again[:3]] == [r.text for r in first]
    assert [r.replayed for r in again] == [True, True, True, False, False]
    assert [m["messages"][0]["content"] for m in state.chat_requests[3:]] == ["a", "c"]
    assert again.metrics["remote/replayed"] == 3 and again.metrics["remote/requests"] == 2
    # What was sent is recorded too: the whole call replays now, with the server unused.
    monkeypatch.setattr(remote, "_send", lambda *a: pytest.fail("request"))
    resumed.rewind()
    third = remote.chat(config, ["a", "b", "a", "a", "c"], recorder=resumed)
    assert [r.text for r in third] == [r.text for r in again]
    # A recording with everything answered needs no key.
    keyed = RemoteConfig(**{**vars(config), "api_key_env": "PMD_TEST_UNSET_KEY_VAR"})
    monkeypatch.delenv("PMD_TEST_UNSET_KEY_VAR", raising=False)
    resumed.rewind()
    assert [r.text for r in remote.chat(keyed, ["a"], recorder=resumed)] == [first[0].text]


# -- config -------------------------------------------------------------------------------------


def _tiny(*overrides: str) -> TrainConfig:
    return apply_overrides(load_experiment("tiny"), list(overrides))


def test_validation_refuses_openai_without_base_url_naming_the_field():
    config = _tiny("reflect.backend=openai", "reflect.remote.model=m")
    errors = config_errors(config, 1)
    assert any(e.startswith("reflect.remote.base_url=''") for e in errors), errors
    config = _tiny("behaviours.backend=openai", "behaviours.remote.base_url=http://127.0.0.1:1/v1")
    errors = config_errors(config, 1)
    assert any(e.startswith("behaviours.remote.model=''") for e in errors), errors
    with pytest.raises(ConfigError, match=r"reflect\.remote\.base_url"):
        validate_run(_tiny("reflect.backend=openai"), 1)
    # The same fields are fine while the backend is the policy (they are not read).
    assert config_errors(_tiny("reflect.remote.concurrency=0"), 1) == []


def test_validation_names_a_bad_key_variable_without_echoing_it(monkeypatch):
    base = ("reflect.backend=openai", "reflect.remote.base_url=http://127.0.0.1:1/v1")
    pasted = _tiny(*base, "reflect.remote.model=m", f"reflect.remote.api_key_env={SECRET}")
    errors = config_errors(pasted, 1)
    assert any(e.startswith("reflect.remote.api_key_env='<hidden>'") for e in errors), errors
    assert SECRET not in "\n".join(errors)
    monkeypatch.delenv(KEY_ENV, raising=False)
    unset = _tiny(*base, "reflect.remote.model=m", f"reflect.remote.api_key_env={KEY_ENV}")
    errors = config_errors(unset, 1)
    assert any(e.startswith(f"reflect.remote.api_key_env='{KEY_ENV}'") for e in errors)
    monkeypatch.setenv(KEY_ENV, SECRET)
    assert config_errors(unset, 1) == []


def test_backend_values_and_the_renamed_reflector_key():
    assert _tiny("behaviours.backend=base").behaviours.backend == "base"
    with pytest.raises(ValueError, match=r"ReflectConfig\.backend='remote'"):
        _tiny("reflect.backend=remote")
    with pytest.raises(ValueError, match=r"BehaviourConfig\.backend='gpt'"):
        _tiny("behaviours.backend=gpt")
    with pytest.raises(KeyError, match=r"reflect\.reflector.*renamed.*reflect\.backend"):
        _tiny("reflect.reflector=base")
    limits = _tiny("reflect.remote.max_requests_per_step=none", "reflect.remote.seed=3")
    assert limits.reflect.remote.max_requests_per_step is None and limits.reflect.remote.seed == 3
    reflect_remote, evolve_remote = train.remote_configs(
        _tiny(
            "reflect.backend=openai",
            "reflect.remote.base_url=http://127.0.0.1:1/v1",
            "reflect.remote.model=m",
            "reflect.remote.max_requests_per_step=7",
        )
    )
    assert evolve_remote is None
    assert reflect_remote.max_requests_per_step == 7 and reflect_remote.max_tokens == 160


def test_the_key_is_in_no_result_recording_log_or_config(fake, monkeypatch, arith_tokenizer, capfd):
    state, url = fake
    state.reply = lambda body: _reply_text(_question_of(body))
    state.api_key = "sk-the-right-one"  # rejects SECRET and echoes it back in the 401 body
    monkeypatch.setenv(KEY_ENV, SECRET)
    config = _tiny(
        "reflect.backend=openai",
        f"reflect.remote.base_url={url}",
        "reflect.remote.model=fake-model",
        f"reflect.remote.api_key_env={KEY_ENV}",
    )
    assert config_errors(config, 1) == []
    reflect_remote, _ = train.remote_configs(config)
    recorder = Recorder()
    memory, stats, raw = _reflect(
        arith_tokenizer, 2, config.reflect, remote_config=reflect_remote, recorder=recorder
    )
    assert state.auth_headers[-1] == f"Bearer {SECRET}"  # it was sent ...
    assert stats["reflect/remote/failures/http_4xx"] == 2
    entries = [e for outcomes in recorder.entries.values() for e in outcomes]
    assert all("Incorrect API key provided: ***" in e["detail"] for e in entries)
    # ... and kept out of everything a run writes: config.json, metrics, the journal, output.
    written = json.dumps(train.to_dict(config)) + json.dumps(stats) + recorder.to_json()
    written += repr(reflect_remote) + "".join(raw)
    out, err = capfd.readouterr()
    assert KEY_ENV in json.dumps(train.to_dict(config))
    assert SECRET not in written + out + err


# -- a tiny training run against the fake server (slow: two runs of ~40 s on 2 cores) ----------


def _fake_answer(body: dict, counter) -> str:
    """A reflection or evolution answer; sampled (a fresh number on every request), so a step
    that replays its journal is told apart from one that asked again."""
    user = body["messages"][-1]["content"]
    n = next(counter)
    if "Propose 3 to 8" in user or "Improve the library" in user:
        name = f"rule_number_{n}"
        if "Propose" in user:
            return json.dumps([{"name": name, "instruction": "Work out each part in order."}])
        return json.dumps({"actions": [{"op": "new", "name": name, "instruction": "Check units."}]})
    strategy = {"title": f"Strategy {n}", "content": "Write each operation on its own line."}
    return json.dumps({"strategies": [strategy], "lessons": [dict(strategy, title=f"Lesson {n}")]})


@pytest.mark.slow
def test_tiny_run_with_openai_backends_resumes_from_its_journal_and_never_writes_the_key(
    fake, tmp_path
):
    state, url = fake
    counter = itertools.count()
    state.reply = lambda body: _fake_answer(body, counter)
    state.api_key = SECRET
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", **{KEY_ENV: SECRET})
    env.setdefault("PMD_TFDS_DIR", str(tmp_path / "tfds"))
    sets = ["progress=false", "total_steps=4", "checkpoint.every_steps=2", "eval.final=false"]
    sets += ["model.warm_start_steps=0", "behaviours.warmup_steps=1", "behaviours.every_steps=1"]
    for section in ("reflect", "behaviours"):
        sets += [f"{section}.backend=openai", f"{section}.remote.base_url={url}"]
        sets += [f"{section}.remote.model=fake-model", f"{section}.remote.api_key_env={KEY_ENV}"]
        sets += [f"{section}.temperature=0.7"]
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "pmd_jax.train", "--exp", "tiny", "--workdir", str(workdir)]
    command += [f"--set={s}" for s in sets]

    def run(**extra):
        return subprocess.run(
            command, cwd=root, env={**env, **extra}, capture_output=True, text=True, timeout=1800
        )

    killed = run(PMD_CRASH_AFTER_STEP="3")  # exits hard after step 3; checkpoint at step 2
    assert killed.returncode == 17, killed.stderr[-3000:]
    journal = train.journal_path(workdir, 3)
    step3 = journal.read_text()
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 3 and metrics[-1]["reflect/remote/ok"] >= 1
    before = len(state.chat_requests)

    resumed = run()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    again = [json.loads(line) for line in lines if json.loads(line)["step"] == 3][-1]
    # Step 3 ran again from the step-2 checkpoint, answered from its journal: no request, and
    # the same insights and behaviours as the first time (its answers were sampled).
    assert again["reflect/remote/replayed"] == metrics[-1]["reflect/remote/ok"]
    assert again["reflect/remote/requests"] == again["behaviour/remote/requests"] == 0
    for key in ("reflect/inserted", "memory/insight", "memory/behaviour"):
        assert again[key] == metrics[-1][key], key
    assert json.loads(journal.read_text()) == json.loads(step3)
    step4 = Recorder.load(train.journal_path(workdir, 4))
    assert len(state.chat_requests) - before == len(step4) > 0  # step 4 alone asked the server

    # The key: sent, and in no file of the run directory nor any output of the two runs.
    assert state.auth_headers[-1] == f"Bearer {SECRET}"
    assert KEY_ENV in (workdir / "config.json").read_text()
    for done in (killed, resumed):
        assert SECRET not in done.stdout + done.stderr
    for path in workdir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# -- llama.cpp's server: a real endpoint (slow tier) --------------------------------------------


def _llama_run(server_url, workdir, env_key, steps=2, evolve_every=1):
    """`python -m pmd_jax.train --exp tiny` with reflection and evolution through the server."""
    from llama_server import MODEL_ALIAS

    sets = ["progress=false", f"total_steps={steps}", "checkpoint.every_steps=100"]
    sets += ["eval.final=false", "model.warm_start_steps=0", "behaviours.warmup_steps=1"]
    sets += [f"behaviours.every_steps={evolve_every}"]
    for section in ("reflect", "behaviours"):
        sets += [f"{section}.backend=openai", f"{section}.remote.base_url={server_url}"]
        sets += [f"{section}.remote.model={MODEL_ALIAS}", f"{section}.remote.api_key_env={env_key}"]
        sets += [f"{section}.remote.timeout_s=60", f"{section}.remote.retries=0"]
    command = [sys.executable, "-m", "pmd_jax.train", "--exp", "tiny", "--workdir", str(workdir)]
    return command + [f"--set={s}" for s in sets]


def _llama_env(tmp_path, key):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **{KEY_ENV: key})
    env.setdefault("PMD_TFDS_DIR", str(tmp_path / "tfds"))
    return env


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _needs_llama(test):
    from llama_server import unavailable_reason

    reason = unavailable_reason()
    return pytest.mark.slow(pytest.mark.skipif(reason is not None, reason=reason or "")(test))


@_needs_llama
def test_tiny_pmd_steps_reflect_and_evolve_through_llama_cpp(smollm2_gguf_path, tmp_path):
    """Two tiny PMD steps, reflection and evolution answered by llama.cpp serving SmolLM2; then
    the server is killed while a step waits on it: that step's requests are counted failures
    and the run finishes."""
    import threading
    import time

    from llama_server import LlamaServer

    root = pathlib.Path(__file__).resolve().parents[1]
    with LlamaServer(smollm2_gguf_path, api_key=SECRET) as server:
        url = server.base_url
        workdir = tmp_path / "run"
        done = subprocess.run(
            _llama_run(url, workdir, KEY_ENV), cwd=root, env=_llama_env(tmp_path, SECRET),
            capture_output=True, text=True, timeout=1500,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _metrics(workdir)
    assert [r["step"] for r in rows if "reflect/requests" in r] == [1, 2]
    for row in rows:
        if row.get("reflect/remote/requests"):
            assert row["reflect/remote/failures"] == 0, row
            # every answer came back and went through the parser: parsed or a parse failure
            assert row["reflect/parsed"] + row["reflect/parse_failures"] == row["reflect/requests"]
    assert sum(r.get("reflect/remote/requests", 0) for r in rows) > 0
    assert sum(r.get("behaviour/remote/requests", 0) for r in rows) > 0
    assert SECRET not in done.stdout + done.stderr
    assert all(
        SECRET not in p.read_text(errors="ignore") for p in workdir.rglob("*") if p.is_file()
    )

    # Killed mid-run: the server goes once step 1's answers are journalled.
    server = LlamaServer(smollm2_gguf_path, api_key=SECRET).__enter__()
    workdir = tmp_path / "killed"
    process = subprocess.Popen(
        _llama_run(server.base_url, workdir, KEY_ENV, steps=3), cwd=root,
        env=_llama_env(tmp_path, SECRET), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def kill_after_step_1():
        deadline = time.monotonic() + 1200
        while not train.journal_path(workdir, 1).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        server.__exit__(None, None, None)

    killer = threading.Thread(target=kill_after_step_1)
    killer.start()
    try:
        _, stderr = process.communicate(timeout=1500)
    finally:
        killer.join()
        server.__exit__(None, None, None)
    assert process.returncode == 0, stderr[-3000:]
    rows = [r for r in _metrics(workdir) if "reflect/requests" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[-1]["reflect/remote/failures/connection"] == rows[-1]["reflect/remote/requests"] > 0


@_needs_llama
def test_a_wrong_key_stops_the_run_at_start_naming_the_variable(smollm2_gguf_path, tmp_path):
    from llama_server import LlamaServer

    root = pathlib.Path(__file__).resolve().parents[1]
    with LlamaServer(smollm2_gguf_path, api_key=SECRET) as server:
        done = subprocess.run(
            _llama_run(server.base_url, tmp_path / "run", KEY_ENV),
            cwd=root, env=_llama_env(tmp_path, "sk-wrong-key-0000"), capture_output=True,
            text=True, timeout=600,
        )  # fmt: skip
    assert done.returncode != 0
    assert KEY_ENV in done.stderr and "sk-wrong-key-0000" not in done.stdout + done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step ran
