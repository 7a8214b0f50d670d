"""llama.cpp's OpenAI-compatible server (llama-cpp-python) as a test subprocess.

    with LlamaServer(gguf_path, api_key=None) as server:   # waits for /v1/models (120 s)
        server.base_url                                    # "http://127.0.0.1:<port>/v1"

The server is always stopped on exit: SIGTERM, then SIGKILL after a grace period. Install it with
`CMAKE_BUILD_PARALLEL_LEVEL=2 .venv/bin/pip install 'llama-cpp-python[server]'` (a source build:
cmake and a C++ compiler; not part of the test extra, too slow for every CI run).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

# What `python -m llama_cpp.server` imports beyond llama_cpp itself (the [server] extra).
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")
INSTALL_HINT = "CMAKE_BUILD_PARALLEL_LEVEL=2 .venv/bin/pip install 'llama-cpp-python[server]'"
MODEL_ALIAS = "smollm2"


def unavailable_reason() -> str | None:
    """Why llama.cpp's server cannot run here, or None when it can."""
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"llama.cpp's OpenAI server needs llama-cpp-python[server] (not importable: "
            f"{', '.join(missing)}); install it with `{INSTALL_HINT}` (builds from source)"
        )
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` serving one GGUF on 127.0.0.1 at a free port."""

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        api_key: str | None = None,
        n_ctx: int = 2048,
        startup_s: float = 120.0,
        grace_s: float = 10.0,
    ):
        self.model = pathlib.Path(model)
        self.api_key = api_key
        self.n_ctx = n_ctx
        self.startup_s = startup_s
        self.grace_s = grace_s
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(  # closed in stop()
            mode="w+b", prefix="llama_server_", suffix=".log", delete=False
        )

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model)]
        cmd += ["--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--n_ctx", str(self.n_ctx)]
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        return cmd

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        text = pathlib.Path(self._log.name).read_bytes().decode("utf-8", "replace")
        if self.api_key:
            text = text.replace(self.api_key, "***")
        return text[-chars:]

    def start(self) -> LlamaServer:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: stop() ends it and its children
        )
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited with {self.proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            if self.is_up():
                return self
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(
            f"llama.cpp server did not answer {self.base_url}/models within {self.startup_s} s:\n"
            + tail
        )

    def is_up(self) -> bool:
        """Any HTTP answer from /models (a 401 when it wants a key counts as up)."""
        try:
            with urllib.request.urlopen(self.base_url + "/models", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL now (a server dying mid-request)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, SIGKILL after `grace_s`; always reaps the process and closes the log."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                    self.proc.wait(self.grace_s)
                except subprocess.TimeoutExpired:
                    self.kill()
                except ProcessLookupError:
                    pass
            if self.proc is not None:
                self.proc.wait()
        finally:
            self._log.close()
            pathlib.Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> LlamaServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
