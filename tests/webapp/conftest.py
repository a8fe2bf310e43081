"""Fixtures for the web app's page tests: settings pointing the page at an API."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from skin_mlops.core.config import get_settings
from utils.prometheus import parse_metrics
from utils.servers import free_port


@pytest.fixture
def page_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], int]]:
    """Point the page at ``api_url``, with its exporter on a fresh port; returns that port."""

    def configure(api_url: str) -> int:
        port = free_port()
        monkeypatch.setenv("API_BASE_URL", api_url)
        monkeypatch.setenv("WEBAPP_METRICS_PORT", str(port))
        monkeypatch.setenv("WEBAPP_API_TIMEOUT_S", "10")
        monkeypatch.setenv("UNCERTAINTY_THRESHOLD", "0.5")
        get_settings.cache_clear()
        return port

    yield configure
    get_settings.cache_clear()


def scrape(port: int) -> dict[str, float]:
    """``{series: value}`` of the exporter on ``port`` (series with their labels)."""
    return parse_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
