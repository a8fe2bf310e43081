"""Fixtures for the API tests: tiny exported models, apps, a live uvicorn server.

Models are built once per session (Keras + tf2onnx, ~15 s) and published into a
per-test ``runs/skin5-current`` link under ``tmp_path``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from skin_mlops.api.main import create_app
from skin_mlops.core.config import Settings, load_settings

from .model_factory import TinyModel, build_tiny_model, publish_tiny_export

ADMIN_TOKEN = "test-admin-token"


@dataclass(frozen=True)
class TinyModels:
    """The session's models: two good versions and one with the wrong number of outputs."""

    v1: TinyModel
    v2: TinyModel
    three_outputs: TinyModel


@pytest.fixture(scope="session")
def tiny_models() -> TinyModels:
    """Build the tiny models once per session."""
    return TinyModels(
        v1=build_tiny_model(seed=1),
        v2=build_tiny_model(seed=2),
        three_outputs=build_tiny_model(seed=3, n_outputs=3),
    )


@pytest.fixture
def export_link(tmp_path: Path, tiny_models: TinyModels) -> Path:
    """``<tmp>/runs/skin5-current`` pointing at version ``v1`` of the tiny model."""
    link = tmp_path / "runs" / "skin5-current"
    publish_tiny_export(link, tiny_models.v1, "v1")
    return link


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


@pytest.fixture
def settings_for() -> Callable[..., Settings]:
    """:func:`make_settings` as a fixture."""
    return make_settings


@pytest.fixture
def client(export_link: Path) -> Iterator[TestClient]:
    """A TestClient (lifespan run) for an app serving ``v1``."""
    with TestClient(
        create_app(make_settings(export_link)), raise_server_exceptions=False
    ) as test_client:
        yield test_client


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


@pytest.fixture
def live_server_for() -> Iterator[Callable[[Settings], LiveServer]]:
    """Start live servers for given settings; all are stopped at teardown."""
    started: list[LiveServer] = []

    def start(settings: Settings) -> LiveServer:
        live = start_live_server(settings)
        started.append(live)
        return live

    yield start
    for live in started:
        stop_live_server(live)
