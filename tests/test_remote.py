"""pmd_jax.remote against a real HTTP server: a tiny OpenAI-compatible fake (http.server in a
thread, fast tier) and llama.cpp's server with SmolLM2-135M-Instruct (slow tier)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fake_openai import serve
from llama_server import MODEL_ALIAS, LlamaServer, free_port, unavailable_reason

from pmd_jax import remote
from pmd_jax.remote import (
    ERROR_KINDS,
    Budget,
    Recorder,
    RemoteAuthError,
    RemoteConfig,
    RemoteConfigError,
    RemoteUnavailableError,
    ReplayMissError,
    chat,
    check,
)

KEY_ENV = "PMD_TEST_REMOTE_KEY"
SECRET = "sk-test-Zq8vXr41secret"


# -- the fake server (tests/fake_openai.py) ----------------------------------------------------


@pytest.fixture
def fake():
    """(state, base_url) of a fresh fake OpenAI server on 127.0.0.1."""
    with serve() as served:
        yield served


def config_for(base_url: str, **kwargs) -> RemoteConfig:
    fields = dict(model="fake-model", concurrency=4, timeout_s=5.0, retries=2, backoff_s=0.01)
    fields.update(kwargs)
    return RemoteConfig(base_url=base_url, **fields)


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("base_url", ""),
        ("base_url", "127.0.0.1:8080/v1"),
        ("base_url", "ftp://host/v1"),
        ("model", ""),
        ("api_key_env", "has-dash"),
        ("concurrency", 0),
        ("concurrency", 2.0),
        ("timeout_s", 0),
        ("timeout_s", float("inf")),
        ("retries", -1),
        ("retries", True),
        ("backoff_s", -0.1),
        ("max_backoff_s", 0.001),
        ("max_requests_per_step", -1),
        ("max_tokens", 0),
        ("temperature", 2.5),
        ("seed", 1.5),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(RemoteConfigError, match=f"RemoteConfig.{field} "):
        RemoteConfig(**{"base_url": "http://127.0.0.1:1/v1", "model": "m", field: value})


def test_key_pasted_as_env_name_is_rejected_without_echo():
    with pytest.raises(RemoteConfigError) as info:
        RemoteConfig(base_url="http://127.0.0.1:1/v1", model="m", api_key_env=SECRET)
    assert "api_key_env" in str(info.value) and "NAME" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_config_holds_no_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    config = RemoteConfig(base_url="http://127.0.0.1:1/v1", model="m", api_key_env=KEY_ENV)
    assert KEY_ENV in repr(config) and SECRET not in repr(config)
    assert SECRET not in json.dumps(vars(config))


# -- requests ---------------------------------------------------------------------------------


def test_results_keep_input_order_and_send_the_payload(fake):
    state, url = fake
    # Later prompts answer sooner, so completion order is the reverse of input order.
    prompts = [f"wait:{0.05 * (5 - i)}:{i}" for i in range(6)]
    prompts.append([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    results = chat(config_for(url, max_tokens=17, temperature=0.0, seed=7), prompts)
    assert [r.text for r in results[:6]] == [f"echo: {p}" for p in prompts[:6]]
    assert results[6].text == "echo: hi" and results[6].ok
    assert all(r.attempts == 1 and r.finish_reason == "stop" for r in results)
    first = state.chat_requests[0]
    assert first["model"] == "fake-model" and first["max_tokens"] == 17
    assert first["temperature"] == 0.0 and first["seed"] == 7
    assert first["messages"][0]["role"] == "user"
    assert all(auth is None for auth in state.auth_headers)  # api_key_env "": no header
    assert results.metrics["remote/prompts"] == 7 and results.metrics["remote/ok"] == 7
    assert results.metrics["remote/completion_tokens"] == 14


def test_requests_run_concurrently(fake):
    state, url = fake
    state.delay_s = 0.2
    start = time.monotonic()
    results = chat(config_for(url, concurrency=4), [f"p{i}" for i in range(8)])
    elapsed = time.monotonic() - start
    assert all(r.ok for r in results)
    assert state.max_inflight == 4
    # 8 requests, 4 at a time: about 2 server delays (0.4 s), far from 8 (1.6 s).
    assert 0.38 < elapsed < 1.0, elapsed
    assert results.metrics["remote/seconds"] == pytest.approx(elapsed, abs=0.05)


def test_retries_then_success(fake):
    state, url = fake
    state.script = ["500", "sleep", "429"]
    state.sleep_s = 0.5
    results = chat(config_for(url, retries=3, timeout_s=0.2, concurrency=1), ["x"])
    (result,) = results
    assert result.ok and result.text == "echo: x" and result.attempts == 4
    assert results.metrics["remote/retries"] == 3 and results.metrics["remote/requests"] == 4
    assert results.metrics["remote/failures"] == 0


@pytest.mark.parametrize(
    "mode, kind, attempts",
    [("500", "http_5xx", 3), ("sleep", "timeout", 3), ("400", "http_4xx", 1)]
    + [("bad_json", "bad_json", 1), ("no_choices", "bad_json", 1)],
)
def test_failures_are_counted_not_raised(fake, mode, kind, attempts):
    state, url = fake
    state.mode, state.sleep_s = mode, 0.4
    start = time.monotonic()
    results = chat(config_for(url, retries=2, timeout_s=0.15), ["a", "b", "c"])
    assert time.monotonic() - start < 2.5
    assert [(r.text, r.error, r.attempts) for r in results] == [(None, kind, attempts)] * 3
    assert all(r.detail for r in results)
    metrics = results.metrics
    assert metrics[f"remote/failures/{kind}"] == 3 and metrics["remote/failures"] == 3
    assert metrics["remote/requests"] == 3 * attempts
    assert metrics["remote/retries"] == 3 * (attempts - 1)
    assert {k for k in metrics if k.startswith("remote/failures/")} == {
        f"remote/failures/{kind}" for kind in ERROR_KINDS
    }


def test_connection_refused_is_a_counted_failure():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    results = chat(config_for(url, retries=1), ["a", "b"])
    assert [(r.error, r.attempts) for r in results] == [("connection", 2)] * 2
    assert results.metrics["remote/failures/connection"] == 2


def test_backoff_is_exponential_capped_and_deterministic():
    config = RemoteConfig(base_url="http://h/v1", model="m", backoff_s=1.0, max_backoff_s=3.0)
    delays = [remote.backoff_delay(config, "sha256:ab", k) for k in (1, 2, 3, 4)]
    assert delays == [remote.backoff_delay(config, "sha256:ab", k) for k in (1, 2, 3, 4)]
    for delay, base in zip(delays, [1.0, 2.0, 3.0, 3.0], strict=True):
        assert 0.5 * base <= delay <= base
    assert remote.backoff_delay(config, "sha256:cd", 1) != delays[0]


def test_budget_caps_requests_in_input_order(fake):
    state, url = fake
    results = chat(config_for(url, max_requests_per_step=3), [f"p{i}" for i in range(5)])
    assert [r.error for r in results] == [None, None, None, "over_budget", "over_budget"]
    assert [r.attempts for r in results] == [1, 1, 1, 0, 0]
    assert len(state.chat_requests) == 3
    assert results.metrics["remote/failures/over_budget"] == 2
    assert results.metrics["remote/requests"] == 3
    # One Budget shared by a step's calls (reflect, then evolve).
    budget = Budget(4)
    first = chat(config_for(url), ["a", "b", "c"], budget=budget)
    second = chat(config_for(url), ["d", "e"], budget=budget)
    assert [r.ok for r in first] == [True] * 3 and [r.error for r in second] == [
        None,
        "over_budget",
    ]
    assert chat(config_for(url, max_requests_per_step=0), ["z"])[0].error == "over_budget"


# -- the key ----------------------------------------------------------------------------------


def test_key_is_sent_as_bearer(fake, monkeypatch):
    state, url = fake
    state.api_key = SECRET
    monkeypatch.setenv(KEY_ENV, SECRET)
    config = config_for(url, api_key_env=KEY_ENV)
    assert check(config) == ["fake-model"]
    assert chat(config, ["q"])[0].text == "echo: q"
    assert state.auth_headers == [f"Bearer {SECRET}"] * 2


def test_rejected_key_is_a_clear_error_without_the_key(fake, monkeypatch):
    state, url = fake
    state.api_key = "the-right-key"
    monkeypatch.setenv(KEY_ENV, SECRET)
    config = config_for(url, api_key_env=KEY_ENV)
    with pytest.raises(RemoteAuthError) as info:
        check(config)
    message = str(info.value)
    assert "401" in message and KEY_ENV in message and "rejected" in message
    assert state.auth_headers == [f"Bearer {SECRET}"]  # the server did get (and echo) it
    for text in (message, repr(info.value), repr(config)):
        assert SECRET not in text and "the-right-key" not in text
    # The same rejection during chat(): a counted http_4xx failure, not retried, key masked.
    (result,) = chat(config, ["q"])
    assert (result.error, result.status, result.attempts) == ("http_4xx", 401, 1)
    assert KEY_ENV in result.detail and SECRET not in result.detail and "***" in result.detail
    assert SECRET not in repr(result)


def test_no_key_sent_but_required(fake):
    state, url = fake
    state.api_key = "the-right-key"
    with pytest.raises(RemoteAuthError, match="no API key was sent.*api_key_env"):
        check(config_for(url))


def test_unset_key_variable_raises_naming_it(fake, monkeypatch):
    _, url = fake
    monkeypatch.delenv(KEY_ENV, raising=False)
    config = config_for(url, api_key_env=KEY_ENV)
    for call in (lambda: check(config), lambda: chat(config, ["q"])):
        with pytest.raises(RemoteConfigError, match=f"environment variable {KEY_ENV} "):
            call()


def test_key_with_a_newline_is_stripped_and_a_bad_key_rejected_unquoted(fake, monkeypatch):
    state, url = fake
    state.api_key = SECRET
    config = config_for(url, api_key_env=KEY_ENV)
    monkeypatch.setenv(KEY_ENV, SECRET + "\n")  # as read from a key file
    assert check(config) == ["fake-model"]
    monkeypatch.setenv(KEY_ENV, SECRET[:5] + "\r\n" + SECRET[5:])
    with pytest.raises(RemoteConfigError, match=KEY_ENV) as info:
        chat(config, ["q"])
    assert SECRET[:5] not in str(info.value) and SECRET[5:] not in str(info.value)


def test_check_reports_an_unreachable_server():
    with pytest.raises(RemoteUnavailableError, match="connection"):
        check(config_for(f"http://127.0.0.1:{free_port()}/v1", timeout_s=1.0))


# -- recording and replay ---------------------------------------------------------------------


def test_replay_gives_identical_results_with_the_server_down(fake, monkeypatch, tmp_path):
    state, url = fake
    monkeypatch.setenv(KEY_ENV, SECRET)
    # Sampled answers (temperature > 0) differ per request, even for a repeated prompt.
    config = config_for(url, api_key_env=KEY_ENV, temperature=0.7, concurrency=1)
    prompts = ["a", "b", "a", [{"role": "user", "content": "c"}], "d", "past budget"]
    state.script = ["ok", "ok", "ok", "ok", "400"]  # "d" fails: its failure replays too
    recorder, budget = Recorder("record"), Budget(5)  # one step: two calls, one budget
    step1 = chat(config, prompts[:3], recorder=recorder, budget=budget)
    step2 = chat(config, prompts[3:], recorder=recorder, budget=budget)
    assert step1[0].text != step1[2].text  # same prompt, different samples
    assert [r.error for r in step2] == [None, "http_4xx", "over_budget"]
    path = tmp_path / "remote_recording.json"
    recorder.save(path)
    assert SECRET not in path.read_text()
    sent = len(state.chat_requests)

    monkeypatch.setattr(remote, "_send", lambda *a: pytest.fail("replay made a request"))
    monkeypatch.delenv(KEY_ENV)  # replay needs no key
    replayer = Recorder.load(path)
    down = config_for(f"http://127.0.0.1:{free_port()}/v1", api_key_env=KEY_ENV)
    down = RemoteConfig(**{**vars(config), "base_url": down.base_url})
    budget = Budget(5)
    again1 = chat(down, prompts[:3], recorder=replayer, budget=budget)
    again2 = chat(down, prompts[3:], recorder=replayer, budget=budget)
    for old, new in zip(list(step1) + list(step2), list(again1) + list(again2), strict=True):
        assert (new.text, new.error, new.status) == (old.text, old.error, old.status)
        assert new.replayed == (old.error != "over_budget")
    assert len(state.chat_requests) == sent
    assert again1.metrics["remote/replayed"] == 3 and again1.metrics["remote/requests"] == 0

    # A request that was never recorded (here: a fourth "a") names its hash.
    with pytest.raises(ReplayMissError, match=r"request sha256:[0-9a-f]{64} \(prompt 0") as info:
        chat(down, ["a"], recorder=replayer)
    assert remote.payload_hash(remote.request_payload(down, "a")) in str(info.value)
    replayer.rewind()
    assert chat(down, ["a"], recorder=replayer)[0].text == step1[0].text


def test_recording_round_trips_through_json():
    recorder = Recorder("record", {"sha256:00": [{"text": "t", "error": None}]})
    again = Recorder.from_json(recorder.to_json())
    assert again.mode == "replay" and again.entries == recorder.entries
    with pytest.raises(ValueError, match="version"):
        Recorder.from_dict({"entries": {}})
    with pytest.raises(ValueError, match="mode"):
        Recorder("live")


# -- llama.cpp's server (slow tier) -----------------------------------------------------------

LLAMA_MISSING = unavailable_reason()


def needs_llama(test):
    """Slow tier; skipped, with what to install, when llama-cpp-python[server] is missing."""
    skip = pytest.mark.skipif(LLAMA_MISSING is not None, reason=LLAMA_MISSING or "")
    return pytest.mark.slow(skip(test))


@pytest.fixture(scope="session")
def llama(smollm2_gguf_path):
    """llama.cpp serving SmolLM2-135M-Instruct for the session; always stopped after."""
    with LlamaServer(smollm2_gguf_path) as server:
        yield server


def llama_config(base_url: str, **kwargs) -> RemoteConfig:
    fields = dict(model=MODEL_ALIAS, concurrency=4, timeout_s=120.0, retries=1, backoff_s=0.2)
    fields.update(max_tokens=128, temperature=0.0, seed=0)
    fields.update(kwargs)
    return RemoteConfig(base_url=base_url, **fields)


@needs_llama
def test_llama_batch_of_four(llama):
    config = llama_config(llama.base_url)
    assert MODEL_ALIAS in check(config)
    prompts = [
        "Name one prime number.",
        "What is 2 + 3?",
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi!"}],
        "Write one sentence about the sea.",
    ]
    results = chat(config, prompts)
    print(
        f"\nllama.cpp SmolLM2 batch of 4 (max_tokens=128): {results.seconds:.2f} s, "
        f"latencies {[round(r.latency_s, 2) for r in results]}, "
        f"completion tokens {[r.completion_tokens for r in results]}"
    )
    assert [r.error for r in results] == [None] * 4, [r.detail for r in results]
    assert all(r.text and r.text.strip() for r in results)
    assert results.metrics["remote/ok"] == 4 and results.metrics["remote/requests"] == 4


@needs_llama
def test_llama_killed_mid_batch_gives_counted_failures(smollm2_gguf_path):
    with LlamaServer(smollm2_gguf_path) as server:
        config = llama_config(server.base_url, max_tokens=256, timeout_s=20.0, retries=1)
        killer = threading.Timer(1.0, server.kill)
        killer.start()
        try:
            results = chat(config, [f"Count from 1 to 50, attempt {i}." for i in range(6)])
        finally:
            killer.cancel()
    assert len(results) == 6
    failed = [r for r in results if not r.ok]
    assert failed, "the server was killed 1 s in; some of 6 long requests must have failed"
    assert {r.error for r in failed} <= {"connection", "timeout"}, [r.detail for r in failed]
    metrics = results.metrics
    assert metrics["remote/failures"] == len(failed)
    assert metrics["remote/failures/connection"] + metrics["remote/failures/timeout"] == len(failed)


@needs_llama
def test_llama_wrong_key_is_a_clear_error_at_check(smollm2_gguf_path, monkeypatch):
    right, wrong = "llama-right-key-5521", "llama-wrong-key-9917"
    with LlamaServer(smollm2_gguf_path, api_key=right) as server:
        config = llama_config(server.base_url, api_key_env=KEY_ENV, max_tokens=8)
        monkeypatch.setenv(KEY_ENV, wrong)
        with pytest.raises(RemoteAuthError) as info:
            check(config)
        message = str(info.value)
        assert KEY_ENV in message and ("401" in message or "403" in message)
        assert wrong not in message and right not in message
        monkeypatch.setenv(KEY_ENV, right)
        assert MODEL_ALIAS in check(config)
        assert chat(config, ["Say hi."])[0].ok


def test_llama_skip_reason_is_accurate():
    """The slow tests' skip reason names what is missing and how to install it."""
    if LLAMA_MISSING is None:
        import llama_cpp  # noqa: F401 - the reason is None only when it imports

    else:
        assert "llama-cpp-python[server]" in LLAMA_MISSING and "pip install" in LLAMA_MISSING
