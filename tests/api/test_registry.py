"""Serving ``models:/skin-classifier@champion`` from a real MLflow store (SQLite + local artifacts).

The store is laid out like training's: an ``mlflow.onnx`` model carrying the export's
``signature.json`` / ``class_index.json`` as extra files, registered as a version of
``skin-classifier``. Moving the alias makes the service swap to the new version. Only that
registered artifact is read (not the run's other artifacts), and the local cache is keyed
by version and content hash.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from skin_mlops.api.main import create_app
from skin_mlops.api.model_runtime import ModelRefusedError
from skin_mlops.api.registry import _export_from_onnx_artifact, parse_model_uri
from skin_mlops.core.errors import ConfigError
from skin_mlops.export_format import CLASS_INDEX_FILE, SIGNATURE_FILE, write_metadata
from utils.images import encode, two_tone
from utils.model_factory import TinyModel, TinyModels, signature_for

MODEL_NAME = "skin-classifier"


def log_and_register(
    tracking_uri: str,
    experiment_id: str,
    model: TinyModel,
    version: str,
    tmp: Path,
    *,
    with_extra_files: bool = True,
) -> str:
    """Log one run as training does and register its ONNX model; return the registry version.

    Training logs the export's metadata both among the run's artifacts and as the ONNX
    model's ``extra_files``; ``with_extra_files=False`` leaves them out of the model.
    """
    import mlflow
    import onnx

    export = tmp / f"export-{version}"
    write_metadata(export, signature_for(model, version))
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifacts(str(export), artifact_path="export")
        logged = mlflow.onnx.log_model(
            onnx.load_from_string(model.onnx_bytes),
            name="onnx-model",
            pip_requirements=[],
            save_as_external_data=False,
            extra_files=[str(export / SIGNATURE_FILE), str(export / CLASS_INDEX_FILE)]
            if with_extra_files
            else None,
        )
    registered = mlflow.register_model(logged.model_uri, MODEL_NAME)
    assert registered.run_id == run.info.run_id
    return str(registered.version)


def new_store(root: Path) -> tuple[str, str]:
    """A fresh SQLite store under ``root``: ``(tracking_uri, experiment_id)``."""
    import mlflow

    root.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.create_experiment(
        "skin", artifact_location=(root / "artifacts").as_uri()
    )
    return tracking_uri, experiment_id


def cached(cache: Path, version: str, model: TinyModel) -> Path:
    """Where the cache keeps ``version`` with ``model``'s ONNX bytes."""
    digest = hashlib.sha256(model.onnx_bytes).hexdigest()
    return cache / MODEL_NAME / f"{version}-{digest}"


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
            cached(tmp_path / "model-cache", first, tiny_models.v1) / "model" / "model.onnx"
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


def test_a_rebuilt_registry_never_gets_a_stale_cached_version(
    tmp_path: Path, tiny_models: TinyModels, settings_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stores both have version 1 of skin-classifier, with different models; one cache."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "model-cache"
    served = []
    for store, model, name in (("a", tiny_models.v1, "store-a"), ("b", tiny_models.v2, "store-b")):
        tracking_uri, experiment_id = new_store(tmp_path / store)
        version = log_and_register(tracking_uri, experiment_id, model, name, tmp_path / store)
        assert version == "1"
        mlflow.MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(
            MODEL_NAME, "champion", version
        )
        settings = settings_for(
            f"models:/{MODEL_NAME}@champion",
            mlflow_tracking_uri=tracking_uri,
            model_cache_dir=cache,
        )
        with TestClient(create_app(settings)) as api:
            served.append(api.get("/model").json()["model_version"])
        assert (cached(cache, "1", model) / SIGNATURE_FILE).is_file()
    assert served == ["store-a", "store-b"]


def test_only_the_registered_onnx_artifact_is_read(
    tmp_path: Path, tiny_models: TinyModels, settings_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version whose ONNX model lacks the metadata is refused, though its run has it."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    tracking_uri, experiment_id = new_store(tmp_path / "store")
    version = log_and_register(
        tracking_uri, experiment_id, tiny_models.v1, "bare", tmp_path, with_extra_files=False
    )
    mlflow.MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(
        MODEL_NAME, "champion", version
    )
    settings = settings_for(
        f"models:/{MODEL_NAME}@champion",
        mlflow_tracking_uri=tracking_uri,
        model_cache_dir=tmp_path / "cache",
    )
    with TestClient(create_app(settings)) as api:
        ready = api.get("/ready")
    assert ready.status_code == 503
    detail = ready.json()["detail"]
    assert detail.startswith("invalid model: ") and "signature.json" in detail, detail
    assert "extra files" in detail


def test_an_artifact_that_is_not_an_onnx_model_is_refused(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n", encoding="utf-8"
    )
    with pytest.raises(ModelRefusedError, match="is not an ONNX model"):
        _export_from_onnx_artifact(artifact, tmp_path / "export", "skin-classifier/7")
    (artifact / "MLmodel").unlink()
    with pytest.raises(ModelRefusedError, match="not an MLflow model"):
        _export_from_onnx_artifact(artifact, tmp_path / "export", "skin-classifier/7")
