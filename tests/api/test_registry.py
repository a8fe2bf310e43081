"""Serving ``models:/skin-classifier@champion`` from a real MLflow store (SQLite + local artifacts).

The store is laid out like training's: an ONNX logged model registered as a version of
``skin-classifier``, and the export's ``signature.json`` / ``class_index.json`` among its
run's artifacts. Moving the alias makes the service swap to the new version.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from skin_mlops.api.main import create_app
from skin_mlops.api.registry import parse_model_uri
from skin_mlops.core.errors import ConfigError
from skin_mlops.export_format import write_metadata
from utils.images import encode, two_tone
from utils.model_factory import TinyModel, TinyModels, signature_for

MODEL_NAME = "skin-classifier"


def log_and_register(
    tracking_uri: str, experiment_id: str, model: TinyModel, version: str, tmp: Path
) -> str:
    """Log one training-like run and register its ONNX model; return the registry version."""
    import mlflow
    import onnx

    export = tmp / f"export-{version}"
    write_metadata(export, signature_for(model, version))
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifacts(str(export), artifact_path="export")
        logged = mlflow.onnx.log_model(
            onnx.load_from_string(model.onnx_bytes), name="onnx-model", pip_requirements=[]
        )
    registered = mlflow.register_model(logged.model_uri, MODEL_NAME)
    assert registered.run_id == run.info.run_id
    return str(registered.version)


def test_parse_model_uri() -> None:
    assert parse_model_uri("models:/skin-classifier@champion") == (
        "skin-classifier",
        "champion",
        None,
    )
    assert parse_model_uri("models:/skin-classifier/3") == ("skin-classifier", None, "3")
    with pytest.raises(ConfigError, match="MODEL_SOURCE"):
        parse_model_uri("models:/skin-classifier")


def test_serves_the_champion_and_follows_the_alias(
    tmp_path: Path, tiny_models: TinyModels, settings_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.create_experiment(
        "skin", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    first = log_and_register(tracking_uri, experiment_id, tiny_models.v1, "reg-v1", tmp_path)
    client.set_registered_model_alias(MODEL_NAME, "champion", first)

    settings = settings_for(
        f"models:/{MODEL_NAME}@champion",
        mlflow_tracking_uri=tracking_uri,
        model_cache_dir=tmp_path / "model-cache",
        model_poll_seconds=0.2,
    )
    with TestClient(create_app(settings)) as api:
        info = api.get("/model").json()
        assert info["model_version"] == "reg-v1"
        assert info["source"].startswith(f"models:/{MODEL_NAME}@champion")
        red = api.post("/predict", files={"file": ("x.png", encode(two_tone("red")))}).json()
        assert (red["label"], red["model_version"]) == ("red", "reg-v1")
        assert (
            tmp_path / "model-cache" / f"{MODEL_NAME}-v{first}" / "model" / "model.onnx"
        ).is_file()

        second = log_and_register(tracking_uri, experiment_id, tiny_models.v2, "reg-v2", tmp_path)
        time.sleep(0.5)
        assert api.get("/model").json()["model_version"] == "reg-v1"  # not champion yet
        client.set_registered_model_alias(MODEL_NAME, "champion", second)
        deadline = time.monotonic() + 20
        while api.get("/model").json()["model_version"] != "reg-v2":
            assert time.monotonic() < deadline, "alias move not picked up"
            time.sleep(0.1)
        assert (
            api.post("/predict", files={"file": ("x.png", encode(two_tone("red")))}).json()[
                "model_version"
            ]
            == "reg-v2"
        )


def test_unknown_registered_model_is_not_ready(tmp_path: Path, settings_for, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = settings_for(
        "models:/no-such-model@champion",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        model_cache_dir=tmp_path / "cache",
    )
    with TestClient(create_app(settings)) as api:
        ready = api.get("/ready")
    assert ready.status_code == 503
    assert "no-such-model" in ready.json()["detail"]
