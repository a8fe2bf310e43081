"""``skin-mlops cv``: k-fold cross-validation of the training recipe over train + val.

The val split of dermnet5 has 129 photos: about +-0.04 of macro-F1 is noise, so it cannot
choose between recipes. Cross-validation scores the recipe on every photo instead:

1. **data** - every present row of ``train`` and ``val`` (one photo per SHA-256: the same
   bytes in two splits count once), checked like training does
   (:func:`skin_mlops.modeling.data.load_records`);
2. **groups** - photos linked by perceptual near-duplicates (the same picture re-saved,
   :mod:`skin_mlops.modeling.near_duplicates`) share a group; scikit-learn's
   ``StratifiedGroupKFold`` keeps every group inside one fold, so no copy of a held-out
   photo is trained on;
3. **per fold** (one MLflow child run each, ``fold`` 1..k) - the *training stages*
   themselves (:mod:`skin_mlops.modeling.stages`: the same cached features, views, heads,
   TTA averaging, temperature fitted on the held-out photos as ``train`` fits it on val):
   held-out accuracy, macro-F1, per-class F1, ECE before/after scaling, and the held-out
   photos' SHA-256 (``cv/heldout_photos.json``);
4. **summary** on the parent run: mean and standard deviation over folds of each metric
   (``cv_<metric>_mean`` / ``_std``), the pooled out-of-fold metrics of all photos
   (``oof_*``: ECE on the whole set has a much lower noise floor than a fold's), and a
   PNG (per-fold macro-F1, per-class F1 mean +- std).

With ``--fine-tune-layers N`` the cache holds the activation maps at the cut
(:func:`skin_mlops.modeling.fine_tune.split_backbone`) once for all folds; each fold starts
the backbone's top from its ImageNet weights, trains the heads, fine-tunes the top and the
heads on the fold's own maps (as ``train`` does), and pools its held-out maps through that
fold's top.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from skin_mlops.core.config import Settings, get_settings
from skin_mlops.core.errors import ConfigError
from skin_mlops.dataset_config import load_dataset_config
from skin_mlops.modeling import distill, fine_tune, stages
from skin_mlops.modeling.data import (
    TRAIN_SPLIT,
    VAL_SPLIT,
    ImageFetcher,
    dataset_fingerprint,
    image_refs,
    label_indices,
    load_records,
)
from skin_mlops.modeling.features import DIHEDRAL_VIEWS
from skin_mlops.modeling.heads import make_progress, train_heads
from skin_mlops.modeling.options import TrainingOptions

if TYPE_CHECKING:
    from skin_mlops.metadata import LesionRecord
    from skin_mlops.modeling.backbones import Backbone
    from skin_mlops.storage import ObjectStore

DEFAULT_FOLDS = 5
#: the per-fold metrics summarised on the parent run (``val_`` prefix of a training run)
SUMMARISED = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "ece_before_scaling",
    "ece_after_scaling",
)


@dataclass(frozen=True)
class FoldResult:
    """One fold's held-out metrics (``val_*`` names, as a training run logs them)."""

    fold: int
    run_id: str
    n_train: int
    n_heldout: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class CrossValidationResult:
    """What one :func:`cross_validate` produced (the parent run and its folds)."""

    run_id: str
    folds: list[FoldResult]
    summary: dict[str, float]
    n_photos: int
    n_groups: int
    labels: list[str]
    timings: dict[str, float] = field(default_factory=dict)


def unique_photos(records: dict[str, list[LesionRecord]]) -> list[LesionRecord]:
    """Train then val rows, one per SHA-256 (a photo in both splits is one photo)."""
    seen: set[str] = set()
    rows = []
    for row in records[TRAIN_SPLIT] + records[VAL_SPLIT]:
        if row.sha256 not in seen:
            seen.add(row.sha256)
            rows.append(row)
    return rows


def fold_assignment(
    labels: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fit rows, held-out rows)`` per fold: stratified by label, groups kept whole.

    Raises:
        ConfigError: a label with fewer photos than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    counts = np.bincount(labels)
    if folds < 2:
        raise ConfigError(f"--folds must be at least 2 (got {folds})")
    if counts.min() < folds:
        raise ConfigError(
            f"{folds}-fold cross-validation needs at least {folds} photos of every label "
            f"(the smallest has {int(counts.min())}); use fewer --folds"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def summarise(folds: list[FoldResult], labels: list[str]) -> dict[str, float]:
    """``cv_<metric>_mean`` / ``cv_<metric>_std`` over folds (per-class F1 included)."""
    names = [*SUMMARISED, *(f"f1_{label}" for label in labels)]
    summary = {}
    for name in names:
        values = np.array([fold.metrics[f"val_{name}"] for fold in folds])
        summary[f"cv_{name}_mean"] = float(values.mean())
        summary[f"cv_{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def cross_validate(
    dataset_config: Path | str | None = None,
    *,
    settings: Settings | None = None,
    options: TrainingOptions | None = None,
    folds: int = DEFAULT_FOLDS,
    backbone: Backbone | None = None,
    store: ObjectStore | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    teacher_backbone: Backbone | None = None,
) -> CrossValidationResult:
    """Cross-validate the training recipe (see the module docstring); log it to MLflow.

    Raises:
        SkinMlopsError: anything a user can fix, as one line (no ingested data, too few
            photos for the folds, MLflow or the store unreachable).
    """
    import mlflow

    from skin_mlops.modeling import evaluate, near_duplicates, tracking
    from skin_mlops.modeling.onnx_backbone import convert_in_child_process
    from skin_mlops.storage import make_object_store

    stages.quiet_libraries()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    settings = settings or get_settings()
    options = options or TrainingOptions()
    console = console or Console()
    config = load_dataset_config(dataset_config or settings.dataset_config)
    labels = list(config.labels)

    with stages.timed(timings, "checks"):
        rows = unique_photos(load_records(config))
        experiment_id = tracking.connect(settings)
        store = store or make_object_store(settings)
    fetch = ImageFetcher(store, config.storage.bucket, settings.dataset_cache_dir)
    refs, y = image_refs(rows, fetch), label_indices(rows, config.label_to_index)
    with stages.timed(timings, "near_duplicates"):
        cache = near_duplicates.PhashCache(settings.feature_cache_dir)
        hashes = cache.hashes([(ref.sha256, ref.load) for ref in refs])
        groups = near_duplicates.duplicate_groups(hashes)
    splits = fold_assignment(y, groups, folds, options.seed)
    n_groups = len(set(groups.tolist()))
    if backbone is None:  # before TensorFlow is imported here, as train does
        with stages.timed(timings, "backbone_conversion"):
            convert_in_child_process(options, settings)
    if options.distils and teacher_backbone is None:
        with stages.timed(timings, "backbone_conversion"):
            distill.prepare_teacher(options, settings)
    import keras

    with stages.timed(timings, "backbone"):
        backbone = backbone or stages.build_run_backbone(options, settings)

    progress = make_progress(console, show_progress)
    results: list[FoldResult] = []
    heldout_logits = np.zeros((len(rows), len(labels)), np.float32)
    heldout_top1 = np.zeros((len(rows), DIHEDRAL_VIEWS), np.int64)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"cv {folds}-fold") as parent:
        mlflow.set_tags({"stage": "cv", "dataset": config.dataset})
        tracking.log_params(
            {
                **options.params(),
                "folds": folds,
                "n_photos": len(rows),
                "n_groups": n_groups,
                "dataset": config.dataset,
                "dataset_fingerprint": dataset_fingerprint(rows),
                "backbone": backbone.name,  # as train logs it (the one actually built)
                "image_size": backbone.image_size,
                "backbone_weights_sha256": backbone.weights_sha256,
                "feature_dim": backbone.feature_dim,
            }
        )
        with progress:
            features = stages.frozen_features(
                backbone,
                refs,
                refs,
                options,
                settings,
                progress,
                timings,
                evaluation_dihedral_views=DIHEDRAL_VIEWS,
            )
            split = features.split
            pretrained_top = split.top.get_weights() if split else None
            if split:
                mlflow.log_param("fine_tune_cut", split.description)
            teacher = None
            if options.distils:  # the teacher's features once; its heads per fold
                with stages.timed(timings, "teacher_features"):
                    teacher = distill.teacher_features(
                        options, settings, refs, refs, progress, {}, backbone=teacher_backbone
                    )
            tta = options.tta_views
            for k, (fit_rows, held_rows) in enumerate(splits, start=1):
                with (
                    stages.timed(timings, "folds"),
                    mlflow.start_run(
                        experiment_id=experiment_id, run_name=f"fold {k}/{folds}", nested=True
                    ) as child,
                ):
                    keras.utils.set_random_seed(options.seed)
                    targets, teacher_metrics = None, {}
                    if teacher is not None:  # taught on this fold's training photos only
                        targets, teacher_f1 = distill.teach(
                            teacher, fit_rows, y[fit_rows], len(labels), options, progress
                        )
                        teacher_metrics = {"teacher_oof_macro_f1": teacher_f1}
                    heads, _ = train_heads(
                        features.train[fit_rows],
                        y[fit_rows],
                        features.evaluation[held_rows][:, :1],
                        y[held_rows],
                        len(labels),
                        options,
                        progress,
                        targets,
                    )
                    if split is None:
                        held = features.evaluation[held_rows]
                    else:  # this fold's own fine-tuned top, from the ImageNet weights
                        with stages.timed(timings, "fine_tuning"):
                            held = fine_tune.fine_tune_fold(
                                split,
                                pretrained_top,
                                backbone,
                                heads,
                                features,
                                fit_rows,
                                held_rows,
                                y,
                                len(labels),
                                options,
                                progress,
                            )
                    logits = stages.ensemble_logits(heads, held[:, :tta])
                    heldout_logits[held_rows] = logits
                    heldout_top1[held_rows] = stages.dihedral_top1(heads, held, tta)
                    metrics = {
                        **evaluate.evaluate_logits(logits, y[held_rows], labels).as_metrics(),
                        **stages.dihedral_agreement(heldout_top1[held_rows], prefix="val_"),
                        **teacher_metrics,
                    }
                    mlflow.set_tags({"stage": "cv-fold", "fold": str(k)})
                    mlflow.log_params(
                        {"fold": k, "n_train": len(fit_rows), "n_heldout": len(held_rows)}
                    )
                    mlflow.log_metrics(metrics)
                    mlflow.log_dict(
                        {"heldout_sha256": [rows[i].sha256 for i in held_rows]},
                        "cv/heldout_photos.json",
                    )
                    results.append(
                        FoldResult(k, child.info.run_id, len(fit_rows), len(held_rows), metrics)
                    )
                    keras.backend.clear_session()
        if split is not None and pretrained_top is not None:
            split.top.set_weights(pretrained_top)  # leave the backbone as it came
        summary = summarise(results, labels)
        if teacher is not None:
            taught = [fold.metrics["teacher_oof_macro_f1"] for fold in results]
            summary["cv_teacher_oof_macro_f1_mean"] = float(np.mean(taught))
            del teacher
        pooled = evaluate.evaluate_logits(heldout_logits, y, labels)
        summary.update(pooled.as_metrics(prefix="oof_"))
        summary.update(stages.dihedral_agreement(heldout_top1, prefix="oof_"))
        summary.pop("temperature", None)
        summary["oof_temperature"] = pooled.temperature
        timings["total"] = round(time.perf_counter() - started, 3)
        mlflow.log_metrics(
            {
                **summary,
                **{f"time_{k}_s": v for k, v in timings.items()},
                "peak_rss_mb": stages.peak_rss_mb(),
                "peak_rss_mb_child_processes": stages.peak_rss_children_mb(),
            }
        )
        stages.log_predictions(
            rows, heldout_logits, labels, pooled.temperature, stages.OOF_PREDICTIONS_ARTIFACT
        )
        with tempfile.TemporaryDirectory(prefix="skin-cv-plots-") as folder:
            plot_cv(results, summary, labels, Path(folder) / "cv_summary.png")
            mlflow.log_artifacts(folder, artifact_path="plots")
    return CrossValidationResult(
        parent.info.run_id, results, summary, len(rows), n_groups, labels, timings
    )


def plot_cv(
    folds: list[FoldResult], summary: dict[str, float], labels: list[str], path: Path
) -> Path:
    """Per-fold held-out macro-F1, and per-class F1 mean +- std over folds."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4))
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    left.bar([f"fold {f.fold}" for f in folds], [f.metrics["val_macro_f1"] for f in folds])
    mean = summary["cv_macro_f1_mean"]
    left.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
    left.set_ylim(0, 1)
    left.set_title("held-out macro-F1 per fold")
    left.legend(loc="lower right")
    right.bar(
        range(len(labels)),
        [summary[f"cv_f1_{label}_mean"] for label in labels],
        yerr=[summary[f"cv_f1_{label}_std"] for label in labels],
        capsize=4,
    )
    right.set_xticks(range(len(labels)), [label.replace("_", "\n") for label in labels])
    right.set_ylim(0, 1)
    right.set_title("per-class F1, mean +- std over folds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path
