"""Each stage of a prediction request is measured: ``Server-Timing`` and ``api_stage_seconds``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from skin_mlops.api.main import create_app
from skin_mlops.api.timing import STAGES, TOTAL_STAGE, StageTimes, parse_server_timing
from utils.images import encode, two_tone
from utils.servers import make_settings

IMAGE_STAGES = ("pool_wait", "probe", "decode", "exif", "resize", "normalise")
MODEL_STAGES = ("batch_wait", "model", "model_hop", "postprocess", "json")


def _stage_count(metrics_text: str, stage: str) -> float:
    match = re.search(rf'^api_stage_seconds_count{{stage="{stage}"}} (\S+)$', metrics_text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_prediction_reports_every_stage_and_they_add_up(client: TestClient, fmt: str) -> None:
    data = encode(two_tone("red"), fmt)
    response = client.post("/predict", files={"file": ("photo", data)})
    assert response.status_code == 200, response.text
    stages = parse_server_timing(response.headers["server-timing"])
    expected = {"read", "parse", *IMAGE_STAGES, *MODEL_STAGES, TOTAL_STAGE}
    assert expected <= set(stages), stages
    assert all(ms >= 0 for ms in stages.values())
    # the stages are disjoint parts of the app's time for one image
    parts = sum(ms for name, ms in stages.items() if name != TOTAL_STAGE)
    assert parts <= stages[TOTAL_STAGE] + 0.01
    assert stages["model"] > 0 and stages["decode"] > 0
    assert response.json()["label"] == "red"  # the body is still the prediction


def test_the_histogram_counts_each_stage_once_per_prediction(client: TestClient) -> None:
    data = encode(two_tone("green"), "PNG")
    for _ in range(3):
        assert client.post("/predict", files={"file": ("x.png", data)}).status_code == 200
    refused = client.post("/predict", files={"file": ("x.txt", b"not an image")})
    assert refused.status_code == 415
    text = client.get("/metrics").text
    for stage in ("read", "parse", *IMAGE_STAGES, *MODEL_STAGES, TOTAL_STAGE, "send"):
        assert _stage_count(text, stage) == 3, stage  # the 415 ran no model: not observed
    # the refused upload still says how long it took, without model stages
    stages = parse_server_timing(refused.headers["server-timing"])
    assert TOTAL_STAGE in stages and "model" not in stages


def test_a_batch_request_sums_its_images(client: TestClient) -> None:
    files = [("files", (f"{c}.png", encode(two_tone(c), "PNG"))) for c in ("red", "blue")]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200 and response.json()["succeeded"] == 2
    stages = parse_server_timing(response.headers["server-timing"])
    assert {"decode", "model", "json", TOTAL_STAGE} <= set(stages)


def test_server_timing_can_be_turned_off(export_link: Path) -> None:
    settings = make_settings(export_link, server_timing=False)
    with TestClient(create_app(settings)) as test_client:
        data = encode(two_tone("red"), "PNG")
        response = test_client.post("/predict", files={"file": ("x.png", data)})
        assert response.status_code == 200
        assert "server-timing" not in response.headers
        assert _stage_count(test_client.get("/metrics").text, "model") == 1


def test_header_value_round_trips_in_stage_order() -> None:
    times = StageTimes(started=0.0)
    times.add("model", 0.009)
    times.add("decode", 0.001)
    times.add("decode", 0.0005)  # a stage seen twice adds up
    value = times.header_value(0.0125)
    assert value == "decode;dur=1.500, model;dur=9.000, app;dur=12.500"
    assert parse_server_timing(value) == {"decode": 1.5, "model": 9.0, "app": 12.5}
    assert parse_server_timing('cache;desc="hit", db;dur=2.5') == {"db": 2.5}
    assert list(STAGES).index("decode") < list(STAGES).index("model")
