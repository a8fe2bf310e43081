"""The registry gate as its own step: give a registered version ``@champion`` if it is
better, then publish its export to ``runs/skin5-current``.

``skin-mlops train`` decides right after training (``run_training(promote=True)``); the
Airflow pipeline trains with ``promote=False`` and calls :func:`promote_run` in its
``evaluate_and_promote`` task, possibly on another worker: the export is therefore read
back from the models bucket (``models-registry/skin/models/<run_id>/``), not from the
training machine's disk. Both paths use :func:`tracking.promote_if_better`.

Idempotent: re-running the step for a version that already is the champion and already
published changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from skin_mlops import export_format
from skin_mlops.core.config import Settings, get_settings
from skin_mlops.core.errors import ServiceUnavailableError
from skin_mlops.storage import ObjectStore, download_directory, make_object_store


@dataclass(frozen=True)
class PromotionResult:
    """What the gate decided and where the champion is published (when it changed)."""

    model_name: str
    version: str
    promoted: bool
    outcome: str
    summary: str
    score: float
    previous_version: str | None
    previous_score: float | None
    published_dir: Path | None

    def as_dict(self) -> dict[str, object]:
        """Small, JSON-friendly (for XCom and logs)."""
        data = asdict(self)
        data["published_dir"] = str(self.published_dir) if self.published_dir else None
        return data


def publish_from_store(
    store: ObjectStore, bucket: str, run_id: str, export_version: str, current_link: Path
) -> Path:
    """Download ``skin/models/<run_id>/`` and atomically point ``current_link`` at it.

    A link that already points at ``export_version`` is left alone (a retried task).
    """
    from skin_mlops.modeling.export import MODELS_PREFIX

    if current_link.is_symlink() and current_link.resolve().name == export_version:
        return current_link.resolve()
    staging = export_format.new_version_dir(current_link, export_version)
    try:
        download_directory(store, bucket, f"{MODELS_PREFIX}/{run_id}", staging)
        return export_format.publish(staging, current_link, export_version)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise


def promote_run(
    model_version: str,
    *,
    settings: Settings | None = None,
    store: ObjectStore | None = None,
) -> PromotionResult:
    """Decide ``@champion`` for a registered version; publish its export when it wins.

    Raises:
        ServiceUnavailableError: MLflow is unreachable or does not know the version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from skin_mlops.modeling import tracking

    settings = settings or get_settings()
    tracking.connect(settings)
    client = mlflow.MlflowClient()
    name = settings.registered_model_name
    try:
        registered = client.get_model_version(name, model_version)
        score = tracking.version_score(client, name, model_version)
        decision = tracking.promote_if_better(name, model_version, score)
    except MlflowException as exc:
        raise ServiceUnavailableError(
            f"cannot read {name} v{model_version} from MLflow at "
            f"{settings.mlflow_tracking_uri}: {str(exc).splitlines()[0][:200]}"
        ) from None
    published = None
    if decision.promoted:
        run_id = registered.tags.get("run_id") or registered.run_id
        export_version = registered.tags.get("export_version")
        if not run_id or not export_version:
            raise ServiceUnavailableError(
                f"{name} v{model_version} has no run_id/export_version tags: it was not "
                "registered by skin-mlops training, so its export cannot be found"
            )
        published = publish_from_store(
            store or make_object_store(settings),
            settings.s3_models_bucket,
            run_id,
            export_version,
            Path(settings.model_dir),
        )
    return PromotionResult(
        model_name=name,
        version=decision.version,
        promoted=decision.promoted,
        outcome=decision.outcome,
        summary=decision.summary,
        score=decision.score,
        previous_version=decision.previous_version,
        previous_score=decision.previous_score,
        published_dir=published,
    )
