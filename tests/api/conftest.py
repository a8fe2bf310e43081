"""Fixtures for the API tests: tiny exported models, apps, a live uvicorn server.

Models are built once per session (Keras + tf2onnx, ~15 s) and published into a
per-test ``runs/skin5-current`` link under ``tmp_path``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from skin_mlops.api.main import create_app
from skin_mlops.core.config import Settings
from utils.model_factory import TinyModels, publish_tiny_export
from utils.servers import (
    ADMIN_TOKEN,
    LiveServer,
    free_port,
    make_settings,
    start_live_server,
    stop_live_server,
)

__all__ = ["ADMIN_TOKEN", "free_port", "make_settings", "start_live_server", "stop_live_server"]


@pytest.fixture(autouse=True)
def _restore_mlflow_http_env() -> Iterator[None]:
    """A registry source sets MLflow's HTTP retry defaults in ``os.environ`` (the serving
    process is its own); give other tests of the session the environment they had."""
    keys = [key for key in os.environ if key.startswith("MLFLOW_HTTP_REQUEST_")]
    before = {key: os.environ[key] for key in keys}
    yield
    for key in [key for key in os.environ if key.startswith("MLFLOW_HTTP_REQUEST_")]:
        if key not in before:
            del os.environ[key]
    os.environ.update(before)


@pytest.fixture
def export_link(tmp_path: Path, tiny_models: TinyModels) -> Path:
    """``<tmp>/runs/skin5-current`` pointing at version ``v1`` of the tiny model."""
    link = tmp_path / "runs" / "skin5-current"
    publish_tiny_export(link, tiny_models.v1, "v1")
    return link


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


@pytest.fixture
def live_server_for() -> Iterator[Callable[..., LiveServer]]:
    """Start live servers for given settings (and :func:`start_live_server` options); all
    are stopped at teardown."""
    started: list[LiveServer] = []

    def start(settings: Settings, **options: Any) -> LiveServer:
        live = start_live_server(settings, **options)
        started.append(live)
        return live

    yield start
    for live in started:
        stop_live_server(live)
