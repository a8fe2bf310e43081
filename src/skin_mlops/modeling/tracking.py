"""MLflow for training: connect, log a run, register the model, move the champion alias.

* :func:`connect` checks that the tracking store answers (an HTTP server within a few
  seconds; a SQLite store's folder is created) and returns the experiment id, creating
  the experiment with ``settings.mlflow_artifact_root`` as artifact location when the
  store is local. An unreachable server is one
  :class:`~skin_mlops.core.errors.ServiceUnavailableError` line, before any work is done.
* :func:`mlflow_signature` is the MLflow model signature of the platform's model contract
  (``float32[-1, S, S, 3]`` -> ``float32[-1, K]`` logits). Models are logged with it and
  without ``input_example`` (which trips an MLflow bug with Keras 3 models).
* :func:`register_and_promote` registers a logged model as a new version of
  ``skin-classifier`` and moves the alias ``champion`` to it only when its validation
  macro-F1 beats the current champion's; the decision and both scores are returned (and
  logged on the run by the caller).

MLflow is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from skin_mlops.core.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature as MlflowModelSignature

    from skin_mlops.core.config import Settings

CHAMPION_ALIAS = "champion"
SELECTION_METRIC = "val_macro_f1"
HEALTH_TIMEOUT_S = 5.0


def _is_http(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def _sqlite_path(uri: str) -> Path | None:
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
    sqlite_file = _sqlite_path(tracking_uri)
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


def mlflow_signature(image_size: int, num_classes: int) -> MlflowModelSignature:
    """MLflow signature of the model contract: ``image`` float32[-1,S,S,3] -> ``logits``."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, image_size, image_size, 3), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes), "logits")]),
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


# --- registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChampionDecision:
    """What :func:`register_and_promote` did."""

    model_name: str
    version: str
    promoted: bool
    score: float
    previous_version: str | None
    previous_score: float | None
    deferred_to_gate: bool = False

    @classmethod
    def deferred(cls, model_name: str, version: str, score: float) -> ChampionDecision:
        """Registered only: the promotion step decides later."""
        return cls(model_name, version, False, score, None, None, deferred_to_gate=True)

    @property
    def outcome(self) -> str:
        """``promoted``, ``kept`` (the champion stays) or ``deferred`` (decided later)."""
        if self.deferred_to_gate:
            return "deferred"
        return "promoted" if self.promoted else "kept"

    @property
    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.deferred_to_gate:
            return (
                f"{self.model_name} v{self.version} registered ({SELECTION_METRIC} "
                f"{self.score:.4f}); the promotion step decides @{CHAMPION_ALIAS}"
            )
        if self.previous_version == self.version:
            return (
                f"{self.model_name} v{self.version} already holds @{CHAMPION_ALIAS} "
                f"({SELECTION_METRIC} {self.score:.4f})"
            )
        if self.previous_version is None:
            return (
                f"{self.model_name} v{self.version} is the first champion "
                f"({SELECTION_METRIC} {self.score:.4f})"
            )
        verb = "takes" if self.promoted else "does not take"
        return (
            f"{self.model_name} v{self.version} {verb} @{CHAMPION_ALIAS}: {SELECTION_METRIC} "
            f"{self.score:.4f} vs v{self.previous_version} {self.previous_score:.4f}"
        )


def champion_score(client: MlflowClient, model_name: str) -> tuple[str, float] | None:
    """``(version, val macro-F1)`` of the current champion, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException:
        return None
    if SELECTION_METRIC in version.tags:
        return str(version.version), float(version.tags[SELECTION_METRIC])
    if version.run_id:
        metrics = client.get_run(version.run_id).data.metrics
        if SELECTION_METRIC in metrics:
            return str(version.version), float(metrics[SELECTION_METRIC])
    return str(version.version), float("-inf")


def register_version(
    model_uri: str,
    model_name: str,
    score: float,
    *,
    run_id: str,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Register ``model_uri`` as a new version of ``model_name`` (no alias); its version.

    The version carries its validation macro-F1 (full precision: a rounded tag would let an
    equal model "beat" it) and the training run id as tags.
    """
    import mlflow

    version_tags = {SELECTION_METRIC: repr(float(score)), "run_id": run_id, **(tags or {})}
    return str(mlflow.register_model(model_uri, model_name, tags=version_tags).version)


def version_score(client: MlflowClient, model_name: str, version: str) -> float:
    """The validation macro-F1 a registered version was tagged with."""
    model_version = client.get_model_version(model_name, version)
    return float(model_version.tags.get(SELECTION_METRIC, "-inf"))


def promote_if_better(model_name: str, version: str, score: float) -> ChampionDecision:
    """Give ``version`` the ``@champion`` alias if it scores higher than the current one.

    Idempotent: a version that already is the champion stays it (a retried task decides
    the same). Returns the decision with both scores.
    """
    import mlflow

    client = mlflow.MlflowClient()
    previous = champion_score(client, model_name)
    if previous is not None and previous[0] == str(version):  # a retry after the alias moved
        return ChampionDecision(model_name, str(version), True, score, previous[0], previous[1])
    promoted = previous is None or score > previous[1]
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
    return ChampionDecision(
        model_name=model_name,
        version=str(version),
        promoted=promoted,
        score=score,
        previous_version=previous[0] if previous else None,
        previous_score=previous[1] if previous else None,
    )


def register_and_promote(
    model_uri: str,
    model_name: str,
    score: float,
    *,
    run_id: str,
    tags: Mapping[str, str] | None = None,
) -> ChampionDecision:
    """:func:`register_version`, then :func:`promote_if_better` (what ``train`` does).

    Args:
        model_uri (str): URI of a logged model (``models:/<model_id>`` or ``runs:/...``).
        model_name (str): registered model name (``skin-classifier``).
        score (float): this model's validation macro-F1.
        run_id (str): the training run (stored as a version tag).
        tags (Mapping[str, str] | None): more version tags.

    Returns:
        ChampionDecision: the new version and whether it became champion (strictly
        higher score than the current champion, or no champion yet).
    """
    version = register_version(model_uri, model_name, score, run_id=run_id, tags=tags)
    return promote_if_better(model_name, version, score)
