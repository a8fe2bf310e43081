"""One plain function per DAG task. Each returns a small JSON-friendly dict (XCom) and
raises a :class:`~skin_mlops.core.errors.SkinMlopsError` (one line) when the task must fail.

Nothing here imports Airflow: the functions are called by the DAGs, by tests directly, and
could be called by any other scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from skin_mlops.core.config import Settings, get_settings
from skin_mlops.core.errors import DataError

log = logging.getLogger(__name__)


def ingest(
    config_path: str | Path | None = None,
    splits: Sequence[str] = ("train", "val"),
    *,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Ingest ``data/raw`` (the dataset config's splits); counts only, for XCom.

    Idempotent: a re-run adds no rows or objects for files already ingested.

    Raises:
        DataError: the summary reports failures (corrupt files, conflicts), or another
            ingestion holds the lock. StorageError: the object store failed (retryable).
    """
    from skin_mlops.ingestion.run import run_ingestion

    settings = settings or get_settings()
    summary = run_ingestion(config_path or settings.dataset_config, list(splits), settings=settings)
    totals = summary.totals()
    counts = {
        "dataset": summary.dataset,
        "splits": list(summary.splits),
        "new": totals.new,
        "unchanged": totals.unchanged,
        "corrupt": totals.corrupt,
        "errors": totals.errors,
        "conflicts": totals.conflicts,
        "leakage": len(summary.leakage),
        "uploaded": summary.uploaded,
        "orphans_deleted": summary.orphans_deleted,
        "rows_missing": summary.rows_missing_total,
        "duration_s": round(summary.duration_s, 2),
        "failed": summary.failed,
    }
    log.info("ingestion summary: %s", counts)
    if summary.failed:
        raise DataError(
            f"ingestion of {summary.dataset} reported failures: {totals.corrupt} corrupt, "
            f"{totals.errors} unreadable, {totals.conflicts} label conflicts "
            "(see the task log; fix the files and re-run)"
        )
    return counts


def train(
    params: Mapping[str, Any],
    *,
    config_path: str | Path | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Train with the run's params; register the version, leave ``@champion`` to the gate.

    Returns run id, registered version and validation metrics (for ``evaluate_and_promote``).
    """
    from skin_mlops.modeling.options import TrainingOptions
    from skin_mlops.modeling.train import run_training
    from skin_mlops.orchestration.params import training_overrides

    options = TrainingOptions(**training_overrides(params))
    result = run_training(
        config_path,
        settings=settings or get_settings(),
        options=options,
        show_progress=False,
        promote=False,
    )
    out = {
        "run_id": result.run_id,
        "model_name": result.model_name,
        "model_version": result.model_version,
        "export_version": result.export_version,
        "val_macro_f1": result.metrics.get("val_macro_f1"),
        "val_accuracy": result.metrics.get("val_accuracy"),
        "features_extracted": result.features_extracted,
        "features_reused": result.features_reused,
        "val_leaked_excluded": result.val_leaked_excluded,
    }
    log.info("training: %s", out)
    return out


def evaluate_and_promote(
    candidate: Mapping[str, Any], *, settings: Settings | None = None
) -> dict[str, Any]:
    """The registry gate for the trained version: ``@champion`` only when it beats the
    champion, re-scored on this run's val photos, by ``PROMOTION_MIN_DELTA``.

    Raises:
        ServiceUnavailableError: MLflow failed, also while reading the champion (retried).
        DataError: the run has no val set to re-score the champion on (fails at once).
    """
    from skin_mlops.modeling.promotion import promote_run

    result = promote_run(str(candidate["model_version"]), settings=settings)
    log.info("promotion: %s", result.summary)
    return result.as_dict()


def reload_api(decision: Mapping[str, Any], *, settings: Settings | None = None) -> dict[str, Any]:
    """Tell the API to load the new champion (``POST /admin/reload``), or say why not.

    Never fails because the API is simply not running or not configured: that is a skip
    with its reason. An API that answers and refuses the model is a failure.
    """
    settings = settings or get_settings()
    if not decision.get("promoted") or decision.get("outcome") != "promoted":
        return {"reloaded": False, "skipped": "no new champion"}
    if settings.admin_token is None:
        return {"reloaded": False, "skipped": "ADMIN_TOKEN is not set: the API cannot be told"}
    url = f"{settings.api_base_url.rstrip('/')}/admin/reload"
    try:
        response = httpx.post(
            url,
            headers={"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"},
            timeout=httpx.Timeout(120.0, connect=3.0),
        )
    except httpx.TransportError as exc:
        return {"reloaded": False, "skipped": f"the API at {url} is not reachable ({exc})"}
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:200]
        raise DataError(f"the API refused the reload (HTTP {response.status_code}): {detail}")
    body = response.json()
    return {"reloaded": bool(body.get("reloaded")), "detail": body.get("detail")}
