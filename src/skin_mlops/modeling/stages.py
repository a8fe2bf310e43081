"""The stages of a training run shared by ``train``, ``cv`` and the Airflow task.

Each is a function a run calls in order (:func:`skin_mlops.modeling.train.train_and_track`
reads top to bottom; :func:`skin_mlops.modeling.cross_validate.cross_validate` calls the
same ones per fold):

1. :func:`build_run_backbone` - the recipe's backbone (weights from the local cache);
2. :func:`frozen_features` - cached features of the training views and the evaluation
   views (ONNX Runtime backbone, converted once per feature space; with fine-tuning the
   activation maps at the cut and the frozen top pooled on them);
3. heads (:mod:`skin_mlops.modeling.heads`) and optional fine-tuning
   (:mod:`skin_mlops.modeling.fine_tune`); :func:`ensemble_logits` - what the exported
   graph computes from the features: the mean logits over heads and TTA views;
4. :func:`fit_ood_guard` - the out-of-distribution guard (:mod:`skin_mlops.modeling.ood`);
5. evaluation (:mod:`skin_mlops.modeling.evaluate`) and :func:`write_plots`;
   :func:`log_skin_tones` and :func:`log_predictions` - what the model card reads back;
6. export and registration (:mod:`skin_mlops.modeling.export`,
   :mod:`skin_mlops.modeling.tracking`), :func:`ood_spec` for ``signature.json``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import Progress

from skin_mlops.core.config import Settings
from skin_mlops.core.errors import DataError
from skin_mlops.modeling.fine_tune import BackboneSplit, pool_maps, split_backbone
from skin_mlops.modeling.options import TrainingOptions

if TYPE_CHECKING:
    import keras

    from skin_mlops import export_format
    from skin_mlops.metadata import LesionRecord
    from skin_mlops.modeling.backbones import Backbone
    from skin_mlops.modeling.evaluate import Evaluation
    from skin_mlops.modeling.features import FeatureTable, ImageRef
    from skin_mlops.modeling.ood import OodGuard


@contextmanager
def timed(
    timings: dict[str, float], name: str, peaks: dict[str, float] | None = None
) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``timings[name]`` (seconds); with
    ``peaks``, also the process's peak resident memory so far (MiB) when the block ends,
    so the stage where the peak grows shows (``peak_rss_mb_after_<stage>`` in MLflow)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 3)
        if peaks is not None:
            peaks[name] = peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB (``getrusage``; Linux: KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def peak_rss_children_mb() -> float:
    """The peak resident memory of the largest child process that has ended, MiB (the
    backbone's ONNX conversion runs in one)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


def quiet_libraries() -> None:
    """TensorFlow's C++ start-up lines and the libraries' INFO logs off."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("mlflow", "alembic", "tf2onnx", "absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def build_run_backbone(options: TrainingOptions, settings: Settings) -> Backbone:
    """The recipe's backbone (a missing weights file fails here, before a run is opened)."""
    from skin_mlops.modeling.backbones import build_backbone

    return build_backbone(
        options.backbone,
        image_size=options.image_size,
        weights_cache_dir=settings.weights_cache_dir,
        # str options (pooling=...), never image_size or include_top: mypy cannot
        # tell; build_backbone checks them per backbone
        **dict(options.backbone_options),  # type: ignore[arg-type]  # option keys only
    )


@dataclass
class FrozenFeatures:
    """The features one run trains and evaluates on.

    Attributes:
        train (np.ndarray): pooled ``float32[N_train, views, D]`` (the heads' input).
        evaluation (np.ndarray): pooled ``float32[N_eval, T, D]`` of the first ``T``
            dihedral views (``T >= tta_views``; the model averages the first ``tta_views``).
        train_table / evaluation_table (FeatureTable): what the cache returned (with
            fine-tuning: activation maps at the cut, not pooled).
        split (BackboneSplit | None): the cut backbone, when fine-tuning.
        backbone_onnx (Path | None): the ONNX twin of the backbone (None: Keras computed).
    """

    train: np.ndarray
    evaluation: np.ndarray
    train_table: FeatureTable
    evaluation_table: FeatureTable
    split: BackboneSplit | None
    backbone_onnx: Path | None

    @property
    def extracted(self) -> int:
        """Vectors computed by the backbone in this run."""
        return self.train_table.extracted + self.evaluation_table.extracted

    @property
    def reused(self) -> int:
        """Vectors read from the cache."""
        return self.train_table.reused + self.evaluation_table.reused


def frozen_features(
    backbone: Backbone,
    train_refs: Sequence[ImageRef],
    evaluation_refs: Sequence[ImageRef],
    options: TrainingOptions,
    settings: Settings,
    progress: Progress,
    timings: dict[str, float],
    peaks: dict[str, float] | None = None,
    *,
    evaluation_dihedral_views: int = 1,
) -> FrozenFeatures:
    """Features of :meth:`TrainingOptions.train_view_ids` per training photo and of the
    first ``max(options.tta_views, evaluation_dihedral_views)`` dihedral views per
    evaluation photo (``cv`` asks for all 8 to measure how often a turn changes the
    top-1), from the feature cache (computed and stored only where missing)."""
    from skin_mlops.modeling.features import (
        FeatureSpace,
        FeatureStore,
        dihedral_view_ids,
        extract_features,
    )

    store = FeatureStore(settings.feature_cache_dir)
    split = split_backbone(backbone, options.fine_tune_layers) if options.fine_tune_layers else None
    backbone_onnx: Path | None = None
    compute = None
    if split is None:
        # the frozen backbone on ONNX Runtime (converted once per feature space, cached)
        with timed(timings, "backbone_onnx", peaks):
            from skin_mlops.modeling.onnx_backbone import (
                ensure_backbone_onnx,
                onnx_feature_function,
            )

            backbone_onnx = ensure_backbone_onnx(
                backbone,
                FeatureSpace.of(backbone, options.backbone_options_key).key,
                settings.weights_cache_dir,
            )
            compute = onnx_feature_function(backbone_onnx) if backbone_onnx else None
    with timed(timings, "features", peaks):
        # with fine-tuning, the cache holds the activation map at the cut, and the
        # pooled features are the (still frozen) top applied to it
        extractor = split.bottom if split else backbone
        cache_key = options.backbone_options_key + (f",cut={split.cache_key}" if split else "")
        train_views = options.train_view_ids()
        train_table = extract_features(
            extractor,
            train_refs,
            train_views,
            store,
            backbone_options=cache_key,
            progress=progress,
            description=f"features train ({len(train_views)} views)",
            compute=compute,
        )
        evaluation_views = max(options.tta_views, evaluation_dihedral_views)
        evaluation_table = extract_features(
            extractor,
            evaluation_refs,
            dihedral_view_ids()[:evaluation_views],
            store,
            backbone_options=cache_key,
            progress=progress,
            description=f"features val ({evaluation_views} views)",
            compute=compute,
        )
        if split:
            train = pool_maps(split.top, train_table.features, split.map_shape)
            evaluation = pool_maps(split.top, evaluation_table.features, split.map_shape)
        else:
            train, evaluation = train_table.features, evaluation_table.features
    return FrozenFeatures(train, evaluation, train_table, evaluation_table, split, backbone_onnx)


def ensemble_logits(heads: Sequence[keras.Model], features: np.ndarray) -> np.ndarray:
    """What the exported graph computes from pooled ``[N, T, D]`` features: the mean
    logits over the heads and the ``T`` TTA views."""
    from skin_mlops.modeling.export import keras_logits

    return np.mean(
        [
            keras_logits(head, features[:, v], batch_size=256)
            for head in heads
            for v in range(features.shape[1])
        ],
        axis=0,
    )


def dihedral_top1(heads: Sequence[keras.Model], features: np.ndarray, tta_views: int) -> np.ndarray:
    """``int[N, 8]``: the exported model's top-1 for each of the 8 dihedral transforms of
    each photo, from pooled features of all 8 views ``[N, 8, D]`` (column 0: as given).

    The model sees transform ``k`` of a photo, and with ``tta_views`` > 1 averages its
    first ``tta_views`` transforms, i.e. views ``compose_dihedral(k, t)`` of the original.
    """
    from skin_mlops.modeling.features import DIHEDRAL_VIEWS, compose_dihedral

    columns = []
    for k in range(DIHEDRAL_VIEWS):
        views = [compose_dihedral(k, t) for t in range(tta_views)]
        columns.append(ensemble_logits(heads, features[:, views]).argmax(axis=1))
    return np.stack(columns, axis=1)


def dihedral_agreement(top1: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Share of photos whose top-1 a transform keeps (``<prefix>dihedral_agreement_<k>``,
    k 1..7, and the worst, ``<prefix>dihedral_agreement_min``), from :func:`dihedral_top1`."""
    kept = {
        f"{prefix}dihedral_agreement_{k}": float(np.mean(top1[:, k] == top1[:, 0]))
        for k in range(1, top1.shape[1])
    }
    return {**kept, f"{prefix}dihedral_agreement_min": min(kept.values())}


def write_plots(evaluation: Evaluation, history: dict[str, list[float]], labels: list[str]) -> Path:
    """Confusion matrix, reliability diagram and training curves as PNGs (a temp folder)."""
    from skin_mlops.modeling import evaluate

    folder = Path(tempfile.mkdtemp(prefix="skin-train-plots-"))
    evaluate.plot_confusion_matrix(
        evaluation.report.confusion,
        labels,
        folder / "confusion_matrix.png",
        title=f"val confusion matrix (acc {evaluation.report.accuracy:.3f}, "
        f"macro-F1 {evaluation.report.macro_f1:.3f})",
    )
    evaluate.plot_reliability_diagram(evaluation, folder / "reliability_diagram.png")
    evaluate.plot_training_curves(history, folder / "training_curves.png")
    return folder


def fit_ood_guard(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    options: TrainingOptions,
    console: Console,
    noise: np.ndarray | None = None,
) -> OodGuard | None:
    """The out-of-distribution guard (:mod:`skin_mlops.modeling.ood`), or None (with a
    yellow line) when some class has too few training photos to hold any out.
    ``noise``: int8 feature residuals (``train --int8``: :func:`ood.fit_mahalanobis`)."""
    import mlflow

    from skin_mlops.modeling import ood

    try:
        guard = ood.fit_guard(
            features,
            labels,
            num_classes,
            pass_rate=options.ood_pass_rate,
            seed=options.seed,
            noise=noise,
        )
    except DataError as exc:
        console.print(f"no out-of-distribution guard: {exc}", style="yellow", highlight=False)
        mlflow.log_param("ood_guard", "none")
        return None
    mlflow.log_params({"ood_guard": ood.METHOD, "ood_folds": guard.folds})
    return guard


def ood_spec(guard: OodGuard | None) -> export_format.OodSpec | None:
    """The guard as ``signature.json`` describes it."""
    from skin_mlops import export_format
    from skin_mlops.modeling import export, ood

    if guard is None:
        return None
    return export_format.OodSpec(
        method=ood.METHOD,
        output=export_format.TensorSpec(name=export.OOD_OUTPUT_NAME, shape=[None]),
        threshold=guard.threshold,
        pass_rate=guard.pass_rate,
        heldout_pass_rate=guard.heldout_pass_rate,
        heldout_photos=guard.heldout_photos,
    )


def check_cache_consistency(fresh: np.ndarray, cached_logits: np.ndarray) -> None:
    """The exported Keras graph's logits on real pixels (``fresh``) must be the logits
    the cached features gave."""
    from skin_mlops.export_format import softmax

    gap = float(np.max(np.abs(softmax(fresh) - softmax(cached_logits)), initial=0.0))
    if gap > 1e-3:
        raise DataError(
            f"the feature cache disagrees with the backbone (max |dp| = {gap:.2e}); "
            "delete the feature cache folder and train again"
        )


# --- what the model card reads back (skin_mlops.modeling.model_card) ---------------------

SKIN_TONES_ARTIFACT = "data/skin_tones.json"
DATASET_ARTIFACT = "data/dataset.json"
VAL_PREDICTIONS_ARTIFACT = "evaluation/val_predictions.json"
OOF_PREDICTIONS_ARTIFACT = "cv/oof_predictions.json"


def log_skin_tones(
    rows: Sequence[LesionRecord], refs: Sequence[ImageRef], settings: Settings
) -> np.ndarray:
    """Log each photo's skin-tone angle (:mod:`skin_mlops.modeling.skin_tone`, cached by
    SHA-256) as ``data/skin_tones.json``; return the angles (NaN: no skin found)."""
    import mlflow

    from skin_mlops.modeling import skin_tone

    angles = skin_tone.ItaCache(settings.feature_cache_dir).angles(
        [(ref.sha256, ref.load) for ref in refs]
    )
    photos = [
        {
            "sha256": row.sha256,
            "split": row.split,
            "label": row.label,
            "ita": None if not np.isfinite(angle) else round(float(angle), 2),
        }
        for row, angle in zip(rows, angles, strict=True)
    ]
    mlflow.log_dict({"method": skin_tone.METHOD, "photos": photos}, SKIN_TONES_ARTIFACT)
    return angles


def log_predictions(
    rows: Sequence[LesionRecord],
    logits: np.ndarray,
    labels: Sequence[str],
    temperature: float,
    artifact: str,
) -> None:
    """Log one prediction per photo (SHA-256, true label, logits) and the temperature that
    calibrates them: what bootstrap intervals and per-group metrics are computed from."""
    import mlflow

    mlflow.log_dict(
        {
            "labels": list(labels),
            "temperature": float(temperature),
            "photos": [
                {"sha256": row.sha256, "label": row.label, "logits": np.round(z, 5).tolist()}
                for row, z in zip(rows, np.asarray(logits, np.float64), strict=True)
            ],
        },
        artifact,
    )


def export_signature(
    backbone: Backbone,
    labels: Sequence[str],
    temperature: float,
    guard: OodGuard | None,
    metrics: dict[str, float],
    model_version: str,
    run_id: str,
) -> export_format.ModelSignature:
    """The ``signature.json`` of a training run's export (the model contract in
    :mod:`skin_mlops.export_format`): float32 ``[N, S, S, 3]`` in, logits out, the guard's
    score as a second output when there is one."""
    from skin_mlops import export_format, preprocessing
    from skin_mlops.modeling import export

    size = backbone.image_size
    return export_format.ModelSignature(
        model_version=model_version,
        run_id=run_id,
        backbone=backbone.name,
        backbone_weights_sha256=backbone.weights_sha256,
        image_size=size,
        preprocessing_id=preprocessing.PREPROCESSING_ID,
        labels=list(labels),
        temperature=temperature,
        input=export_format.TensorSpec(name=export.INPUT_NAME, shape=[None, size, size, 3]),
        output=export_format.TensorSpec(name=export.OUTPUT_NAME, shape=[None, len(labels)]),
        ood=ood_spec(guard),
        metrics={k: round(v, 6) for k, v in metrics.items()},
    )


def data_params(
    dataset: str,
    labels: Sequence[str],
    train_records: Sequence[LesionRecord],
    val_records: Sequence[LesionRecord],
) -> dict[str, object]:
    """The MLflow params that say what a run trained on: dataset, labels, preprocessing,
    photo counts per split and per ``count_<split>_<label>``."""
    from collections import Counter

    from skin_mlops.modeling.data import TRAIN_SPLIT, VAL_SPLIT
    from skin_mlops.preprocessing import PREPROCESSING_ID

    counts = Counter((r.split, r.label) for r in [*train_records, *val_records])
    return {
        "dataset": dataset,
        "labels": ",".join(labels),
        "preprocessing_id": PREPROCESSING_ID,
        "n_train": len(train_records),
        "n_val": len(val_records),
        **{
            f"count_{split}_{label}": counts[(split, label)]
            for split in (TRAIN_SPLIT, VAL_SPLIT)
            for label in labels
        },
    }
