"""``/metrics``: the contract names, bounded label values, and values that follow requests."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from utils.images import encode, two_tone
from utils.model_factory import LABELS


def scrape(client: TestClient) -> dict[str, list]:
    """Metric family name -> its samples, parsed with prometheus_client's parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def sample_value(samples: list, name: str, **labels: str) -> float:
    """The value of the sample ``name`` whose labels include ``labels`` (0 when absent)."""
    for sample in samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return 0.0


def test_contract_names_and_labels_after_requests(client: TestClient) -> None:
    for label in ("red", "red", "blue"):
        data = encode(two_tone(label))
        assert (
            client.post("/predict", files={"file": ("my-photo-123.png", data)}).status_code == 200
        )
    assert client.post("/predict", files={"file": ("x.txt", b"text")}).status_code == 415
    assert client.get("/no/such/path/secret-file-name.png").status_code == 404
    families = scrape(client)

    # prometheus_client strips _total from counter family names
    for family in (
        "api_requests",
        "api_request_duration_seconds",
        "api_predictions",
        "api_prediction_confidence",
        "fastapi_request_inprogress",
        "api_batch_size",
        "api_model_info",
    ):
        assert family in families, family

    requests = families["api_requests"]
    assert (
        sample_value(
            requests, "api_requests_total", endpoint="/predict", method="POST", status="200"
        )
        == 3
    )
    assert (
        sample_value(
            requests, "api_requests_total", endpoint="/predict", method="POST", status="415"
        )
        == 1
    )
    assert (
        sample_value(
            requests, "api_requests_total", endpoint="unmatched", method="GET", status="404"
        )
        == 1
    )
    endpoints = {s.labels["endpoint"] for s in requests}
    assert endpoints <= {"/predict", "/metrics", "unmatched", "/model", "/ready", "/health"}
    all_label_values = {
        v for samples in families.values() for s in samples for v in s.labels.values()
    }
    assert not any("secret-file-name" in v or "my-photo" in v for v in all_label_values)

    predictions = families["api_predictions"]
    assert sample_value(predictions, "api_predictions_total", label="red") == 2
    assert sample_value(predictions, "api_predictions_total", label="blue") == 1
    assert {s.labels["label"] for s in predictions} <= set(LABELS)
    confidence = families["api_prediction_confidence"]
    assert sample_value(confidence, "api_prediction_confidence_count", label="red") == 2
    assert 0.5 < sample_value(confidence, "api_prediction_confidence_sum", label="red") <= 2.0

    duration = families["api_request_duration_seconds"]
    assert (
        sample_value(
            duration, "api_request_duration_seconds_count", endpoint="/predict", method="POST"
        )
        == 4
    )

    assert sample_value(families["api_batch_size"], "api_batch_size_count") == 3
    info = families["api_model_info"]
    assert [(s.labels, s.value) for s in info] == [
        (
            {
                "version": "v1",
                "backbone": "tiny-test-net",
                "precision": "fp32",
                "engine": "onnxruntime",
            },
            1.0,
        )
    ]


def test_unknown_methods_are_one_label_value(client: TestClient) -> None:
    client.request("BREW", "/predict")
    client.request("PURGE", "/health")
    methods = {s.labels["method"] for s in scrape(client)["api_requests"]}
    assert "BREW" not in methods and "PURGE" not in methods
    assert "OTHER" in methods


def test_in_progress_gauge_returns_to_zero(client: TestClient) -> None:
    client.post("/predict", files={"file": ("x.png", encode(two_tone("red")))})
    gauge = scrape(client)["fastapi_request_inprogress"]
    predict_values = [s.value for s in gauge if s.labels["endpoint"] == "/predict"]
    assert predict_values == [0.0]
    # the scrape itself is in progress while it is rendered
    assert any(s.value == 1.0 for s in gauge if s.labels["endpoint"] == "/metrics")


def test_the_training_shares_of_the_served_model_are_exported(client: TestClient) -> None:
    text = client.get("/metrics").text
    for label in LABELS:
        assert f'api_model_label_train_share{{label="{label}"}} 0.2' in text
