"""The endpoints of the app from ``create_app``, served a real tiny ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from skin_mlops.preprocessing import preprocess_bytes
from utils.images import COLOURS, encode, two_tone
from utils.model_factory import IMAGE_SIZE, LABELS, TinyModels


def test_health_ready_model(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True and ready.json()["model_version"] == "v1"
    info = client.get("/model").json()
    assert info["labels"] == LABELS
    assert info["model_version"] == "v1"
    assert info["backbone"] == "tiny-test-net"
    assert info["image_size"] == IMAGE_SIZE
    assert info["metrics"]["val_macro_f1"] == pytest.approx(0.88)
    assert info["last_reload_error"] is None


@pytest.mark.parametrize("label", list(COLOURS))
def test_predict_returns_the_calibrated_keras_probabilities(
    client: TestClient, tiny_models: TinyModels, label: str
) -> None:
    data = encode(two_tone(label), "PNG")
    response = client.post("/predict", files={"file": ("photo.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == label
    assert body["model_version"] == "v1"
    assert body["inference_ms"] > 0
    assert [item["label"] for item in body["top_k"]][0] == label
    assert len(body["top_k"]) == 3

    expected = tiny_models.v1.probabilities(preprocess_bytes(data, IMAGE_SIZE)[None])[0]
    served = {item["label"]: item["probability"] for item in body["top_k"]}
    for name, probability in served.items():
        assert probability == pytest.approx(expected[LABELS.index(name)], abs=1e-5)
    assert body["confidence"] == pytest.approx(expected.max(), abs=1e-5)
    assert body["uncertain"] is (body["confidence"] < 0.5)


def test_top_k_is_ranked_and_capped(client: TestClient) -> None:
    data = encode(two_tone("green"), "PNG")
    body = client.post("/predict?top_k=50", files={"file": ("x.png", data)}).json()
    probabilities = [item["probability"] for item in body["top_k"]]
    assert len(probabilities) == len(LABELS)
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-6)
    one = client.post("/predict?top_k=1", files={"file": ("x.png", data)}).json()
    assert len(one["top_k"]) == 1
    bad = client.post("/predict?top_k=0", files={"file": ("x.png", data)})
    assert bad.status_code == 422 and "top_k" in bad.json()["detail"]


def test_uncertain_flag_when_confidence_is_low(export_link, settings_for) -> None:
    from skin_mlops.api.main import create_app

    with TestClient(create_app(settings_for(export_link, uncertainty_threshold=0.9999))) as strict:
        body = strict.post("/predict", files={"file": ("x.png", encode(two_tone("red")))}).json()
    assert body["uncertain"] is True
    assert "low confidence" in body["warning"]


def test_batch_predicts_each_file_and_reports_bad_ones(client: TestClient) -> None:
    files = [
        ("files", ("red.png", encode(two_tone("red")), "image/png")),
        ("files", ("notes.txt", b"hello, not an image", "text/plain")),
        ("files", ("blue.jpg", encode(two_tone("blue"), "JPEG", quality=95), "image/jpeg")),
        ("files", ("empty.png", b"", "image/png")),
    ]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["succeeded"], body["failed"]) == (2, 2)
    items = body["items"]
    assert [item["index"] for item in items] == [0, 1, 2, 3]
    assert items[0]["prediction"]["label"] == "red"
    assert items[1]["status_code"] == 415 and items[1]["prediction"] is None
    assert items[2]["prediction"]["label"] == "blue"
    assert items[3]["status_code"] == 422 and "empty" in items[3]["error"]


def test_batch_file_count_limit(export_link, settings_for) -> None:
    from skin_mlops.api.main import create_app

    with TestClient(create_app(settings_for(export_link, max_batch_files=2))) as small:
        files = [("files", (f"{i}.png", encode(two_tone("red")), "image/png")) for i in range(3)]
        response = small.post("/predict/batch", files=files)
    assert response.status_code == 413
    assert "3 files" in response.json()["detail"]


def test_openapi_and_docs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/predict",
        "/predict/batch",
        "/health",
        "/ready",
        "/model",
        "/metrics",
        "/admin/reload",
    ):
        assert path in spec["paths"], path
    assert client.get("/docs").status_code == 200


def test_no_model_yet_is_not_ready_then_polling_picks_it_up(
    tmp_path, tiny_models, settings_for
) -> None:
    from skin_mlops.api.main import create_app
    from utils.model_factory import publish_tiny_export

    link = tmp_path / "runs" / "skin5-current"
    with TestClient(create_app(settings_for(link, model_poll_seconds=0.1))) as fresh:
        assert fresh.get("/health").status_code == 200
        not_ready = fresh.get("/ready")
        assert not_ready.status_code == 503 and "no exported model" in not_ready.json()["detail"]
        predict = fresh.post("/predict", files={"file": ("x.png", encode(two_tone("red")))})
        assert predict.status_code == 503 and "no model is loaded" in predict.json()["detail"]
        publish_tiny_export(link, tiny_models.v1, "v1")
        import time

        deadline = time.monotonic() + 10
        while fresh.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fresh.get("/ready").json()["model_version"] == "v1"
        assert (
            fresh.post("/predict", files={"file": ("x.png", encode(two_tone("red")))}).json()[
                "label"
            ]
            == "red"
        )


def test_probabilities_match_onnx_runtime_batched_and_single(
    client: TestClient, tiny_models: TinyModels
) -> None:
    """The served numbers do not depend on the batch an image landed in."""
    data = encode(two_tone("white"), "PNG")
    keras_probs = tiny_models.v1.probabilities(np.stack([preprocess_bytes(data, IMAGE_SIZE)]))[0]
    body = client.post("/predict/batch?top_k=5", files=[("files", ("a.png", data))] * 4).json()
    for item in body["items"]:
        served = {p["label"]: p["probability"] for p in item["prediction"]["top_k"]}
        assert np.allclose([served[name] for name in LABELS], keras_probs, atol=1e-5)
