"""A client for an OpenAI-compatible chat-completions endpoint (an external reflector/evolver).

    config = RemoteConfig(base_url="http://127.0.0.1:8080/v1", model="m", api_key_env="MY_KEY")
    check(config)                        # one GET /models; a rejected key raises RemoteAuthError
    results = chat(config, ["prompt", [{"role": "user", "content": "..."}]])
    results[0].text, results[0].error    # text, or None and an error kind (ERROR_KINDS)
    metrics.update(results.metrics)      # "remote/requests", "remote/failures/timeout", ...

Requests go out concurrently (`concurrency` threads, stdlib urllib, no dependency) and come back
in input order. Timeouts, HTTP 5xx, HTTP 429 and connection errors are retried (`retries` times,
exponential backoff with a deterministic jitter derived from the request's hash); other 4xx and
malformed responses are not. A request that still fails is a counted failure in its Result, never
an exception: a training step goes on with what came back. `max_requests_per_step` caps the prompts
sent per call (or per shared `Budget`): prompts past it, in input order, get error "over_budget"
without a request. `timeout_s` bounds connecting and each socket read, not a whole response.

The API key: `api_key_env` is the NAME of the environment variable holding it; the key is read
from os.environ when a request is built, sent as `Authorization: Bearer <key>`, and kept out of
the config, reprs, logs, exceptions and error details (a server echoing it back is masked).

Exact resume: a `Recorder` in "record" mode stores, per request-payload hash (sha256 of the
canonical JSON body: model, messages, max_tokens, temperature, seed), the outcomes in order of
occurrence (text or error kind); `to_json()` stores beside the memory in a checkpoint. In
"replay" mode `chat` answers from the recording without any network call (and without a key);
a request with no recorded outcome raises ReplayMissError naming its hash. In "record_replay"
mode (a resumed training run) a request whose hash and occurrence are recorded is answered from
the recording, and any other goes to the server and is recorded.

Training (docs/OPERATIONS.md, "External reflector and evolver"): `reflect.backend="openai"` and
`behaviours.backend="openai"` send the reflection and evolution prompts here; the config tree
holds a `RemoteSpec` (unvalidated, empty by default), made a RemoteConfig by `RemoteSpec.config`.

A real server to try it on: llama.cpp's OpenAI-compatible server from llama-cpp-python (0.3.36),
built from source (PyPI ships only the sdist; the build took 24 min 36 s wall, 9.5 min CPU, on 2
cores shared with other jobs):
    CMAKE_BUILD_PARALLEL_LEVEL=2 .venv/bin/pip install 'llama-cpp-python[server]'
    GGUF=$(.venv/bin/python -c "from pmd_jax.model.registry import find_smollm2_gguf as f; print(f())")
    .venv/bin/python -m llama_cpp.server --model "$GGUF" --host 127.0.0.1 --port 8080 --n_ctx 2048
(`--api_key KEY` makes it require a key; tests/llama_server.py runs it for the slow tests). It is
not in setup.py: too slow to build in every CI run. That server answers one request at a time,
so `concurrency` > 1 only queues there, and a queued request's wait counts against `timeout_s`.
With SmolLM2-135M-Instruct (Q4_1) on those 2 loaded cores, 4 requests that each ran to 128 new
tokens took 20-23 s as a batch (~5 s each); 4 short answers (7-20 tokens) took 3.4 s warm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import ipaddress
import json
import math
import os
import pathlib
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

TIMEOUT = "timeout"
HTTP_5XX = "http_5xx"
HTTP_4XX = "http_4xx"
BAD_JSON = "bad_json"
CONNECTION = "connection"
OVER_BUDGET = "over_budget"
ERROR_KINDS = (TIMEOUT, HTTP_5XX, HTTP_4XX, BAD_JSON, CONNECTION, OVER_BUDGET)
RETRYABLE = frozenset({TIMEOUT, HTTP_5XX, CONNECTION})
RETRYABLE_4XX = frozenset({429})  # rate limited: retried (as OpenAI's own client does)
METRIC_PREFIX = "remote/"
RECORDING_VERSION = 1
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DETAIL_CHARS = 300


class RemoteError(Exception):
    """Base class of the errors this module raises (failed requests are Results, not raises)."""


class RemoteConfigError(RemoteError, ValueError):
    """A RemoteConfig field is invalid, or the API key's environment variable is unset."""


class RemoteAuthError(RemoteError):
    """The server rejected the request's credentials (HTTP 401/403) at check()."""


class RemoteUnavailableError(RemoteError):
    """check() could not get a usable answer from the server."""


class ReplayMissError(RemoteError, KeyError):
    """A Recorder in replay mode has no recorded outcome for a request."""

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class RemoteConfig:
    """Where and how to send chat-completion requests. Holds no secret: `api_key_env` is the
    name of the environment variable holding the key ("" = send no key)."""

    base_url: str  # e.g. "http://127.0.0.1:8080/v1"; requests go to {base_url}/chat/completions
    model: str
    api_key_env: str = ""
    concurrency: int = 4  # requests in flight at once
    timeout_s: float = 60.0  # connect and each socket read
    retries: int = 2  # extra attempts after a timeout, HTTP 5xx/429 or connection error
    backoff_s: float = 0.5  # wait before retry k: backoff_s * 2**(k-1), jittered to [0.5, 1]x
    max_backoff_s: float = 30.0  # cap on one wait (and on a server's Retry-After)
    max_requests_per_step: int | None = None  # prompts sent per chat() call; None = no cap
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int | None = None  # sent as the request's "seed" when given

    def __post_init__(self):
        def fail(field: str, why: str):
            raise RemoteConfigError(f"RemoteConfig.{field} {why}")

        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value) -> bool:
            return is_int(value) or (isinstance(value, float) and math.isfinite(value))

        if not isinstance(self.base_url, str) or not self.base_url.strip():
            fail("base_url", "must be a non-empty URL such as 'http://127.0.0.1:8080/v1'")
        parsed = urllib.parse.urlparse(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            fail("base_url", f"must be an http(s) URL with a host, got {self.base_url!r}")
        if parsed.query or parsed.fragment or parsed.username or parsed.password:
            fail("base_url", "must have no query, fragment or credentials (use api_key_env)")
        if not isinstance(self.model, str) or not self.model.strip():
            fail("model", "must be a non-empty model name")
        if not isinstance(self.api_key_env, str) or not (
            self.api_key_env == "" or _ENV_NAME.match(self.api_key_env)
        ):
            # Never echo the value: a key pasted here by mistake must not reach a log.
            fail(
                "api_key_env",
                "must be the NAME of the environment variable holding the API key (letters, "
                "digits, underscores, e.g. 'OPENAI_API_KEY'), or '' for no key; not the key itself",
            )
        if not is_int(self.concurrency) or self.concurrency < 1:
            fail("concurrency", f"must be an int >= 1, got {self.concurrency!r}")
        if not is_number(self.timeout_s) or self.timeout_s <= 0:
            fail("timeout_s", f"must be a number > 0 (seconds), got {self.timeout_s!r}")
        if not is_int(self.retries) or self.retries < 0:
            fail("retries", f"must be an int >= 0, got {self.retries!r}")
        if not is_number(self.backoff_s) or self.backoff_s < 0:
            fail("backoff_s", f"must be a number >= 0 (seconds), got {self.backoff_s!r}")
        if not is_number(self.max_backoff_s) or self.max_backoff_s < self.backoff_s:
            fail("max_backoff_s", f"must be a number >= backoff_s, got {self.max_backoff_s!r}")
        if self.max_requests_per_step is not None and (
            not is_int(self.max_requests_per_step) or self.max_requests_per_step < 0
        ):
            fail(
                "max_requests_per_step",
                f"must be None (no cap) or an int >= 0, got {self.max_requests_per_step!r}",
            )
        if not is_int(self.max_tokens) or self.max_tokens < 1:
            fail("max_tokens", f"must be an int >= 1, got {self.max_tokens!r}")
        if not is_number(self.temperature) or not 0 <= self.temperature <= 2:
            fail("temperature", f"must be a number in [0, 2], got {self.temperature!r}")
        if self.seed is not None and not is_int(self.seed):
            fail("seed", f"must be None or an int, got {self.seed!r}")


@dataclasses.dataclass(frozen=True)
class RemoteSpec:
    """The config-tree form of a RemoteConfig (`reflect.remote`, `behaviours.remote`): empty by
    default, so a run that does not use the endpoint needs none; `config()` validates it. The
    answer length, temperature and sampling come from the phase's own section (max_new_tokens,
    temperature); top_p is not sent (OpenAI-compatible servers differ on it)."""

    base_url: str = ""
    model: str = ""
    api_key_env: str = ""  # the NAME of the environment variable holding the key, never the key
    concurrency: int = 4
    timeout_s: float = 60.0
    retries: int = 2
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_requests_per_step: int | None = None
    seed: int | None = None

    def config(self, *, max_tokens: int, temperature: float) -> RemoteConfig:
        """The validated RemoteConfig (raises RemoteConfigError naming the field)."""
        return RemoteConfig(
            **dataclasses.asdict(self), max_tokens=max_tokens, temperature=temperature
        )


@dataclasses.dataclass(frozen=True)
class Result:
    """One prompt's outcome: `text` on success, else None and `error` (one of ERROR_KINDS)."""

    text: str | None
    error: str | None = None
    detail: str = ""  # for failures: status and (masked, truncated) server message
    status: int | None = None  # last HTTP status seen
    attempts: int = 0  # HTTP requests made for this prompt (0: over budget or replayed)
    latency_s: float = 0.0  # first request to outcome, waits between retries included
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    request_hash: str = ""
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class Results(list):
    """chat()'s answer: a list of Result in input order, plus `metrics` (see `metrics_of`)."""

    def __init__(self, results: Sequence[Result], seconds: float):
        super().__init__(results)
        self.seconds = seconds
        self.metrics = metrics_of(self, seconds)


def metrics_of(results: Sequence[Result], seconds: float) -> dict[str, float]:
    """Counts for a training step's metrics: "remote/prompts", "remote/requests" (HTTP requests,
    retries included), "remote/ok", "remote/failures" and "remote/failures/<kind>" for every
    kind (zeros included), "remote/retries", "remote/replayed", "remote/seconds" (wall time of
    the call), "remote/latency_max_s", "remote/completion_tokens"."""
    metrics: dict[str, float] = {
        "prompts": len(results),
        "requests": sum(r.attempts for r in results),
        "ok": sum(r.ok for r in results),
        "failures": sum(not r.ok for r in results),
        "retries": sum(max(r.attempts - 1, 0) for r in results),
        "replayed": sum(r.replayed for r in results),
        "seconds": float(seconds),
        "latency_max_s": max((r.latency_s for r in results), default=0.0),
        "completion_tokens": sum(r.completion_tokens or 0 for r in results),
    }
    for kind in ERROR_KINDS:
        metrics[f"failures/{kind}"] = sum(r.error == kind for r in results)
    return {METRIC_PREFIX + key: value for key, value in metrics.items()}


class Budget:
    """Prompts that may still be sent; share one across the chat() calls of a training step."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> int:
        """Grant up to n prompts; returns how many were granted."""
        with self._lock:
            granted = n if self.limit is None else max(0, min(n, self.limit - self.used))
            self.used += granted
            return granted

    def __repr__(self) -> str:
        return f"Budget(limit={self.limit}, used={self.used})"


# -- requests ---------------------------------------------------------------------------------


def messages_of(prompt: str | Sequence[dict]) -> list[dict]:
    """A prompt as chat messages: a string becomes one user message; messages are checked."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = list(prompt)
    if not messages:
        raise ValueError("a prompt's message list is empty")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"a chat message must be a dict with a 'role' string: {message!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"a chat message's 'content' must be a string: {message!r}")
    return [dict(message) for message in messages]


def request_payload(config: RemoteConfig, prompt: str | Sequence[dict]) -> dict:
    """The JSON body of a prompt's chat-completions request."""
    payload = {
        "model": config.model,
        "messages": messages_of(prompt),
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "stream": False,
    }
    if config.seed is not None:
        payload["seed"] = config.seed
    return payload


def payload_hash(payload: dict) -> str:
    """sha256 of the payload's canonical JSON (what a Recorder keys outcomes by)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _env_key(config: RemoteConfig) -> str | None:
    """The key from the environment, surrounding whitespace (a trailing newline) stripped."""
    if not config.api_key_env:
        return None
    return os.environ.get(config.api_key_env, "").strip() or None


def _api_key(config: RemoteConfig) -> str | None:
    """The key to send (None when api_key_env is ""); raises, naming the variable, never the
    value, when it is unset or unusable in a header."""
    if not config.api_key_env:
        return None
    key = _env_key(config)
    if key is None:
        raise RemoteConfigError(
            f"environment variable {config.api_key_env} (RemoteConfig.api_key_env) is unset or "
            "empty: set it to the API key, or set api_key_env='' for a server without a key"
        )
    if not key.isprintable() or any(c.isspace() for c in key) or not key.isascii():
        # http.client would reject the header with an error that quotes it.
        raise RemoteConfigError(
            f"environment variable {config.api_key_env} (RemoteConfig.api_key_env) holds "
            "whitespace, control or non-ASCII characters inside the key"
        )
    return key


def _mask(text: str, config: RemoteConfig) -> str:
    """`text` without the API key (a server may echo it back), whitespace folded, truncated."""
    key = _env_key(config)
    if key:
        text = text.replace(key, "***")
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + "..."


def _url(config: RemoteConfig, path: str) -> str:
    return config.base_url.rstrip("/") + path


def _opener(config: RemoteConfig) -> urllib.request.OpenerDirector:
    """An opener that honours the proxy environment, except for a loopback host."""
    host = urllib.parse.urlparse(config.base_url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return urllib.request.build_opener(urllib.request.ProxyHandler({} if loopback else None))


def _request(config: RemoteConfig, path: str, body: bytes | None) -> urllib.request.Request:
    request = urllib.request.Request(
        _url(config, path), data=body, method="POST" if body else "GET"
    )
    request.add_header("Accept", "application/json")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if config.api_key_env:  # no local variable holds the key (tracebacks with locals show none)
        request.add_header("Authorization", "Bearer " + _api_key(config))
    return request


class _Attempt:
    """One HTTP request's outcome."""

    __slots__ = ("kind", "status", "detail", "body", "retry_after")

    def __init__(self, kind=None, status=None, detail="", body=None, retry_after=None):
        self.kind, self.status, self.detail = kind, status, detail
        self.body, self.retry_after = body, retry_after


def _is_timeout(err: BaseException) -> bool:
    reason = getattr(err, "reason", None)
    return isinstance(err, TimeoutError) or isinstance(reason, TimeoutError)


def _send(config: RemoteConfig, opener, path: str, body: bytes | None) -> _Attempt:
    try:
        with opener.open(_request(config, path, body), timeout=config.timeout_s) as response:
            return _Attempt(status=response.status, body=response.read())
    except urllib.error.HTTPError as err:
        status = err.code
        try:
            text = err.read().decode("utf-8", "replace")
        except Exception:  # a body that cannot be read only means less detail
            text = ""
        finally:
            err.close()
        retry_after = None
        try:
            retry_after = float(err.headers.get("Retry-After", ""))
        except (TypeError, ValueError, AttributeError):
            pass
        kind = HTTP_5XX if status >= 500 else HTTP_4XX
        detail = f"HTTP {status} {err.reason}: {text}" if text else f"HTTP {status} {err.reason}"
        if status in (401, 403):
            detail += f" (credentials from ${config.api_key_env or '<no key: api_key_env empty>'})"
        return _Attempt(kind, status, _mask(detail, config), retry_after=retry_after)
    except TimeoutError as err:  # socket.timeout is TimeoutError (3.10+)
        return _Attempt(TIMEOUT, detail=f"timed out after {config.timeout_s} s ({err})")
    except urllib.error.URLError as err:
        if _is_timeout(err):
            return _Attempt(TIMEOUT, detail=f"timed out after {config.timeout_s} s ({err.reason})")
        return _Attempt(CONNECTION, detail=_mask(f"connection failed: {err.reason}", config))
    except (OSError, http.client.HTTPException) as err:
        return _Attempt(
            CONNECTION, detail=_mask(f"connection failed: {type(err).__name__}: {err}", config)
        )


def _parse_completion(body: bytes) -> tuple[str, str | None, int | None, int | None]:
    """(text, finish_reason, prompt_tokens, completion_tokens) of a chat.completion body."""
    data = json.loads(body)
    choice = data["choices"][0]
    text = choice["message"]["content"]
    if not isinstance(text, str):
        raise TypeError(f"choices[0].message.content is {type(text).__name__}, not a string")
    usage = data.get("usage") or {}
    return (
        text,
        choice.get("finish_reason"),
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
    )


def backoff_delay(config: RemoteConfig, request_hash: str, retry: int) -> float:
    """Seconds to wait before retry number `retry` (1-based): exponential, capped, with a jitter
    in [0.5, 1] drawn from an RNG seeded by the request hash, the retry and config.seed."""
    base = min(config.max_backoff_s, config.backoff_s * 2 ** (retry - 1))
    rng = random.Random(f"{request_hash}:{retry}:{config.seed}")
    return base * (0.5 + 0.5 * rng.random())


def _complete(config: RemoteConfig, opener, payload: dict, request_hash: str) -> Result:
    body = json.dumps(payload).encode()
    start = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        outcome = _send(config, opener, "/chat/completions", body)
        if outcome.kind is None:
            try:
                text, finish, prompt_tokens, completion_tokens = _parse_completion(outcome.body)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
                snippet = outcome.body[:120].decode("utf-8", "replace")
                outcome.kind = BAD_JSON
                outcome.detail = _mask(
                    f"HTTP {outcome.status} with an unusable body ({type(err).__name__}: {err}): "
                    f"{snippet!r}",
                    config,
                )
            else:
                return Result(
                    text,
                    status=outcome.status,
                    attempts=attempts,
                    latency_s=time.monotonic() - start,
                    finish_reason=finish,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    request_hash=request_hash,
                )
        retryable = outcome.kind in RETRYABLE or outcome.status in RETRYABLE_4XX
        if not retryable or attempts > config.retries:
            return Result(
                None,
                error=outcome.kind,
                detail=outcome.detail,
                status=outcome.status,
                attempts=attempts,
                latency_s=time.monotonic() - start,
                request_hash=request_hash,
            )
        delay = backoff_delay(config, request_hash, attempts)
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, config.max_backoff_s))
        time.sleep(delay)


# -- recording ----------------------------------------------------------------------------------


class Recorder:
    """Request-payload hash -> outcomes in order of occurrence, for exact replay.

    mode "record": chat() makes requests and stores each sent prompt's outcome (text, or error
    kind and detail); "replay": chat() answers from the stored outcomes, no network, no key;
    "record_replay": answers a prompt from the stored outcome of its hash and occurrence when
    there is one (a recorded failure replays as that failure), else requests and records it. The
    k-th occurrence of a hash (counted in input order across calls) gets the k-th outcome, so
    repeated prompts at temperature > 0 replay exactly. Serialise with to_json()/save()."""

    MODES = ("record", "replay", "record_replay")

    def __init__(self, mode: str = "record", entries: dict[str, list[dict]] | None = None):
        if mode not in self.MODES:
            raise ValueError(f"Recorder mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.entries: dict[str, list[dict | None]] = {
            h: list(v) for h, v in (entries or {}).items()
        }
        self._cursor: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def __repr__(self) -> str:
        return f"Recorder(mode={self.mode!r}, hashes={len(self.entries)}, outcomes={len(self)})"

    def _reserve(self, request_hash: str) -> int:
        """The occurrence index of the next use of `request_hash`."""
        with self._lock:
            index = self._cursor.get(request_hash, 0)
            self._cursor[request_hash] = index + 1
            if self.mode != "replay":
                slots = self.entries.setdefault(request_hash, [])
                slots.extend([None] * (index + 1 - len(slots)))
            return index

    def _store(self, request_hash: str, index: int, result: Result) -> None:
        entry = {"text": result.text, "error": result.error, "detail": result.detail}
        entry.update(
            status=result.status,
            attempts=result.attempts,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )
        with self._lock:
            self.entries[request_hash][index] = entry

    def _peek(self, hashes: Sequence[str]) -> list[int]:
        """The occurrence indices `_reserve` would give `hashes`, in order, reserving nothing."""
        with self._lock:
            seen: dict[str, int] = {}
            indices = []
            for request_hash in hashes:
                index = self._cursor.get(request_hash, 0) + seen.get(request_hash, 0)
                seen[request_hash] = seen.get(request_hash, 0) + 1
                indices.append(index)
            return indices

    def _has(self, request_hash: str, index: int) -> bool:
        with self._lock:
            outcomes = self.entries.get(request_hash, [])
            return index < len(outcomes) and outcomes[index] is not None

    def _replay(self, request_hash: str, index: int, prompt_index: int) -> Result:
        outcomes = self.entries.get(request_hash, [])
        if index >= len(outcomes) or outcomes[index] is None:
            raise ReplayMissError(
                f"no recorded response for request {request_hash} (prompt {prompt_index}, "
                f"occurrence {index}; the recording holds {len(outcomes)} for this hash and "
                f"{len(self)} in all): the payload (model, messages, max_tokens, temperature, "
                "seed) must match the recorded run's exactly"
            )
        entry = outcomes[index]
        return Result(
            entry.get("text"),
            error=entry.get("error"),
            detail=entry.get("detail", ""),
            status=entry.get("status"),
            finish_reason=entry.get("finish_reason"),
            prompt_tokens=entry.get("prompt_tokens"),
            completion_tokens=entry.get("completion_tokens"),
            request_hash=request_hash,
            replayed=True,
        )

    def rewind(self) -> None:
        """Restart occurrence counting (replay the recording again from its start)."""
        with self._lock:
            self._cursor.clear()

    def to_dict(self) -> dict:
        with self._lock:
            # A None (a request interrupted before its outcome) stays: it keeps later
            # occurrences aligned, and replaying it is a ReplayMissError.
            entries = {h: list(v) for h, v in self.entries.items()}
        return {"version": RECORDING_VERSION, "entries": entries}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict, mode: str = "replay") -> Recorder:
        if not isinstance(data, dict) or data.get("version") != RECORDING_VERSION:
            raise ValueError(
                f"not a recording of version {RECORDING_VERSION}: "
                f"version={data.get('version') if isinstance(data, dict) else None!r}"
            )
        return cls(mode, data["entries"])

    @classmethod
    def from_json(cls, text: str, mode: str = "replay") -> Recorder:
        return cls.from_dict(json.loads(text), mode)

    def save(self, path: str | os.PathLike) -> None:
        path = pathlib.Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | os.PathLike, mode: str = "replay") -> Recorder:
        return cls.from_json(pathlib.Path(path).read_text(), mode)


# -- public calls -------------------------------------------------------------------------------


def check(config: RemoteConfig) -> list[str]:
    """One cheap request (GET {base_url}/models) before training starts; returns the model ids
    the server lists. Raises RemoteConfigError (key variable unset), RemoteAuthError (HTTP
    401/403, naming the variable, never the key) or RemoteUnavailableError (anything else)."""
    _api_key(config)  # raises, naming the variable, when it is unset
    outcome = _send(config, _opener(config), "/models", None)
    where = f"GET {_url(config, '/models')}"
    if outcome.status in (401, 403):
        key_hint = (
            f"the API key in environment variable {config.api_key_env} was rejected"
            if config.api_key_env
            else "no API key was sent: set RemoteConfig.api_key_env to the NAME of the "
            "environment variable holding the key"
        )
        raise RemoteAuthError(
            f"{where} answered HTTP {outcome.status}: {key_hint} ({outcome.detail})"
        )
    if outcome.kind is not None:
        raise RemoteUnavailableError(f"{where} failed ({outcome.kind}): {outcome.detail}")
    try:
        data = json.loads(outcome.body)
        return [str(model["id"]) for model in data.get("data", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        snippet = outcome.body[:120].decode("utf-8", "replace")
        raise RemoteUnavailableError(
            f"{where} answered HTTP {outcome.status} with no model list ({err}): {_mask(snippet, config)!r}"
        ) from None


def chat(
    config: RemoteConfig,
    prompts: Sequence[str] | Sequence[Sequence[dict]],
    *,
    recorder: Recorder | None = None,
    budget: Budget | None = None,
) -> Results:
    """Chat completions for `prompts` (strings become one user message each), in input order.

    Failed requests are Results with an error kind, never raises (the key variable unset and a
    replay miss do raise, before any request). `budget` (default: a fresh
    Budget(config.max_requests_per_step)) grants prompts in input order; the rest get
    "over_budget". `recorder` records outcomes or replays them (see Recorder)."""
    if isinstance(prompts, str | dict):
        raise TypeError("chat() takes a list of prompts (strings or message lists), not one prompt")
    start = time.monotonic()
    payloads = [request_payload(config, prompt) for prompt in prompts]
    hashes = [payload_hash(payload) for payload in payloads]
    budget = Budget(config.max_requests_per_step) if budget is None else budget
    granted = budget.take(len(payloads))
    results: list[Result | None] = [None] * len(payloads)
    for i in range(granted, len(payloads)):
        detail = f"past the budget of {budget.limit} requests (max_requests_per_step)"
        results[i] = Result(None, error=OVER_BUDGET, detail=detail, request_hash=hashes[i])
    if recorder is not None and recorder.mode == "replay":
        for i in range(granted):
            results[i] = recorder._replay(hashes[i], recorder._reserve(hashes[i]), i)
        return Results(results, time.monotonic() - start)

    pending = list(range(granted))
    if recorder is not None and recorder.mode == "record_replay":
        planned = recorder._peek(hashes[:granted])
        pending = [i for i in range(granted) if not recorder._has(hashes[i], planned[i])]
    if pending or recorder is None or recorder.mode == "record":
        # Raises, naming the variable, when it is unset (before any reservation).
        _api_key(config)
    slots = (
        [recorder._reserve(h) for h in hashes[:granted]]
        if recorder is not None
        else [None] * granted
    )
    if recorder is not None and recorder.mode == "record_replay":
        for i in sorted(set(range(granted)) - set(pending)):
            results[i] = recorder._replay(hashes[i], slots[i], i)
    opener = _opener(config)

    def run(i: int) -> None:
        result = _complete(config, opener, payloads[i], hashes[i])
        if recorder is not None:
            recorder._store(hashes[i], slots[i], result)
        results[i] = result

    if pending:
        with ThreadPoolExecutor(min(config.concurrency, len(pending)), "remote-chat") as pool:
            for future in [pool.submit(run, i) for i in pending]:
                future.result()
    return Results(results, time.monotonic() - start)
