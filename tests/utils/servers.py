"""Live servers for tests: the real API app under uvicorn in a thread, free ports.

:func:`make_settings` gives explicit API settings for a model source; :func:`start_live_server`
runs ``create_app(settings)`` on a free loopback port and waits for ``/ready``.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

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


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A uvicorn server running an app in a background thread."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread


def start_live_server(settings: Settings) -> LiveServer:
    """Run ``create_app(settings)`` under uvicorn on a free loopback port; wait for /ready."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return LiveServer(url, server, thread)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.should_exit = True
    raise RuntimeError("live server did not become ready within 30 s")


def stop_live_server(live: LiveServer) -> None:
    """Ask uvicorn to exit and wait for its thread."""
    live.server.should_exit = True
    live.thread.join(timeout=15)
