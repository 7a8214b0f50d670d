"""A tiny OpenAI-compatible chat-completions server (http.server in a thread, 127.0.0.1) for
the fast tests of pmd_jax.remote (tests/test_remote.py) and of the training wiring
(tests/test_remote_backend.py).

    with serve() as (state, base_url):   # base_url = "http://127.0.0.1:<port>/v1"
        state.reply = lambda body: "..."  # the answer to a chat request (default: an echo)
        state.mode_of = lambda body: "500" or None  # per-request failure (default: none)
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeState:
    """Behaviour switches and what the fake saw. `script` modes are used (one per chat request)
    before `mode`: "ok", "500", "429", "400", "sleep" (past the client's timeout), "bad_json",
    "no_choices", "401"."""

    def __init__(self):
        self.lock = threading.Lock()
        self.mode = "ok"
        self.script: list[str] = []
        self.delay_s = 0.0  # every chat answer waits this long
        self.sleep_s = 1.0  # mode "sleep"
        self.api_key: str | None = None  # when set, a request without this key gets 401
        self.chat_requests: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.served = 0
        self.inflight = 0
        self.max_inflight = 0
        # When set: the answer text of a chat request body (instead of the echo), and a mode
        # chosen per request body (None: the script / mode), so a concurrent batch fails the
        # same prompts on every run.
        self.reply: Callable[[dict], str] | None = None
        self.mode_of: Callable[[dict], str | None] | None = None

    def next_mode(self) -> str:
        with self.lock:
            return self.script.pop(0) if self.script else self.mode


class FakeHandler(BaseHTTPRequestHandler):
    state: FakeState  # set on the per-server subclass
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _json(self, status: int, body, headers: dict | None = None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization")
        with self.state.lock:
            self.state.auth_headers.append(auth)
        if self.state.api_key is None or auth == f"Bearer {self.state.api_key}":
            return True
        given = (auth or "").removeprefix("Bearer ")
        # Like OpenAI's own answer, echo the key given (the client must mask it).
        message = f"Incorrect API key provided: {given}"
        self._json(401, {"error": {"message": message, "type": "invalid_request_error"}})
        return False

    def do_GET(self):
        if self.path.rstrip("/") != "/v1/models":
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        if self._authorised():
            self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        state = self.state
        with state.lock:
            state.chat_requests.append(body)
            state.inflight += 1
            state.max_inflight = max(state.max_inflight, state.inflight)
        try:
            if not self._authorised():
                return
            mode = (state.mode_of and state.mode_of(body)) or state.next_mode()
            content = body["messages"][-1]["content"]
            time.sleep(state.delay_s + (state.sleep_s if mode == "sleep" else 0.0))
            if content.startswith("wait:"):  # per-prompt delay, to scramble completion order
                time.sleep(float(content.split(":")[1]))
            if mode == "500":
                return self._json(500, {"error": {"message": "internal error"}})
            if mode == "429":
                return self._json(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
            if mode == "400":
                return self._json(400, {"error": {"message": "bad request"}})
            if mode == "bad_json":
                return self._json(200, b'{"choices": [{"message": ')
            if mode == "no_choices":
                return self._json(200, {"object": "chat.completion"})
            with state.lock:
                state.served += 1
                served = state.served
            text = f"echo: {content}"
            if state.reply is not None:
                text = state.reply(body)
            elif body.get("temperature", 0) > 0:  # a sampled answer differs on every request
                text += f" #{served}"
            self._json(
                200,
                {
                    "id": f"chatcmpl-{served}",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                },
            )
        finally:
            with state.lock:
                state.inflight -= 1


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler still sleeping must not hold up the test's teardown


@contextlib.contextmanager
def serve() -> Iterator[tuple[FakeState, str]]:
    """(state, base_url) of a fresh fake OpenAI server on 127.0.0.1, stopped on exit."""
    state = FakeState()
    handler = type("Handler", (FakeHandler,), {"state": state})
    server = FakeServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
