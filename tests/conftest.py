"""Shared test fixtures (add yours below; keep the existing ones' behaviour).

Plain helpers live in ``tests/ingest_fixtures.py`` (import them from there, not from
``conftest``: several ``conftest.py`` files exist, so that name is ambiguous).

* ``image_writer``: :func:`ingest_fixtures.write_image`, a small distinct JPEG/PNG.
* ``moto_endpoint``: a real ``moto_server`` subprocess over HTTP on a free localhost port
  (session-wide), for S3 tests; skipped with a loud reason only if the binary is absent.
* ``tiny_models``: :class:`utils.model_factory.TinyModels`, built once per session.
* ``live_api``: URL of the real API app serving the tiny model (session-wide).
* ``fault_server``: a stdlib HTTP server answering each path as a test tells it.
* ``raw_dataset``: a ``data/raw/<split>/<label>/`` tree with a dataset config in a temp
  working directory, plus settings for a local object store there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingest_fixtures import (
    TEST_LABELS,
    RawDataset,
    start_moto_server,
    stop_process,
    write_dataset_config,
    write_image,
)
from skin_mlops.core.config import get_settings, load_settings
from utils.model_factory import TinyModels, build_tiny_models, publish_tiny_export
from utils.servers import FaultServer, make_settings, start_live_server, stop_live_server


# --- options of the model and data suites (tests/model, tests/data) -----------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    """``--model-source``, ``--data-dir`` and the thresholds of ``-m model`` / ``-m data``."""
    from utils.suite_options import add_suite_options

    add_suite_options(parser)


# --- end of the model and data suites' options --------------------------------------------


@pytest.fixture
def image_writer() -> Callable[..., Path]:
    """:func:`ingest_fixtures.write_image` as a fixture."""
    return write_image


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a ``moto_server`` shared by the session (use unique bucket names per test)."""
    process, endpoint = start_moto_server()
    yield endpoint
    stop_process(process)


@pytest.fixture
def raw_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RawDataset]:
    """An empty train/val tree (one folder per label) in a fresh working directory.

    The working directory is ``tmp_path`` (so relative config paths resolve there, and no
    ``.env`` of the checkout is read); settings point the local store at ``data/objects``.
    """
    monkeypatch.chdir(tmp_path)
    for key in ("STORAGE_BACKEND", "LOCAL_OBJECT_ROOT", "DATASET_CONFIG", "S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LOCAL_OBJECT_ROOT", str(tmp_path / "data" / "objects"))
    get_settings.cache_clear()
    for split in ("train", "val"):
        for label in TEST_LABELS:
            (tmp_path / "data" / "raw" / split / label).mkdir(parents=True)
    config_path = write_dataset_config(tmp_path / "configs" / "dataset_config.yaml", TEST_LABELS)
    monkeypatch.setenv("DATASET_CONFIG", str(config_path))
    settings = load_settings(storage_backend="local", local_object_root=tmp_path / "data/objects")
    yield RawDataset(root=tmp_path, config_path=config_path, settings=settings)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_models() -> TinyModels:
    """Tiny exported models (Keras + tf2onnx, ~15 s), built once per session."""
    return build_tiny_models()


@pytest.fixture(scope="session")
def live_api(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the real API app (uvicorn, loopback) serving tiny model ``v1``; session-wide."""
    link = tmp_path_factory.mktemp("live-api") / "runs" / "skin5-current"
    publish_tiny_export(link, tiny_models.v1, "v1")
    live = start_live_server(make_settings(link))
    yield live.url
    stop_live_server(live)


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A :class:`utils.servers.FaultServer` for one test."""
    server = FaultServer()
    yield server
    server.close()
