"""Loading, validation and hot reload of the served model."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from skin_mlops.api.main import create_app
from skin_mlops.api.model_runtime import ModelRefusedError, load_model
from skin_mlops.export_format import ONNX_MODEL_FILE, resolve_export_dir
from utils.images import encode, two_tone
from utils.model_factory import TinyModels, publish_tiny_export
from utils.servers import ADMIN_TOKEN

from .test_metrics import sample_value, scrape

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def wait_for(predicate, timeout: float = 15.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def predict_red(client: TestClient) -> dict:
    response = client.post("/predict", files={"file": ("x.png", encode(two_tone("red")))})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("garbage-onnx", "ONNX Runtime cannot load"),
        ("three-outputs", "output has shape"),
        ("other-preprocessing", "preprocessing"),
        ("wrong-input-name", "input is named"),
        ("wrong-image-size", "input"),
    ],
)
def test_broken_candidates_are_refused_with_a_reason(
    tmp_path: Path, tiny_models: TinyModels, settings_for, broken: str, message: str
) -> None:
    link = tmp_path / "runs" / "skin5-current"
    kwargs: dict = {}
    model = tiny_models.v1
    if broken == "garbage-onnx":
        kwargs["onnx_bytes"] = b"this is not a protobuf"
    elif broken == "three-outputs":
        model = tiny_models.three_outputs
    elif broken == "other-preprocessing":
        kwargs["preprocessing_id"] = "tf-image-resize-v9"
    elif broken == "wrong-input-name":
        from skin_mlops.export_format import TensorSpec

        kwargs["input"] = TensorSpec(name="pixels", shape=[None, 32, 32, 3])
    elif broken == "wrong-image-size":
        kwargs["image_size"] = 64
    publish_tiny_export(link, model, "bad", **kwargs)
    folder = resolve_export_dir(link)
    with pytest.raises(ModelRefusedError, match=message):
        load_model(folder, str(folder), settings_for(link))


def test_polling_swaps_in_a_new_version_and_refuses_a_broken_one(
    export_link: Path, tiny_models: TinyModels, settings_for
) -> None:
    settings = settings_for(export_link, model_poll_seconds=0.1)
    with TestClient(create_app(settings)) as client:
        assert predict_red(client)["model_version"] == "v1"

        publish_tiny_export(export_link, tiny_models.v2, "v2")
        wait_for(lambda: client.get("/model").json()["model_version"] == "v2")
        assert predict_red(client)["model_version"] == "v2"

        publish_tiny_export(export_link, tiny_models.v1, "v3-broken", onnx_bytes=b"\x00garbage")
        wait_for(lambda: client.get("/model").json()["last_reload_error"] is not None)
        info = client.get("/model").json()
        assert info["model_version"] == "v2"
        assert "cannot load" in info["last_reload_error"]
        assert client.get("/ready").json() == {"ready": True, "model_version": "v2", "detail": None}
        assert predict_red(client)["model_version"] == "v2"
        metrics = scrape(client)
        assert sample_value(metrics["api_model_reload_failing"], "api_model_reload_failing") == 1
        assert (
            sample_value(metrics["api_model_reloads"], "api_model_reloads_total", result="refused")
            >= 1
        )
        assert [s.labels["version"] for s in metrics["api_model_info"]] == ["v2"]

        publish_tiny_export(export_link, tiny_models.v1, "v4")
        wait_for(lambda: client.get("/model").json()["model_version"] == "v4")
        assert client.get("/model").json()["last_reload_error"] is None
        metrics = scrape(client)
        assert sample_value(metrics["api_model_reload_failing"], "api_model_reload_failing") == 0
        assert [s.labels["version"] for s in metrics["api_model_info"]] == ["v4"]


def test_admin_reload_needs_the_token(
    export_link: Path, tiny_models: TinyModels, settings_for
) -> None:
    with TestClient(create_app(settings_for(export_link))) as client:
        publish_tiny_export(export_link, tiny_models.v2, "v2")
        assert client.post("/admin/reload").status_code == 401
        wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "token" in wrong.json()["detail"]
        assert predict_red(client)["model_version"] == "v1"  # no polling: still v1

        ok = client.post("/admin/reload", headers=AUTH)
        assert ok.status_code == 200, ok.text
        assert ok.json() == {
            "reloaded": True,
            "model_version": "v2",
            "previous_version": "v1",
            "detail": "model swapped in",
        }
        assert predict_red(client)["model_version"] == "v2"

        publish_tiny_export(export_link, tiny_models.three_outputs, "v3-three-outputs")
        refused = client.post("/admin/reload", headers=AUTH)
        assert refused.status_code == 409
        assert (
            "refused" in refused.json()["detail"] and "still serving v2" in refused.json()["detail"]
        )
        assert predict_red(client)["model_version"] == "v2"


def test_admin_is_disabled_without_a_token(export_link: Path, settings_for) -> None:
    with TestClient(create_app(settings_for(export_link, admin_token=None))) as client:
        response = client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 403
    assert "ADMIN_TOKEN" in response.json()["detail"]


def test_in_flight_requests_survive_a_swap(
    export_link: Path, tiny_models: TinyModels, settings_for, live_server_for
) -> None:
    live = live_server_for(settings_for(export_link, max_batch_wait_ms=5))
    data = encode(two_tone("green"))

    async def load_with_swap() -> tuple[list[int], list[str], int]:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:

            async def worker(n: int) -> list[httpx.Response]:
                return [
                    await client.post("/predict", files={"file": ("x.png", data)}) for _ in range(n)
                ]

            async def swap() -> int:
                await asyncio.sleep(0.3)
                publish_tiny_export(export_link, tiny_models.v2, "v2")
                return (await client.post("/admin/reload", headers=AUTH)).status_code

            *batches, swap_status = await asyncio.gather(*(worker(25) for _ in range(8)), swap())
        responses = [r for batch in batches for r in batch]
        return (
            [r.status_code for r in responses],
            [r.json()["model_version"] for r in responses],
            swap_status,
        )

    statuses, versions, swap_status = asyncio.run(load_with_swap())
    assert swap_status == 200
    assert statuses == [200] * len(statuses)
    assert {"v1", "v2"} <= set(versions)
    assert httpx.get(f"{live.url}/model").json()["model_version"] == "v2"


def test_export_folder_removed_under_a_running_model(
    export_link: Path, settings_for, tmp_path: Path
) -> None:
    """Deleting files of the served version does not affect the loaded session."""
    with TestClient(create_app(settings_for(export_link))) as client:
        (resolve_export_dir(export_link) / ONNX_MODEL_FILE).unlink()
        assert predict_red(client)["label"] == "red"
