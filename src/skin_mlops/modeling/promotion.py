"""The registry gate as its own step: give a registered version ``@champion`` if it is
better than the champion *on the same photos*, then publish its export to
``runs/skin5-current``.

``skin-mlops train`` decides right after training (``run_training(promote=True)``); the
Airflow pipeline trains with ``promote=False`` and calls :func:`promote_run` in its
``evaluate_and_promote`` task, possibly on another worker: the export is therefore read
back from the models bucket (``models-registry/skin/models/<run_id>/``), not from the
training machine's disk. Both paths use :func:`registry.promote_if_better`.

**Same photos.** A candidate's val macro-F1 was measured on its run's val set; the
champion's stored number was measured on *its* run's (maybe another split, an older
dataset). So the gate never compares stored numbers: :class:`SamePhotoScorer` downloads
the champion's registered ONNX model (the API's own registry download and loader,
:mod:`skin_mlops.api.registry`, :func:`skin_mlops.api.model_runtime.load_model`), runs it
with ONNX Runtime on the candidate's val photos through
:func:`skin_mlops.preprocessing.preprocess_bytes` at the champion's own image size, and
computes macro-F1 with :func:`skin_mlops.modeling.evaluate.macro_f1`, the function the
candidate's own score came from. The val set of a run is logged with it
(:data:`VAL_SET_ARTIFACT`: hashes, labels, object keys), so the Airflow gate re-scores on
exactly the photos the candidate was evaluated on, fetched (SHA-256 checked) from the
dataset cache or the object store.

Idempotent: re-running the step for a version that already is the champion and already
published changes nothing.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skin_mlops import export_format
from skin_mlops.core.config import Settings, get_settings
from skin_mlops.core.errors import DataError, ServiceUnavailableError
from skin_mlops.storage import ObjectStore, download_directory, make_object_store

if TYPE_CHECKING:
    from skin_mlops.metadata import LesionRecord

#: Where a training run logs the photos it was evaluated on.
VAL_SET_ARTIFACT = "evaluation/val_set.json"
SCORE_BATCH = 16  # images per ONNX Runtime call while re-scoring


@dataclass(frozen=True)
class ValPhoto:
    """One val photo: its content hash, label and where its bytes are."""

    sha256: str
    label: str
    object_key: str
    source_path: str = ""


@dataclass(frozen=True)
class ValSet:
    """The photos a run's val macro-F1 was measured on, and its label order."""

    dataset: str
    bucket: str
    labels: tuple[str, ...]
    photos: tuple[ValPhoto, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly (logged as :data:`VAL_SET_ARTIFACT`)."""
        return {
            "dataset": self.dataset,
            "bucket": self.bucket,
            "labels": list(self.labels),
            "photos": [asdict(photo) for photo in self.photos],
        }

    @classmethod
    def of_records(
        cls, dataset: str, bucket: str, labels: Sequence[str], records: Sequence[LesionRecord]
    ) -> ValSet:
        """The val set of a training run's ``records`` (in their order)."""
        return cls(
            dataset=dataset,
            bucket=bucket,
            labels=tuple(labels),
            photos=tuple(
                ValPhoto(r.sha256, r.label, r.object_key, r.source_path or "") for r in records
            ),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValSet:
        return cls(
            dataset=str(data["dataset"]),
            bucket=str(data["bucket"]),
            labels=tuple(str(label) for label in data["labels"]),
            photos=tuple(ValPhoto(**photo) for photo in data["photos"]),
        )


def load_val_set(client: Any, run_id: str) -> ValSet:
    """The val set a run logged.

    Raises:
        DataError: the run has no :data:`VAL_SET_ARTIFACT` (trained before the gate
            re-scored on the same photos: train it again) or it is unreadable.
    """
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="skin-val-set-") as folder:
        try:
            path = client.download_artifacts(run_id, VAL_SET_ARTIFACT, folder)
        except MlflowException:
            raise DataError(
                f"run {run_id} has no {VAL_SET_ARTIFACT}, so its champion cannot be re-scored "
                "on the same photos (it was trained by an older skin-mlops): train it again"
            ) from None
        try:
            return ValSet.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"run {run_id}: {VAL_SET_ARTIFACT} is unreadable ({exc})") from None


class SamePhotoScorer:
    """A :data:`~skin_mlops.modeling.registry.ChampionScorer` on one run's val photos.

    ``load(photo)`` returns a photo's verified bytes. Results are kept per version (a
    gate that re-scores the same champion twice pays once).
    """

    def __init__(
        self, val_set: ValSet, load: Callable[[ValPhoto], bytes], settings: Settings
    ) -> None:
        self.val_set = val_set
        self.load = load
        self.settings = settings
        self.scores: dict[tuple[str, str], float] = {}

    def __call__(self, model_name: str, version: str) -> float:
        if (model_name, version) not in self.scores:
            self.scores[(model_name, version)] = self._score(model_name, version)
        return self.scores[(model_name, version)]

    def _score(self, model_name: str, version: str) -> float:
        from skin_mlops.api.model_runtime import ModelRefusedError, load_model
        from skin_mlops.api.registry import RegistrySource
        from skin_mlops.modeling.evaluate import macro_f1
        from skin_mlops.modeling.registry import ChampionNotComparable
        from skin_mlops.preprocessing import preprocess_bytes

        key = f"{model_name}/{version}"
        source = RegistrySource(
            f"models:/{key}", self.settings.mlflow_tracking_uri, self.settings.model_cache_dir
        )
        try:
            model = load_model(source.materialize(key), key, self.settings)
        except ModelRefusedError as exc:
            raise ChampionNotComparable(str(exc)) from None
        labels = list(self.val_set.labels)
        index = {label: i for i, label in enumerate(labels)}
        unknown = len(labels)  # a label this run does not have: always wrong
        photos = self.val_set.photos
        y_true = np.array([index[photo.label] for photo in photos], dtype=np.int64)
        y_pred = np.empty(len(photos), dtype=np.int64)
        for start in range(0, len(photos), SCORE_BATCH):
            batch: Sequence[ValPhoto] = photos[start : start + SCORE_BATCH]
            pixels = np.stack([preprocess_bytes(self.load(p), model.image_size) for p in batch])
            top = model.logits(pixels).argmax(axis=1)
            y_pred[start : start + len(batch)] = [
                index.get(model.labels[int(i)], unknown) for i in top
            ]
        return macro_f1(y_true, y_pred, len(labels))


def store_scorer(val_set: ValSet, store: ObjectStore, settings: Settings) -> SamePhotoScorer:
    """A scorer whose photos come from the dataset cache, else the object store."""
    from skin_mlops.modeling.data import ImageFetcher

    fetch = ImageFetcher(store, val_set.bucket, settings.dataset_cache_dir)
    return SamePhotoScorer(
        val_set,
        lambda photo: fetch.fetch(photo.sha256, photo.object_key, photo.source_path),
        settings,
    )


@dataclass(frozen=True)
class PromotionResult:
    """What the gate decided and where the champion is published (when it changed)."""

    model_name: str
    version: str
    promoted: bool
    outcome: str
    summary: str
    reason: str
    score: float
    previous_version: str | None
    previous_score: float | None
    margin: float | None
    min_delta: float
    published_dir: Path | None

    def as_dict(self) -> dict[str, object]:
        """Small, JSON-friendly (for XCom and logs)."""
        data = asdict(self)
        data["published_dir"] = str(self.published_dir) if self.published_dir else None
        return data


def _live_export(current_link: Path) -> export_format.ModelSignature | None:
    if not current_link.is_symlink():
        return None
    try:
        return export_format.read_signature(current_link.resolve())
    except DataError:
        return None


def publish_from_store(
    store: ObjectStore, bucket: str, run_id: str, export_version: str, current_link: Path
) -> Path:
    """Download ``skin/models/<run_id>/`` and atomically point ``current_link`` at it.

    A link that already points at this run's ``export_version`` is left alone (a retried
    task).
    """
    from skin_mlops.modeling.export import MODELS_PREFIX

    live = _live_export(current_link)
    if live is not None and live.model_version == export_version and live.run_id == run_id:
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

    The champion is re-scored on the candidate run's val photos (:data:`VAL_SET_ARTIFACT`);
    the decision, both scores and the margin are logged on the candidate's run.

    Raises:
        ServiceUnavailableError: MLflow is unreachable, does not know the version, or fails
            while the champion is read (never taken for "no champion").
        DataError: the candidate's run has no val set to re-score the champion on.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from skin_mlops.modeling import registry, tracking

    settings = settings or get_settings()
    tracking.connect(settings)
    uri = settings.mlflow_tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = settings.registered_model_name
    try:
        registered = client.get_model_version(name, model_version)
        score = registry.version_score(client, name, model_version)
    except MlflowException as exc:
        raise ServiceUnavailableError(
            f"cannot read {name} v{model_version} from MLflow at {uri}: "
            f"{str(exc).splitlines()[0][:200]}"
        ) from None
    run_id = registered.tags.get("run_id") or registered.run_id
    export_version = registered.tags.get("export_version")
    if not run_id or not export_version:
        raise ServiceUnavailableError(
            f"{name} v{model_version} has no run_id/export_version tags: it was not "
            "registered by skin-mlops training, so its export cannot be found"
        )
    store = store or make_object_store(settings)
    scorer: SamePhotoScorer | None = None

    def rescore(model_name: str, version: str) -> float:
        nonlocal scorer
        if scorer is None:  # only when there is a champion to compare with
            scorer = store_scorer(load_val_set(client, run_id), store, settings)
        return scorer(model_name, version)

    def publish() -> Path:
        return publish_from_store(
            store, settings.s3_models_bucket, run_id, export_version, Path(settings.model_dir)
        )

    decision = registry.promote_if_better(
        name,
        model_version,
        score,
        rescore=rescore,
        min_delta=settings.promotion_min_delta,
        tracking_uri=uri,
        publish=publish,
    )
    try:
        registry.log_decision(client, run_id, decision)
    except ServiceUnavailableError as exc:  # decided and published already: a retry logs it
        raise ServiceUnavailableError(f"{decision.summary}; but {exc}") from None
    return PromotionResult(
        model_name=name,
        version=decision.version,
        promoted=decision.promoted,
        outcome=decision.outcome,
        summary=decision.summary,
        reason=decision.reason,
        score=decision.score,
        previous_version=decision.previous_version,
        previous_score=decision.previous_score,
        margin=decision.margin,
        min_delta=decision.min_delta,
        published_dir=decision.published_dir,
    )
