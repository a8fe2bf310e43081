"""MLflow down at start-up, with credentials in its URI: a real ``mlflow server``, stopped
and started again on the same port with the same store.

The API starts anyway (``/health`` answers at once), ``/ready`` says "model source
unreachable" with a redacted URI, ``POST /admin/reload`` is 503 (not 409), and the poller
serves the champion once MLflow is back. No response and no log line of the service shows
the password.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest

from utils.images import encode, two_tone
from utils.model_factory import TinyModels
from utils.servers import ADMIN_TOKEN

from .mlflow_server import MlflowServer
from .test_registry import MODEL_NAME, log_and_register

PASSWORD = "s3cret-Pa55word"


@pytest.mark.service
@pytest.mark.timeout(420)
def test_mlflow_down_at_start_up_then_back(
    tmp_path: Path,
    tiny_models: TinyModels,
    settings_for,
    live_server_for,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    try:
        client = mlflow.MlflowClient(tracking_uri=server.url)
        experiment_id = client.create_experiment("skin")
        version = log_and_register(server.url, experiment_id, tiny_models.v1, "reg-v1", tmp_path)
        client.set_registered_model_alias(MODEL_NAME, "champion", version)
        server.stop()

        with_login = f"http://mlflow-user:{PASSWORD}@127.0.0.1:{server.port}"
        redacted = f"http://***@127.0.0.1:{server.port}"
        settings = settings_for(
            f"models:/{MODEL_NAME}@champion",
            mlflow_tracking_uri=with_login,
            model_cache_dir=tmp_path / "cache",
            model_poll_seconds=0.5,
        )
        caplog.set_level(logging.INFO, logger="skin_mlops")
        started = time.monotonic()
        live = live_server_for(settings, wait_path="/health", timeout_s=60)
        startup_s = time.monotonic() - started
        assert startup_s < 30, f"start-up waited {startup_s:.0f} s for MLflow"

        ready = httpx.get(f"{live.url}/ready")
        assert ready.status_code == 503
        detail = ready.json()["detail"]
        assert detail.startswith("model source unreachable"), detail
        assert redacted in detail and PASSWORD not in detail
        info = httpx.get(f"{live.url}/model")
        assert info.status_code == 503 and PASSWORD not in info.text
        assert "model source unreachable" in info.json()["detail"]
        assert PASSWORD not in httpx.get(f"{live.url}/health").text
        reload = httpx.post(
            f"{live.url}/admin/reload",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=60,
        )
        assert reload.status_code == 503, reload.text
        assert reload.headers["Retry-After"]
        assert "model source unreachable" in reload.json()["detail"]
        assert PASSWORD not in reload.text

        server.start()  # same port, same store
        deadline = time.monotonic() + 90
        while httpx.get(f"{live.url}/ready").status_code != 200:
            assert time.monotonic() < deadline, httpx.get(f"{live.url}/ready").text
            time.sleep(0.2)
        info = httpx.get(f"{live.url}/model").json()
        assert info["model_version"] == "reg-v1"
        assert info["source"] == f"models:/{MODEL_NAME}@champion (MLflow at {redacted})"
        assert info["last_reload_error"] is None
        red = httpx.post(f"{live.url}/predict", files={"file": ("x.png", encode(two_tone("red")))})
        assert red.status_code == 200 and red.json()["label"] == "red"
    finally:
        server.stop()
    assert any("does not answer" in r.getMessage() for r in caplog.records)
    assert PASSWORD not in caplog.text, "the password was logged"
