"""The web app's exporter: its own registry, one per process, a busy port is not a crash."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import pytest

from skin_mlops.webapp.metrics import create_metrics, process_metrics
from utils.servers import free_port
from utils.tools import require_tool

from .conftest import scrape


def test_each_instance_has_its_own_registry_so_a_rerun_never_registers_twice() -> None:
    first, second = create_metrics(None), create_metrics(None)
    first.uploads.inc()
    assert second.registry is not first.registry
    assert second.uploads._value.get() == 0  # type: ignore[attr-defined]


def test_serves_prometheus_text_with_the_spec_names() -> None:
    metrics = create_metrics(0)
    try:
        assert metrics.port
        metrics.page_views.inc()
        metrics.observe_call("timeout", 2.0)
        metrics.record_result("acne", low_confidence=True)
        values = scrape(metrics.port)
    finally:
        metrics.stop()
    assert values["webapp_page_views_total"] == 1
    assert values['webapp_prediction_latency_seconds_count{status="timeout"}'] == 1
    assert values['webapp_prediction_latency_seconds_count{status="ok"}'] == 0, "pre-created"
    assert values['webapp_prediction_results_total{label="acne"}'] == 1
    assert values["webapp_low_confidence_total"] == 1
    for name in ("webapp_uploads_total", "webapp_predict_clicks_total"):
        assert values[name] == 0


def test_a_busy_port_is_logged_and_the_counters_still_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = create_metrics(port)
    assert metrics.port is None
    assert metrics.problem and str(port) in metrics.problem
    assert "WEBAPP_METRICS_PORT" in caplog.text
    metrics.uploads.inc()  # no exception


def test_the_process_exporter_is_started_once_per_port() -> None:
    port = free_port()
    first = process_metrics(port)
    try:
        again = process_metrics(port)
        assert again is first and first.port == port
    finally:
        first.stop()


def test_promtool_accepts_the_exposition() -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    metrics = create_metrics(0)
    try:
        metrics.record_result("acne", low_confidence=False)
        text = httpx.get(f"http://127.0.0.1:{metrics.port}/metrics", timeout=5).text
    finally:
        metrics.stop()
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_web_app_modules_import_without_fastapi_onnxruntime_or_tensorflow() -> None:
    """What the webapp image has: the project and the ``webapp`` group, nothing else."""
    code = (
        "import sys\n"
        "for name in ('fastapi', 'onnxruntime', 'tensorflow', 'keras', 'starlette'):\n"
        "    sys.modules[name] = None\n"
        "import skin_mlops.webapp.client, skin_mlops.webapp.logic, skin_mlops.webapp.metrics\n"
        "import skin_mlops.cli\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
