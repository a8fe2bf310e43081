"""Live servers for tests: the real API app under uvicorn in a thread, free ports.

:func:`make_settings` gives explicit API settings for a model source; :func:`start_live_server`
runs ``create_app(settings)`` on a free loopback port and waits for ``/ready``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from ingest_fixtures import free_port
from skin_mlops.api.main import create_app
from skin_mlops.core.config import Settings, load_settings

ADMIN_TOKEN = "test-admin-token"


def make_settings(model_source: Path | str, **overrides: object) -> Settings:
    """Test settings: explicit values for everything the service reads."""
    values: dict[str, object] = {
        "model_source": str(model_source),
        "model_poll_seconds": 0,
        "max_batch_size": 16,
        "max_batch_wait_ms": 20,
        "max_upload_bytes": 2 * 1024 * 1024,
        "max_batch_upload_bytes": 8 * 1024 * 1024,
        "max_image_pixels": 40_000_000,
        "admin_token": ADMIN_TOKEN,
        "uncertainty_threshold": 0.5,
        "preprocess_workers": 2,
        "ort_intra_op_threads": 1,
    }
    values.update(overrides)
    return load_settings(**values)


@dataclass
class LiveServer:
    """A uvicorn server running an app in a background thread."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread


def start_live_server(
    settings: Settings, wait_path: str = "/ready", timeout_s: float = 30
) -> LiveServer:
    """Run ``create_app(settings)`` under uvicorn on a free loopback port.

    Returns once ``wait_path`` answers 200 (``/ready``: the model serves; ``/health``: the
    process answers, with or without a model).
    """
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{wait_path}", timeout=1).status_code == 200:
                return LiveServer(url, server, thread)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.should_exit = True
    raise RuntimeError(f"live server did not answer {wait_path} within {timeout_s:g} s")


def stop_live_server(live: LiveServer) -> None:
    """Ask uvicorn to exit and wait for its thread."""
    live.server.should_exit = True
    live.thread.join(timeout=15)


@dataclass
class Reply:
    """What :class:`FaultServer` answers on one path."""

    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    delay_s: float = 0.0


class FaultServer:
    """A stdlib HTTP server that answers each path as told (slow, 5xx, broken JSON, ...).

    ``replies[path]`` sets the answer; ``hits[path]`` counts the requests that arrived.
    """

    def __init__(self) -> None:
        import http.server

        self.replies: dict[str, Reply] = {}
        self.hits: dict[str, int] = {}
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                path = self.path.split("?", 1)[0]
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                owner.hits[path] = owner.hits.get(path, 0) + 1
                reply = owner.replies.get(path, Reply(404, b'{"detail": "Not Found"}'))
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def start_command(
    argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, stdout and stderr into ``log_path``."""
    log = log_path.open("wb")
    return subprocess.Popen(
        argv,
        env={**os.environ, **env},
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_http(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 60
) -> None:
    """Poll ``url`` until it answers 200; fail with the log's tail if the process dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{process.args} exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g} s")


def stop_command(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM the process group, SIGKILL it after ``timeout_s``."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
