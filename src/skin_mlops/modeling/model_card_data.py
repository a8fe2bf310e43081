"""The model card's data, read back from MLflow (all of it logged by ``train`` and ``cv``).

:func:`load_card_data`: the registered version (``@champion`` unless a version is named)
-> its training run's params, metrics and artifacts (``evaluation/val_predictions.json``,
``data/skin_tones.json``, ``data/dataset.json``, the plots, ``signature.json``) -> the
newest ``skin-mlops cv`` run of the same recipe on the same photos
(``cv/oof_predictions.json``) and every recipe cross-validated on those photos
(:func:`tried_recipes`). :mod:`skin_mlops.modeling.model_card` renders it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skin_mlops.core.config import Settings
from skin_mlops.core.errors import ConfigError, DataError
from skin_mlops.export_format import softmax
from skin_mlops.modeling import stages

CHAMPION = "champion"
# recipe params that must match for a cv run to describe the registered model's recipe
RECIPE_PARAMS = (
    "backbone",
    "backbone_options",
    "image_size",
    "views",
    "dihedral_views",
    "epochs",
    "batch_size",
    "learning_rate",
    "hidden_units",
    "input_dropout",
    "dropout",
    "label_smoothing",
    "weight_decay",
    "heads",
    "tta_views",
    "seed",
    "teacher_image_size",  # absent (None) in a run without distillation
    "teacher_backbone",
    "mixup_alpha",  # absent (None) in a run without mixup
    "fine_tune_layers",
    "fine_tune_epochs",  # absent (None) in a run without fine-tuning
    "fine_tune_lr_factor",  # absent (None) in a run without fine-tuning
)


@dataclass
class Predictions:
    """One logged prediction per photo: SHA-256, true label index, calibrated probabilities."""

    sha256: list[str]
    y: np.ndarray
    probs: np.ndarray
    temperature: float

    @classmethod
    def from_artifact(cls, payload: dict[str, Any], labels: Sequence[str]) -> Predictions:
        index = {label: i for i, label in enumerate(labels)}
        photos = payload["photos"]
        logits = np.asarray([p["logits"] for p in photos], np.float64)
        temperature = float(payload["temperature"])
        return cls(
            [p["sha256"] for p in photos],
            np.asarray([index[p["label"]] for p in photos], np.int64),
            softmax(logits, temperature),
            temperature,
        )

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


@dataclass
class CardData:
    """What the card is written from (all of it logged by ``train`` and ``cv``)."""

    model_name: str
    version: str
    aliases: list[str]
    run_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    labels: list[str]
    signature: dict[str, Any]
    val: Predictions
    skin_tones: dict[str, Any]
    plots: dict[str, Path]
    cv_run_id: str | None = None
    cv_params: dict[str, str] = field(default_factory=dict)
    cv_metrics: dict[str, float] = field(default_factory=dict)
    oof: Predictions | None = None
    recipes: list[TriedRecipe] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)


def _download_json(client: Any, run_id: str, artifact: str, folder: Path) -> dict[str, Any]:
    path = client.download_artifacts(run_id, artifact, str(folder))
    return json.loads(Path(path).read_text(encoding="utf-8"))


# recipe params added after runs were logged, with the value those older runs had
_PARAM_DEFAULTS_OF_OLDER_RUNS = {"dihedral_views": "False"}


def recipe_param(params: dict[str, str], key: str) -> str | None:
    """A run's recipe param, or what a run logged before the param existed used."""
    return params.get(key, _PARAM_DEFAULTS_OF_OLDER_RUNS.get(key))


def _matching_cv_run(client: Any, run: Any) -> Any | None:
    """The newest ``cv`` run of this run's recipe on the same photos, or None."""
    runs = client.search_runs(
        [run.info.experiment_id], "tags.stage = 'cv'", order_by=["start_time DESC"]
    )
    params, dataset = run.data.params, run.data.tags.get("dataset")
    for candidate in runs:
        other = candidate.data.params
        if candidate.data.tags.get("dataset") == dataset and all(
            recipe_param(other, key) == recipe_param(params, key) for key in RECIPE_PARAMS
        ):
            return candidate
    return None


@dataclass(frozen=True)
class TriedRecipe:
    """One ``skin-mlops cv`` run on the model's dataset: how its recipe differs."""

    run_id: str
    differences: str  # "" = the registered model's own recipe
    folds: str
    macro_f1_mean: float
    macro_f1_std: float
    oof_ece_after: float
    time_s: float
    peak_rss_mb: float


def tried_recipes(client: Any, run: Any) -> list[TriedRecipe]:
    """Every recipe cross-validated on this run's dataset (newest run of each), the model's
    own first: the lever table, from the tracking store rather than from a benchmark."""
    runs = client.search_runs(
        [run.info.experiment_id], "tags.stage = 'cv'", order_by=["start_time DESC"]
    )
    params, dataset = run.data.params, run.data.tags.get("dataset")
    seen: dict[str, TriedRecipe] = {}
    for candidate in runs:
        if candidate.data.tags.get("dataset") != dataset:
            continue
        other, m = candidate.data.params, candidate.data.metrics
        differences = ", ".join(
            f"{key}={recipe_param(other, key)}"
            for key in RECIPE_PARAMS
            if recipe_param(other, key) != recipe_param(params, key)
        )
        if differences in seen or "cv_macro_f1_mean" not in m:
            continue
        seen[differences] = TriedRecipe(
            candidate.info.run_id,
            differences,
            other.get("folds", "?"),
            m["cv_macro_f1_mean"],
            m.get("cv_macro_f1_std", float("nan")),
            m.get("oof_ece_after_scaling", float("nan")),
            m.get("time_total_s", float("nan")),
            max(m.get("peak_rss_mb", float("nan")), m.get("peak_rss_mb_child_processes", 0.0)),
        )
    return sorted(seen.values(), key=lambda r: (r.differences != "", -r.macro_f1_mean))


def load_card_data(settings: Settings, version: str | None, folder: Path) -> CardData:
    """The registered version (``@champion`` unless ``version``) and what its run logged.

    Raises:
        ConfigError: no such registered model or version.
        DataError: the run predates the logged data the card needs (train it again).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from skin_mlops.modeling import tracking

    tracking.connect(settings)
    client = mlflow.MlflowClient()
    name = settings.registered_model_name
    try:
        model_version = (
            client.get_model_version(name, version)
            if version
            else client.get_model_version_by_alias(name, CHAMPION)
        )
    except MlflowException:
        which = f"version {version}" if version else f"@{CHAMPION}"
        raise ConfigError(
            f"no registered model {name} {which} (run skin-mlops train first)"
        ) from None
    if not model_version.run_id:
        raise DataError(f"{name} v{model_version.version} has no training run to read")
    run = client.get_run(model_version.run_id)
    try:
        val_payload = _download_json(
            client, run.info.run_id, stages.VAL_PREDICTIONS_ARTIFACT, folder
        )
        tones = _download_json(client, run.info.run_id, stages.SKIN_TONES_ARTIFACT, folder)
        signature = _download_json(
            client, run.info.run_id, "export/inference/signature.json", folder
        )
        plots = {
            key: Path(client.download_artifacts(run.info.run_id, f"plots/{key}.png", str(folder)))
            for key in ("confusion_matrix", "reliability_diagram")
        }
    except (MlflowException, OSError) as exc:
        raise DataError(
            f"run {run.info.run_id} of {name} v{model_version.version} has no "
            f"{stages.VAL_PREDICTIONS_ARTIFACT} / {stages.SKIN_TONES_ARTIFACT}: it was trained "
            f"before the model card existed; train again ({str(exc).splitlines()[0]})"
        ) from None
    labels = list(signature["labels"])
    data = CardData(
        model_name=name,
        version=str(model_version.version),
        aliases=list(getattr(model_version, "aliases", []) or []),
        run_id=run.info.run_id,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        labels=labels,
        signature=signature,
        val=Predictions.from_artifact(val_payload, labels),
        skin_tones=tones,
        plots=plots,
    )
    data.recipes = tried_recipes(client, run)
    try:
        data.dataset = _download_json(client, run.info.run_id, stages.DATASET_ARTIFACT, folder)
    except (MlflowException, OSError):
        data.dataset = {}  # trained before datasets carried a description
    cv_run = _matching_cv_run(client, run)
    if cv_run is not None:
        try:
            oof = _download_json(
                client, cv_run.info.run_id, stages.OOF_PREDICTIONS_ARTIFACT, folder
            )
        except (MlflowException, OSError):
            oof = None
        if oof is not None:
            data.cv_run_id = cv_run.info.run_id
            data.cv_params = dict(cv_run.data.params)
            data.cv_metrics = dict(cv_run.data.metrics)
            data.oof = Predictions.from_artifact(oof, labels)
    return data
