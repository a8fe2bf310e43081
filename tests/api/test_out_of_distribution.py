"""The out-of-distribution guard as the API serves it: verdict, score, warning, counter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from skin_mlops.api.main import create_app
from skin_mlops.api.model_runtime import ModelRefusedError, load_model
from skin_mlops.api.services import OUT_OF_DISTRIBUTION_WARNING
from utils.images import encode, two_tone
from utils.model_factory import (
    GuardedTinyModel,
    TinyModels,
    build_guarded_tiny_model,
    publish_tiny_export,
)
from utils.servers import make_settings


@pytest.fixture(scope="module")
def guarded() -> GuardedTinyModel:
    return build_guarded_tiny_model()


@pytest.fixture
def guarded_client(tmp_path: Path, guarded: GuardedTinyModel) -> Iterator[TestClient]:
    link = tmp_path / "runs" / "skin5-current"
    publish_tiny_export(link, guarded.model, "v-ood", **guarded.signature_overrides())
    with TestClient(create_app(make_settings(link)), raise_server_exceptions=False) as client:
        yield client


def _post(client: TestClient, image: Image.Image) -> dict:
    response = client.post("/predict", files={"file": ("p.png", encode(image), "image/png")})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_photo_like_the_training_photos_passes(guarded_client: TestClient) -> None:
    body = _post(guarded_client, two_tone("red"))

    assert body["label"] == "red"
    assert body["in_distribution"] is True
    assert 0 <= body["ood_score"] <= 1
    assert body["warning"] != OUT_OF_DISTRIBUTION_WARNING


def test_a_photo_unlike_them_is_flagged_uncertain_with_the_warning(
    guarded_client: TestClient,
) -> None:
    grey = Image.new("RGB", (96, 64), (128, 128, 128))

    body = _post(guarded_client, grey)

    assert body["in_distribution"] is False
    assert body["ood_score"] > 1
    assert body["uncertain"] is True
    assert body["warning"] == OUT_OF_DISTRIBUTION_WARNING
    assert "does not look like the clinical skin photos" in body["warning"]
    metrics = guarded_client.get("/metrics").text
    counts = {
        line.split('label="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("api_out_of_distribution_total{")
    }
    # one series per label of the model, created at 0; the flagged photo's label counted
    assert sorted(counts) == sorted(["red", "green", "blue", "white", "black"])
    assert counts[body["label"]] == 1.0 and sum(counts.values()) == 1.0


def test_batch_answers_carry_the_verdict_per_photo(guarded_client: TestClient) -> None:
    files = [
        ("files", ("red.png", encode(two_tone("blue")), "image/png")),
        ("files", ("grey.png", encode(Image.new("RGB", (64, 64), (128, 128, 128))), "image/png")),
    ]
    response = guarded_client.post("/predict/batch", files=files)

    assert response.status_code == 200, response.text
    verdicts = [item["prediction"]["in_distribution"] for item in response.json()["items"]]
    assert verdicts == [True, False]


def test_a_model_without_the_guard_says_nothing_about_it(client: TestClient) -> None:
    body = _post(client, two_tone("green"))

    assert body["in_distribution"] is None and body["ood_score"] is None


def test_a_signature_promising_a_guard_the_graph_lacks_is_refused(
    tmp_path: Path, tiny_models: TinyModels, guarded: GuardedTinyModel
) -> None:
    link = tmp_path / "runs" / "skin5-current"
    publish_tiny_export(link, tiny_models.v1, "v-liar", **guarded.signature_overrides())

    with pytest.raises(ModelRefusedError, match="exactly one input and 2 output"):
        load_model(link.resolve(), "test", make_settings(link))


def test_the_offline_predict_command_reports_the_verdict(
    tmp_path: Path, guarded: GuardedTinyModel
) -> None:
    from skin_mlops.modeling.predict import predict_paths

    link = tmp_path / "runs" / "skin5-current"
    publish_tiny_export(link, guarded.model, "v-ood", **guarded.signature_overrides())
    two_tone("white").save(tmp_path / "white.png")
    Image.new("RGB", (64, 64), (128, 128, 128)).save(tmp_path / "grey.png")

    results = predict_paths(
        [tmp_path / "white.png", tmp_path / "grey.png"], settings=make_settings(link)
    )

    assert [r.in_distribution for r in results] == [True, False]
    assert results[1].uncertain is True and results[1].as_json()["ood_score"] > 1
