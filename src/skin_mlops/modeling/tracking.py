"""MLflow for training: connect to the store, log a run (the registry: :mod:`.registry`).

* :func:`connect` checks that the tracking store answers (an HTTP server within a few
  seconds; a SQLite store's folder is created) and returns the experiment id, creating
  the experiment with ``settings.mlflow_artifact_root`` as artifact location when the
  store is local. An unreachable server is one
  :class:`~skin_mlops.core.errors.ServiceUnavailableError` line, before any work is done.
* :func:`mlflow_signature` is the MLflow model signature of the platform's model contract
  (``float32[-1, S, S, 3]`` -> ``float32[-1, K]`` logits). Models are logged with it and
  without ``input_example`` (which trips an MLflow bug with Keras 3 models).
* :func:`log_export` is training's tracking stage: the staged export's models logged,
  the ONNX one registered, the folder uploaded to the models bucket.
MLflow is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from skin_mlops.core.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from mlflow.models import ModelSignature as MlflowModelSignature

    from skin_mlops.core.config import Settings
    from skin_mlops.storage import ObjectStore

HEALTH_TIMEOUT_S = 5.0


def _is_http(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URI."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def check_reachable(tracking_uri: str) -> None:
    """Raise :class:`ServiceUnavailableError` when an HTTP tracking server does not answer.

    For a SQLite store, create the folder of the database file instead.
    """
    if _is_http(tracking_uri):
        import httpx

        url = tracking_uri.rstrip("/") + "/health"
        try:
            response = httpx.get(url, timeout=HEALTH_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(
                f"MLflow tracking server {tracking_uri} is unreachable "
                f"({type(exc).__name__}); start it or set MLFLOW_TRACKING_URI"
            ) from None
        if response.status_code >= 500:
            raise ServiceUnavailableError(
                f"MLflow tracking server {tracking_uri} answered HTTP {response.status_code}"
            )
        return
    sqlite_file = sqlite_path(tracking_uri)
    if sqlite_file is not None:
        try:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceUnavailableError(
                f"cannot create the MLflow store folder {sqlite_file.parent}: {exc}"
            ) from None


def connect(settings: Settings) -> str:
    """Point MLflow at ``settings.mlflow_tracking_uri``; return the experiment id.

    A local store's experiment is created with its artifacts under
    ``settings.mlflow_artifact_root``; a server decides artifact locations itself.

    Raises:
        ServiceUnavailableError: the server does not answer, or the store refuses.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = settings.mlflow_tracking_uri
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(settings.mlflow_experiment)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                mlflow.MlflowClient().restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        artifact_location = None
        if not _is_http(uri):
            root = Path(settings.mlflow_artifact_root).resolve()
            root.mkdir(parents=True, exist_ok=True)
            artifact_location = root.as_uri()
        return mlflow.create_experiment(
            settings.mlflow_experiment, artifact_location=artifact_location
        )
    except MlflowException as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceUnavailableError(
            f"MLflow tracking store {uri} is not usable: {first_line}"
        ) from None


def mlflow_signature(
    image_size: int, num_classes: int, *, with_ood: bool = False
) -> MlflowModelSignature:
    """MLflow signature of the model contract: ``image`` float32[-1,S,S,3] -> ``logits``
    (and ``ood_score`` float32[-1], the out-of-distribution guard's distance)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    outputs: list[ColSpec | TensorSpec] = [
        TensorSpec(np.dtype(np.float32), (-1, num_classes), "logits")
    ]
    if with_ood:
        outputs.append(TensorSpec(np.dtype(np.float32), (-1,), "ood_score"))
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, image_size, image_size, 3), "image")]),
        outputs=Schema(outputs),
    )


def git_commit(repo_dir: Path | None = None) -> str | None:
    """The checked-out commit (with ``-dirty`` when files differ), or None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit or None


def pinned_requirements(*packages: str) -> list[str]:
    """``name==installed version`` for each installed package (given explicitly to
    ``log_model``, which otherwise spends ~15 s inferring requirements in a subprocess)."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for package in packages:
        try:
            pinned.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pinned


def log_params(params: Mapping[str, Any]) -> None:
    """Log the params of the active run, None values skipped.

    One call however many there are: ``MlflowClient.log_batch`` splits them into the
    store's batches itself (100 params per request in MLflow 3).
    """
    import mlflow

    mlflow.log_params({key: value for key, value in params.items() if value is not None})


def log_export(
    model: Any,
    staging: Path,
    *,
    with_ood: bool,
    val_macro_f1: float,
    settings: Settings,
    store: ObjectStore,
    run_id: str,
    export_version: str,
) -> tuple[str, str]:
    """Training's tracking stage: the staged export into the active MLflow run.

    Logs ``signature.json`` and ``class_index.json`` (``export/``), the Keras model
    (``keras-model``) and the ONNX model (``onnx-model``, with the metadata and the gated
    int8 twin when there is one as extra files), registers the ONNX model as a new version
    of ``settings.registered_model_name`` and uploads the export folder to the models
    bucket (the Airflow gate publishes from there).

    Returns:
        tuple[str, str]: the registry version and the export's ``s3://`` URI.
    """
    import mlflow
    import mlflow.keras
    import mlflow.onnx
    import onnx

    from skin_mlops import export_format
    from skin_mlops.modeling import export, registry

    signature = export_format.read_signature(staging)
    mlflow_sig = mlflow_signature(signature.image_size, len(signature.labels), with_ood=with_ood)
    mlflow.log_artifact(str(staging / export_format.CLASS_INDEX_FILE), "export/data")
    mlflow.log_artifact(str(staging / export_format.SIGNATURE_FILE), "export/inference")
    keras_info = mlflow.keras.log_model(
        model,
        name="keras-model",
        signature=mlflow_sig,
        pip_requirements=pinned_requirements("tensorflow-cpu", "keras"),
    )
    extra_files = [
        staging / export_format.SIGNATURE_FILE,
        staging / export_format.CLASS_INDEX_FILE,
        staging / export_format.INT8_MODEL_FILE,  # the gated int8 twin, when it exists
    ]
    onnx_info = mlflow.onnx.log_model(
        onnx.load(str(staging / export_format.ONNX_MODEL_FILE)),
        name="onnx-model",
        signature=mlflow_sig,
        save_as_external_data=False,
        pip_requirements=pinned_requirements("onnx", "onnxruntime"),
        extra_files=[str(path) for path in extra_files if path.is_file()],
    )
    version = registry.register_version(
        onnx_info.model_uri,
        settings.registered_model_name,
        val_macro_f1,
        run_id=run_id,
        tags={"export_version": export_version, "keras_model_uri": keras_info.model_uri},
    )
    export_uri = export.upload_export(store, settings.s3_models_bucket, run_id, staging)
    mlflow.set_tag("export_uri", export_uri)
    return version, export_uri
