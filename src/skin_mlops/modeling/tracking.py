"""MLflow for training: connect to the store, log a run (the registry: :mod:`.registry`).

* :func:`connect` checks that the tracking store answers (an HTTP server within a few
  seconds; a SQLite store's folder is created) and returns the experiment id, creating
  the experiment with ``settings.mlflow_artifact_root`` as artifact location when the
  store is local. An unreachable server is one
  :class:`~skin_mlops.core.errors.ServiceUnavailableError` line, before any work is done.
* :func:`mlflow_signature` is the MLflow model signature of the platform's model contract
  (``float32[-1, S, S, 3]`` -> ``float32[-1, K]`` logits). Models are logged with it and
  without ``input_example`` (which trips an MLflow bug with Keras 3 models).
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
