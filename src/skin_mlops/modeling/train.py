"""The training stage: ``skin-mlops train`` and :func:`run_training` (for Airflow).

Top to bottom, one run does:

1. **checks, before any heavy work** - the metadata DB has rows (else: run
   ``skin-mlops ingest`` first) and every label in it is in the dataset config; the
   MLflow store answers (:func:`skin_mlops.modeling.tracking.connect`); the object store
   answers (the models bucket is ensured);
2. **data** - ``lesions_data`` rows with status ``present`` of the ``train`` and ``val``
   splits; label -> index from the config's label order; a val photo whose bytes are also
   a training photo (leakage, as ingestion reports it) is left out of val for training and
   evaluation, and counted (``val_leaked_excluded``; ``--keep-leaked-val`` keeps them);
   image bytes from the local file when it is still there, else from
   ``settings.dataset_cache_dir``, else downloaded from the object store into that cache;
   every byte string is checked against its SHA-256;
3. **frozen features** - the backbone's output per (image, view), computed once and kept
   in the feature cache (:mod:`skin_mlops.modeling.features`); ``views`` fixed augmented
   views per training photo, the centre view (or its ``tta_views`` dihedral transforms)
   for validation. With fine-tuning, the cache holds the activation map at the cut
   below the layers to tune, and the pooled features are the frozen top applied to it;
4. **head(s)** - trained on the cached features (a ``tf.data`` pipeline over the arrays),
   class-balanced loss weights, seeded; an epoch costs milliseconds to a second;
5. **fine-tuning** (``--fine-tune-layers N``, 0 = off) - the top ``N`` backbone layers
   (BatchNorm counted, kept frozen) and the heads trained at a lower learning rate on the
   cached activation maps: the frozen part below the cut is never recomputed;
6. **out-of-distribution guard** - class means and shared covariance of the training
   photos' pooled features, a threshold passing 95 % of held-out training photos
   (:mod:`skin_mlops.modeling.ood`); its score is a second output of the exported graph;
   **evaluation** - temperature fitted on val, ECE before/after, per-class metrics,
   confusion matrix and reliability diagram PNGs (:mod:`skin_mlops.modeling.evaluate`),
   the share of val photos the guard flags;
7. **export** - backbone + head in one graph, ``model.keras`` + ``model.onnx`` checked
   against each other (:mod:`skin_mlops.modeling.export`);
8. **tracking** - everything logged to MLflow (the val photos too:
   ``evaluation/val_set.json``), the ONNX model registered as ``skin-classifier`` (with
   ``signature.json`` and ``class_index.json``); the export is uploaded to the models
   bucket under ``skin/models/<run_id>/``;
9. **promotion** - the gate (:func:`skin_mlops.modeling.registry.promote_if_better`):
   the current champion is re-scored on this run's val photos and ``champion`` moves only
   when this run's val macro-F1 beats it by ``PROMOTION_MIN_DELTA`` (0.01); a new
   champion is published atomically to ``settings.model_dir`` (``runs/skin5-current``)
   while the gate still holds the store's lock.

The stages are functions of their own modules, shared with ``skin-mlops cv``
(:mod:`skin_mlops.modeling.cross_validate`) and the Airflow task: options
(:mod:`~skin_mlops.modeling.options`), data (:mod:`~skin_mlops.modeling.data`),
backbone, features, guard and plots (:mod:`~skin_mlops.modeling.stages`), heads
(:mod:`~skin_mlops.modeling.heads`), fine-tuning (:mod:`~skin_mlops.modeling.fine_tune`),
export (:mod:`~skin_mlops.modeling.export`), registry and promotion
(:mod:`~skin_mlops.modeling.tracking`); the command is in
:mod:`~skin_mlops.modeling.train_cli`.

TensorFlow, Keras and MLflow are imported inside functions: ``skin_mlops.cli`` imports
this module at start and must stay fast.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

from skin_mlops import preprocessing
from skin_mlops.core.config import Settings, get_settings
from skin_mlops.dataset_config import load_dataset_config
from skin_mlops.modeling import distill, quantize, stages
from skin_mlops.modeling.data import (
    dataset_fingerprint,
    load_records,
    prepare_training_data,
)
from skin_mlops.modeling.fine_tune import fine_tune_on_maps, pool_maps
from skin_mlops.modeling.heads import make_progress, train_heads
from skin_mlops.modeling.options import (
    TrainingOptions,
)
from skin_mlops.modeling.stages import timed

if TYPE_CHECKING:
    from skin_mlops.modeling.backbones import Backbone
    from skin_mlops.modeling.export import ParityReport
    from skin_mlops.storage import ObjectStore

PARITY_IMAGES = 16

log = logging.getLogger(__name__)


# --- result ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingResult:
    """What one :func:`run_training` produced."""

    run_id: str
    experiment_id: str
    model_name: str
    model_version: str  # registry version of skin-classifier
    export_version: str  # runs/skin5/<export_version>
    promoted: bool
    decision: str
    metrics: dict[str, float]
    temperature: float
    published_dir: Path | None  # the version folder runs/skin5-current points to (if promoted)
    export_uri: str  # s3://<models bucket>/skin/models/<run_id>/
    dataset_fingerprint: str
    features_extracted: int
    features_reused: int
    parity_max_abs_prob_diff: float
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # after each stage
    val_leaked_excluded: int = 0  # val photos left out: their bytes are training photos


def run_training(
    dataset_config: Path | str | None = None,
    *,
    settings: Settings | None = None,
    lock_wait_s: float = 900.0,
    **kwargs: Any,
) -> TrainingResult:
    """:func:`train_and_track` while holding the metadata DB's shared lock.

    An ingestion running on the same DB is waited for (up to ``lock_wait_s``), and no
    ingestion can start until this training has read its rows and images.
    """
    from skin_mlops.ingestion.lock import metadata_lock

    settings = settings or get_settings()
    config = load_dataset_config(dataset_config or settings.dataset_config)
    with metadata_lock(config.metadata_db, shared=True, wait_s=lock_wait_s):
        return train_and_track(dataset_config, settings=settings, **kwargs)


def train_and_track(
    dataset_config: Path | str | None = None,
    *,
    settings: Settings | None = None,
    options: TrainingOptions | None = None,
    backbone: Backbone | None = None,
    store: ObjectStore | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    promote: bool = True,
    min_delta: float | None = None,
    int8: bool = False,
    int8_method: str = "ort-minmax",
    teacher_backbone: Backbone | None = None,
) -> TrainingResult:
    """Train, evaluate, export, track and publish one model (see the module docstring).

    Args:
        dataset_config (Path | str | None): dataset config YAML (default
            ``settings.dataset_config``).
        settings (Settings | None): platform settings (default :func:`get_settings`).
        options (TrainingOptions | None): hyper-parameters (default: the recipe).
        backbone (Backbone | None): an already built backbone (tests use a tiny one);
            default: ``build_backbone(options.backbone, image_size=options.image_size)``.
        store (ObjectStore | None): object store (default: the one settings describe).
        console (Console | None): where progress and the summary go.
        show_progress (bool): draw rich progress bars.
        promote (bool): decide ``@champion`` and publish now (the CLI); ``False`` registers
            the version and uploads its export only, and
            :func:`skin_mlops.modeling.promotion.promote_run` decides later (the Airflow
            pipeline's ``evaluate_and_promote`` task).
        min_delta (float | None): the val macro-F1 improvement over the champion (re-scored
            on this run's val photos) needed to take ``@champion`` (default
            ``settings.promotion_min_delta``).
        int8 (bool): also quantize the export to int8, shipped beside fp32 only past the
            quality gate (:mod:`skin_mlops.modeling.quantize`).
        int8_method (str): its :data:`~skin_mlops.modeling.quantize.METHODS` method.
        teacher_backbone (Backbone | None): with ``options.teacher_image_size``, an already
            built teacher backbone (tests); default: built from the options.

    Returns:
        TrainingResult: run id, registry decision, metrics, export location, timings.

    Raises:
        SkinMlopsError: any problem a user can fix, as one line (see module docstring).
    """
    from skin_mlops import export_format
    from skin_mlops.modeling import evaluate, export, registry, tracking
    from skin_mlops.modeling.onnx_backbone import convert_in_child_process
    from skin_mlops.modeling.promotion import VAL_SET_ARTIFACT, SamePhotoScorer, ValSet
    from skin_mlops.storage import make_object_store

    stages.quiet_libraries()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    peaks: dict[str, float] = {}  # peak resident memory (MiB) after each stage
    settings = settings or get_settings()
    options = options or TrainingOptions()
    console = console or Console()
    config = load_dataset_config(dataset_config or settings.dataset_config)
    labels = list(config.labels)

    # 1. checks, before any heavy work
    with timed(timings, "checks", peaks):
        records = load_records(config)
        experiment_id = tracking.connect(settings)
        store = store or make_object_store(settings)
        store.ensure_bucket(settings.s3_models_bucket)
    if backbone is None:  # before TensorFlow is imported here (see the function's doc)
        with timed(timings, "backbone_conversion", peaks):
            convert_in_child_process(options, settings)
    if options.distils and teacher_backbone is None:
        with timed(timings, "backbone_conversion", peaks):
            distill.prepare_teacher(options, settings)
    import keras
    import mlflow

    # the requirements are pinned explicitly; MLflow still warns that the venv has no pip
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)

    # 2. data (val photos that are also training photos - the same bytes, or the same
    # picture re-saved - left out unless asked)
    with timed(timings, "data", peaks):
        data = prepare_training_data(
            records, config, store, settings, keep_leaked_val=options.keep_leaked_val
        )
    data.report_leakage(console)
    train_records, val_records, fetch = data.train_records, data.val_records, data.fetch
    leaked_val, near_val, val_found = data.leaked_val, data.near_val, data.val_found
    train_refs, val_refs = data.refs(train_records), data.refs(val_records)
    y_train, y_val = data.labels_of(train_records), data.labels_of(val_records)
    fingerprint = dataset_fingerprint(train_records + val_records)

    # the backbone (a missing weights file fails here, before a run is opened)
    with timed(timings, "backbone", peaks):
        backbone = backbone or stages.build_run_backbone(options, settings)

    keras.utils.set_random_seed(options.seed)
    progress = make_progress(console, show_progress)
    with mlflow.start_run(experiment_id=experiment_id) as run, progress:
        run_id = run.info.run_id
        export_version = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{run_id[:8]}"
        params: dict[str, Any] = {
            **options.params(),
            **stages.data_params(config.dataset, labels, train_records, val_records),
            "dataset_fingerprint": fingerprint,
            "git_commit": tracking.git_commit(),
        }
        mlflow.set_tags({"stage": "train", "dataset": config.dataset})
        mlflow.log_metrics(
            {
                "val_leaked": len(leaked_val),
                "val_near_duplicates": len(near_val),
                "val_leaked_excluded": len(val_found) - len(val_records),
            }
        )
        val_set = ValSet.of_records(config.dataset, config.storage.bucket, labels, val_records)
        mlflow.log_dict(val_set.as_dict(), VAL_SET_ARTIFACT)
        mlflow.log_dict(
            {
                "dataset": config.dataset,
                "description": config.description,
                "known_flaws": config.known_flaws,
            },
            stages.DATASET_ARTIFACT,
        )
        with timed(timings, "skin_tones", peaks):
            stages.log_skin_tones(train_records + val_records, train_refs + val_refs, settings)

        # 3. frozen features
        params.update(
            backbone=backbone.name,
            image_size=backbone.image_size,
            backbone_weights_sha256=backbone.weights_sha256,
            feature_dim=backbone.feature_dim,
        )
        tracking.log_params(params)
        features = stages.frozen_features(
            backbone, train_refs, val_refs, options, settings, progress, timings, peaks
        )
        split, backbone_onnx = features.split, features.backbone_onnx
        train_features, val_features = features.train, features.evaluation
        train_table, val_table = features.train_table, features.evaluation_table
        mlflow.log_param("feature_engine", "onnxruntime" if backbone_onnx else "keras")
        extracted, reused = features.extracted, features.reused
        mlflow.log_metrics(
            {
                "features_extracted": extracted,
                "features_reused": reused,
                "images_downloaded": fetch.downloaded,
            }
        )
        if split:
            mlflow.log_param("fine_tune_cut", split.description)

        # 4. head(s) on cached features (with --int8: the int8 backbone's errors, measured
        # for the guard; teaching them to the head too changed no flip: 9 of 127 either way)
        calibration = residuals = None
        if int8 and backbone_onnx and not split:
            with timed(timings, "int8_residuals", peaks):
                calibration = quantize.calibration_photos(
                    train_refs, backbone.image_size, options.seed
                )
                residuals = quantize.feature_residuals(
                    backbone_onnx, calibration, int8_method, settings.ort_intra_op_threads
                )
            mlflow.log_params({"int8_aware_guard": True, "int8_residual_photos": len(residuals)})
        targets = None  # with a teacher: its soft targets (skin_mlops.modeling.distill)
        if options.distils:
            with timed(timings, "distillation", peaks):
                teacher = distill.teacher_features(
                    options, settings, train_refs, val_refs, progress, {},  # in "distillation"
                    backbone=teacher_backbone,
                )  # fmt: skip
                targets, teacher_f1 = distill.teach(
                    teacher, slice(None), y_train, len(labels), options, progress
                )
                del teacher
            mlflow.log_metric("teacher_oof_macro_f1", teacher_f1)
        with timed(timings, "head_training", peaks):
            heads, history = train_heads(
                train_features,
                y_train,
                val_features[:, :1],  # per-epoch curves: centre view
                y_val,
                len(labels),
                options,
                progress,
                targets,
            )
        # 5. optional fine-tuning of the backbone's top, on the cached activation maps
        if split:
            with timed(timings, "fine_tuning", peaks):
                fine_tuned, fine_tune_history = fine_tune_on_maps(
                    split,
                    backbone.model,
                    heads,
                    train_table.features,
                    y_train,
                    val_table.features[:, 0],
                    y_val,
                    len(labels),
                    options,
                    progress,
                )
                history.update(fine_tune_history)
            inference_net = fine_tuned
            inference_inputs = [
                val_table.features[:, v].reshape(len(val_refs), *split.map_shape)
                for v in range(options.tta_views)
            ]
        else:
            inference_net = None
            inference_inputs = []
        # what the exported graph computes: the mean logits over heads and TTA views
        if inference_net is not None:
            val_logits = np.mean(
                [export.keras_logits(inference_net, x, batch_size=64) for x in inference_inputs],
                axis=0,
            )
        else:
            val_logits = stages.ensemble_logits(heads, val_features)

        # the out-of-distribution guard, on the pooled features the exported graph computes
        with timed(timings, "ood_guard", peaks):
            if split:  # after fine-tuning the top's features changed: pool the maps again
                guard_train = pool_maps(split.top, train_table.features, split.map_shape)
                guard_val = pool_maps(split.top, val_table.features[:, :1], split.map_shape)[:, 0]
            else:
                guard_train, guard_val = train_features, val_features[:, 0]
            guard = stages.fit_ood_guard(
                guard_train, y_train, len(labels), options, console, residuals
            )
            del guard_train
        model = export.compose_model(
            backbone.model, heads, backbone.image_size, tta_views=options.tta_views, guard=guard
        )

        # 6. evaluation and calibration
        with timed(timings, "evaluation", peaks):
            evaluation = evaluate.evaluate_logits(val_logits, y_val, labels)
            metrics = evaluation.as_metrics()
            metrics["train_accuracy_final"] = history["train_accuracy"][-1]
            # Each label's share of the training photos: the API exports them so an alert can
            # compare what it is asked to classify with what the model learned from.
            for index, label in enumerate(labels):
                metrics[f"train_share_{label}"] = float(np.mean(y_train == index))
            if guard is not None:
                val_scores = guard.scores(guard_val)
                metrics.update(
                    ood_threshold=guard.threshold,
                    ood_heldout_pass_rate=guard.heldout_pass_rate,
                    val_ood_flagged_rate=float(np.mean(val_scores > guard.threshold)),
                )
            plots = stages.write_plots(evaluation, history, labels)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(plots), artifact_path="plots")
        stages.log_predictions(
            val_records,
            val_logits,
            labels,
            evaluation.temperature,
            stages.VAL_PREDICTIONS_ARTIFACT,
        )
        mlflow.log_dict(
            {
                "labels": labels,
                "rows": "true label",
                "columns": "predicted label",
                "matrix": evaluation.report.confusion.tolist(),
            },
            "evaluation/confusion_matrix.json",
        )

        # 7. export (written to a staging folder, checked)
        with timed(timings, "export", peaks):
            parity_pixels = np.stack(
                [
                    preprocessing.preprocess_bytes(ref.load(), backbone.image_size)
                    for ref in val_refs[:PARITY_IMAGES]
                ]
            )
            keras_parity_logits, keras_parity_ood = export.keras_outputs(model, parity_pixels)
            stages.check_cache_consistency(keras_parity_logits, val_logits[:PARITY_IMAGES])
            signature = stages.export_signature(
                backbone, labels, evaluation.temperature, guard, metrics, export_version, run_id
            )
            staging = export_format.new_version_dir(Path(settings.model_dir), export_version)
            try:
                fast_onnx = backbone_onnx is not None and options.tta_views == 1
                result = export.write_export(
                    model,
                    signature,
                    staging,
                    parity_pixels,
                    reference_logits=keras_parity_logits,
                    reference_ood=keras_parity_ood,
                    backbone_onnx=backbone_onnx if fast_onnx else None,
                    heads=(
                        export.heads_model(heads, backbone.feature_dim, guard)
                        if fast_onnx
                        else None
                    ),
                )
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        parity: ParityReport = result.parity
        mlflow.log_metrics(
            {
                "onnx_parity_max_abs_prob_diff": parity.max_abs_prob_diff,
                "onnx_parity_max_abs_logit_diff": parity.max_abs_logit_diff,
            }
        )
        if int8:  # 7b. the int8 twin, kept only past its quality gate (metrics: int8_*)
            with timed(timings, "int8", peaks):
                quantize.quantize_in_training(
                    staging,
                    train_refs,
                    val_refs,
                    y_val,
                    backbone.image_size,
                    seed=options.seed,
                    settings=settings,
                    console=console,
                    method=int8_method,
                    calibration=calibration,
                )

        # 8. tracking: models, metadata, registry; the export uploaded
        with timed(timings, "tracking", peaks):
            registered, export_uri = tracking.log_export(
                model,
                staging,
                with_ood=guard is not None,
                val_macro_f1=evaluation.report.macro_f1,
                settings=settings,
                store=store,
                run_id=run_id,
                export_version=export_version,
            )

        # 9. promotion: the champion re-scored on these val photos; a new champion published
        with timed(timings, "promotion", peaks):
            try:
                if promote:
                    val_bytes = {ref.sha256: ref.load for ref in val_refs}
                    decision = registry.promote_if_better(
                        settings.registered_model_name,
                        registered,
                        evaluation.report.macro_f1,
                        rescore=SamePhotoScorer(
                            val_set, lambda photo: val_bytes[photo.sha256](), settings
                        ),
                        min_delta=settings.promotion_min_delta if min_delta is None else min_delta,
                        tracking_uri=settings.mlflow_tracking_uri,
                        publish=lambda: export.publish_export(result, Path(settings.model_dir)),
                    )
                else:
                    decision = registry.ChampionDecision.deferred(
                        settings.registered_model_name, registered, evaluation.report.macro_f1
                    )
            finally:  # published: renamed into runs/skin5/; otherwise (or on error): dropped
                shutil.rmtree(staging, ignore_errors=True)
            registry.log_decision(
                mlflow.MlflowClient(settings.mlflow_tracking_uri), run_id, decision
            )
            published = decision.published_dir
        timings["total"] = round(time.perf_counter() - started, 3)
        mlflow.log_metrics(
            {
                **{f"time_{k}_s": v for k, v in timings.items()},
                **{f"peak_rss_mb_after_{k}": v for k, v in peaks.items()},
                "peak_rss_mb": stages.peak_rss_mb(),
                "peak_rss_mb_child_processes": stages.peak_rss_children_mb(),
            }
        )

    training_result = TrainingResult(
        run_id=run_id,
        experiment_id=experiment_id,
        model_name=decision.model_name,
        model_version=decision.version,
        export_version=export_version,
        promoted=decision.promoted,
        decision=decision.summary,
        metrics=metrics,
        temperature=evaluation.temperature,
        published_dir=published,
        export_uri=export_uri,
        dataset_fingerprint=fingerprint,
        features_extracted=extracted,
        features_reused=reused,
        parity_max_abs_prob_diff=parity.max_abs_prob_diff,
        timings=timings,
        peak_rss_mb=peaks,
        val_leaked_excluded=len(val_found) - len(val_records),
    )
    shutil.rmtree(plots, ignore_errors=True)
    return training_result
