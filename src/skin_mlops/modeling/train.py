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
9. **promotion** - the gate (:func:`skin_mlops.modeling.tracking.promote_if_better`):
   the current champion is re-scored on this run's val photos and ``champion`` moves only
   when this run's val macro-F1 beats it by ``PROMOTION_MIN_DELTA`` (0.01); a new
   champion is published atomically to ``settings.model_dir`` (``runs/skin5-current``)
   while the gate still holds the store's lock.

TensorFlow, Keras and MLflow are imported inside functions: ``skin_mlops.cli`` imports
this module at start and must stay fast.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from skin_mlops import preprocessing
from skin_mlops.core.cli_options import DatasetConfigOption
from skin_mlops.core.config import Settings, get_settings
from skin_mlops.core.errors import ConfigError, DataError
from skin_mlops.core.files import atomic_write_bytes
from skin_mlops.dataset_config import DatasetConfig, load_dataset_config

if TYPE_CHECKING:
    import keras

    from skin_mlops import export_format
    from skin_mlops.metadata import LesionRecord
    from skin_mlops.modeling.backbones import Backbone
    from skin_mlops.modeling.evaluate import Evaluation
    from skin_mlops.modeling.export import ParityReport
    from skin_mlops.modeling.ood import OodGuard
    from skin_mlops.storage import ObjectStore

TRAIN_SPLIT = "train"
VAL_SPLIT = "val"

# The default recipe, measured on dermnet5 (687 train / 129 val photos, 2-core CPU):
# Lite0 at 288 px, GAP of the head + blocks 6/5/4 ("multi", 1664 features), 12 cached views
# per training photo, MLP-512 head, no fine-tuning: val accuracy 0.822, macro-F1 0.807 in
# 3.9 min cold. The 224 px / avg+mid / fine-tuned block7a variant reached 0.783 / 0.773.
# See benchmarks/quality_study.py and benchmarks/train_benchmark.py.
DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_IMAGE_SIZE = 288
DEFAULT_VIEWS = 12
DEFAULT_EPOCHS = 30
DEFAULT_BATCH_SIZE = 32
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_HIDDEN_UNITS = 512
DEFAULT_INPUT_DROPOUT = 0.2
DEFAULT_DROPOUT = 0.5
DEFAULT_LABEL_SMOOTHING = 0.1
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_SEED = 42
DEFAULT_TTA_VIEWS = 1
DEFAULT_HEADS = 1
DEFAULT_POOLING = "multi"
DEFAULT_FINE_TUNE_LAYERS = 0  # off by default; e.g. 8 = Lite0 block7a + top conv
DEFAULT_FINE_TUNE_EPOCHS = 5
DEFAULT_OOD_PASS_RATE = 0.95
FINE_TUNE_LR_FACTOR = 0.1
PARITY_IMAGES = 16
HEAD_STEPS_PER_EXECUTION = 16

log = logging.getLogger(__name__)


# --- options and result ---------------------------------------------------------------


@dataclass(frozen=True)
class TrainingOptions:
    """Hyper-parameters of one run (all logged as MLflow params)."""

    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float = DEFAULT_LEARNING_RATE
    backbone: str = DEFAULT_BACKBONE
    backbone_options: tuple[tuple[str, str], ...] = (("pooling", DEFAULT_POOLING),)
    image_size: int = DEFAULT_IMAGE_SIZE
    views: int = DEFAULT_VIEWS
    hidden_units: int = DEFAULT_HIDDEN_UNITS
    input_dropout: float = DEFAULT_INPUT_DROPOUT
    dropout: float = DEFAULT_DROPOUT
    label_smoothing: float = DEFAULT_LABEL_SMOOTHING
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    heads: int = DEFAULT_HEADS
    tta_views: int = DEFAULT_TTA_VIEWS
    fine_tune_layers: int = DEFAULT_FINE_TUNE_LAYERS
    fine_tune_epochs: int = DEFAULT_FINE_TUNE_EPOCHS
    seed: int = DEFAULT_SEED
    # keep val photos whose bytes are also training photos (default: excluded, counted)
    keep_leaked_val: bool = False
    # share of held-out in-distribution photos the out-of-distribution guard lets pass
    ood_pass_rate: float = DEFAULT_OOD_PASS_RATE

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (self.learning_rate > 0, f"--learning-rate must be > 0 (got {self.learning_rate})"),
            (1 <= self.views <= 64, f"--views must be between 1 and 64 (got {self.views})"),
            (1 <= self.heads <= 16, f"--heads must be between 1 and 16 (got {self.heads})"),
            (
                self.tta_views in (1, 2, 4, 8),
                f"--tta-views must be 1, 2, 4 or 8 (got {self.tta_views})",
            ),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1) (got {self.dropout})"),
            (
                0 <= self.input_dropout < 1,
                f"input dropout must be in [0, 1) (got {self.input_dropout})",
            ),
            (self.hidden_units >= 0, f"hidden units must be >= 0 (got {self.hidden_units})"),
            (
                0 <= self.label_smoothing < 1,
                f"label smoothing must be in [0, 1) (got {self.label_smoothing})",
            ),
            (
                self.fine_tune_layers >= 0,
                f"--fine-tune-layers must be >= 0 (got {self.fine_tune_layers})",
            ),
            (
                self.fine_tune_epochs >= 1,
                f"--fine-tune-epochs must be >= 1 (got {self.fine_tune_epochs})",
            ),
            (
                0.5 <= self.ood_pass_rate < 1,
                f"--ood-pass-rate must be in [0.5, 1) (got {self.ood_pass_rate})",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def fine_tune_learning_rate(self) -> float:
        """The fine-tuning stage's (lower) learning rate."""
        return self.learning_rate * FINE_TUNE_LR_FACTOR

    @property
    def backbone_options_key(self) -> str:
        """``k=v,...`` of the backbone build options (part of the feature-cache key)."""
        return ",".join(f"{k}={v}" for k, v in self.backbone_options)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> TrainingOptions:
        """Options back from a run's MLflow params (strings), to reproduce it."""
        values: dict[str, Any] = {}
        for item in fields(cls):
            if item.name not in params:
                continue
            raw = params[item.name]
            if item.name == "backbone_options":
                values[item.name] = tuple(
                    tuple(pair.split("=", 1)) for pair in raw.split(",") if "=" in pair
                )
            elif item.type in ("bool", bool):
                values[item.name] = raw.strip().lower() in ("true", "1")
            elif item.type in ("int", int):
                values[item.name] = int(raw)
            elif item.type in ("float", float):
                values[item.name] = float(raw)
            else:
                values[item.name] = raw
        return cls(**values)

    def params(self) -> dict[str, Any]:
        """Flat MLflow params."""
        params = asdict(self)
        params["backbone_options"] = self.backbone_options_key or "default"
        params["fine_tune_learning_rate"] = (
            self.fine_tune_learning_rate if self.fine_tune_layers else None
        )
        if not self.fine_tune_layers:
            params.pop("fine_tune_epochs")
        return params


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
    val_leaked_excluded: int = 0  # val photos left out: their bytes are training photos


# --- data -------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def dataset_fingerprint(records: Sequence[LesionRecord]) -> str:
    """SHA-256 of the sorted image hashes (with split and label: a relabel changes it)."""
    lines = sorted(f"{r.sha256} {r.split} {r.label}" for r in records)
    return sha256_bytes("\n".join(lines).encode())


def load_records(config: DatasetConfig) -> dict[str, list[LesionRecord]]:
    """The usable rows of ``lesions_data`` by split, checked against the config.

    Raises:
        DataError: no DB / no rows (run ingestion first), a label not in the config, an
            empty split or a label without training images.
    """
    from skin_mlops.metadata import read_lesions

    for split in (TRAIN_SPLIT, VAL_SPLIT):
        if split not in config.splits:
            raise ConfigError(
                f"dataset config {config.source or ''} has no {split!r} split "
                f"(training needs {TRAIN_SPLIT!r} and {VAL_SPLIT!r})"
            )
    records = read_lesions(
        config.metadata_db, dataset=config.dataset, splits=[TRAIN_SPLIT, VAL_SPLIT]
    )
    if not records:
        raise DataError(
            f"no images of dataset {config.dataset!r} in the metadata DB "
            f"{config.metadata_db}: run `skin-mlops ingest` first"
        )
    unknown = sorted({r.label for r in records} - set(config.labels))
    if unknown:
        raise DataError(
            f"label(s) {', '.join(unknown)} in the metadata DB are not in the dataset config "
            f"labels ({', '.join(config.labels)}); add them to the config or re-ingest"
        )
    by_split = {
        split: [r for r in records if r.split == split] for split in (TRAIN_SPLIT, VAL_SPLIT)
    }
    for split, rows in by_split.items():
        if not rows:
            raise DataError(
                f"no {split!r} images in the metadata DB: run `skin-mlops ingest` "
                f"with --splits {TRAIN_SPLIT} {VAL_SPLIT}"
            )
    missing = [
        label for label in config.labels if not any(r.label == label for r in by_split[TRAIN_SPLIT])
    ]
    if missing:
        raise DataError(f"label(s) {', '.join(missing)} have no training images")
    return by_split


def split_leaked_val(
    train_records: Sequence[LesionRecord], val_records: Sequence[LesionRecord]
) -> tuple[list[LesionRecord], list[LesionRecord]]:
    """``(clean, leaked)`` val rows: leaked ones have the bytes (SHA-256) of a training photo.

    The same definition as ingestion's "leakage" (same bytes in two splits; the same
    bytes under two labels are conflicts, which never reach training).
    """
    train_hashes = {r.sha256 for r in train_records}
    clean = [r for r in val_records if r.sha256 not in train_hashes]
    leaked = [r for r in val_records if r.sha256 in train_hashes]
    return clean, leaked


def split_near_duplicate_val(
    train_records: Sequence[LesionRecord],
    val_records: Sequence[LesionRecord],
    load: Callable[[LesionRecord], bytes],
    cache_dir: Path,
    max_distance: int | None = None,
) -> tuple[list[LesionRecord], list[LesionRecord]]:
    """``(clean, near)`` val rows: near ones are perceptual duplicates of a training photo
    (the same picture with other bytes: re-encoded, resized, turned or mirrored).

    pHashes (:mod:`skin_mlops.modeling.near_duplicates`, within
    ``DEFAULT_MAX_DISTANCE`` bits in any orientation) are cached by SHA-256 in
    ``cache_dir/phash.sqlite``, so a rerun decodes nothing.
    """
    from skin_mlops.modeling import near_duplicates

    if not val_records or not train_records:
        return list(val_records), []
    cache = near_duplicates.PhashCache(cache_dir)

    def hashes(rows: Sequence[LesionRecord]) -> np.ndarray:
        return cache.hashes([(r.sha256, functools.partial(load, r)) for r in rows])

    near = near_duplicates.near_duplicates_of(
        hashes(val_records),
        hashes(train_records),
        near_duplicates.DEFAULT_MAX_DISTANCE if max_distance is None else max_distance,
    )
    return (
        [r for r, hit in zip(val_records, near, strict=True) if not hit],
        [r for r, hit in zip(val_records, near, strict=True) if hit],
    )


class ImageFetcher:
    """Bytes of an ingested image: local file, else local cache, else the object store.

    Every byte string is checked against the row's SHA-256; downloads are cached under
    ``cache_dir/<sha[:2]>/<sha>`` (written atomically).
    """

    def __init__(self, store: ObjectStore, bucket: str, cache_dir: Path) -> None:
        self.store = store
        self.bucket = bucket
        self.cache_dir = Path(cache_dir)
        self.downloaded = 0

    def cache_path(self, sha256: str) -> Path:
        """Where a downloaded image is kept."""
        return self.cache_dir / sha256[:2] / sha256

    def __call__(self, record: LesionRecord) -> bytes:
        """The verified bytes of ``record``.

        Raises:
            StorageError: the object store failed. DataError: the object's bytes do not
                match the recorded SHA-256.
        """
        return self.fetch(record.sha256, record.object_key, record.source_path)

    def fetch(self, sha256: str, object_key: str, source_path: str | None = None) -> bytes:
        """The verified bytes of the image ``sha256`` stored at ``object_key``."""
        for path in (
            Path(source_path) if source_path else None,
            self.cache_path(sha256),
        ):
            if path is not None and path.is_file():
                data = path.read_bytes()
                if sha256_bytes(data) == sha256:
                    return data
        data = self.store.get_bytes(self.bucket, object_key)
        if sha256_bytes(data) != sha256:
            raise DataError(
                f"object {self.bucket}/{object_key} does not match its SHA-256 in the "
                "metadata DB (re-run `skin-mlops ingest`)"
            )
        target = self.cache_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        # No fsync: an entry lost to a power cut fails its SHA-256 check and is fetched again.
        atomic_write_bytes(target, data, fsync=False)
        self.downloaded += 1
        return data


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """``n / (K * count_k)`` per class (scikit-learn's "balanced"): rare classes weigh more."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return {
        k: float(len(labels) / (num_classes * counts[k])) if counts[k] else 0.0
        for k in range(num_classes)
    }


# --- progress -----------------------------------------------------------------------------


def make_progress(console: Console, enabled: bool = True) -> Progress:
    """The rich progress used for extraction, epochs and export."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not enabled,
    )


def _epoch_callback(progress: Progress, task: Any, name: str, prefix: str = "") -> Any:
    """A Keras callback: advance the rich bar and log epoch metrics to MLflow.

    MLflow names: ``<prefix>train_loss``, ``<prefix>train_accuracy``, ``<prefix>val_loss``,
    ``<prefix>val_accuracy`` with ``step`` = epoch (1-based).
    """
    import keras
    import mlflow

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            metrics = {
                f"{prefix}train_loss": logs.get("loss"),
                f"{prefix}train_accuracy": logs.get("accuracy"),
                f"{prefix}val_loss": logs.get("val_loss"),
                f"{prefix}val_accuracy": logs.get("val_accuracy"),
            }
            logged = {k: float(v) for k, v in metrics.items() if v is not None}
            if mlflow.active_run() is not None:
                mlflow.log_metrics(logged, step=epoch + 1)
            progress.update(
                task,
                advance=1,
                description=(
                    f"{name} loss {logs.get('loss', 0):.3f} "
                    f"val_acc {logs.get('val_accuracy', 0):.3f}"
                ),
            )

    return EpochProgress()


# --- model pieces ---------------------------------------------------------------------------


def feature_variance_floor(variance: np.ndarray) -> np.ndarray:
    """Per-feature variances for ``Normalization``, none under 1 % of the median one.

    A backbone feature (almost) never active on the training photos has a variance near 0;
    dividing by its square root would scale it by up to ~1e5 on a photo where it is active,
    so one such photo gets logits of ~1e4, and temperature scaling can only answer with a
    uniform distribution. The floor bounds that scale to 10x a typical feature's.
    """
    positive = variance[variance > 0]
    typical = float(np.median(positive)) if positive.size else 1.0
    return np.maximum(variance, max(1e-2 * typical, 1e-12))


def build_head(
    train_features: np.ndarray, num_classes: int, options: TrainingOptions, member: int = 0
) -> keras.Model:
    """The classifier on top of the pooled features.

    ``Normalization`` (per-feature mean/variance of the training features, frozen into
    the graph) -> ``Dropout(input_dropout)`` -> [``Dense(hidden_units, relu)`` ->
    ``Dropout(dropout)``] -> ``Dense(K)`` (``class_logits``).

    Args:
        train_features (np.ndarray): ``[..., D]`` training features (for the statistics).
        num_classes (int): ``K``.
        options (TrainingOptions): head sizes and dropout rates; ``hidden_units=0`` gives
            a linear (multinomial logistic) head.
        member (int): index in the ensemble (layer names and seeds differ per member).
    """
    import keras

    flat = train_features.reshape(-1, train_features.shape[-1]).astype(np.float64)
    features = keras.Input((flat.shape[1],), name=f"features_{member}")
    x = keras.layers.Normalization(
        mean=flat.mean(axis=0).astype(np.float32),
        variance=feature_variance_floor(flat.var(axis=0)).astype(np.float32),
        name=f"feature_norm_{member}",
    )(features)
    seed = options.seed + 1000 * member
    keras.utils.set_random_seed(seed)  # the member's initial weights
    x = keras.layers.Dropout(options.input_dropout, seed=seed, name=f"input_dropout_{member}")(x)
    if options.hidden_units:
        x = keras.layers.Dense(options.hidden_units, activation="relu", name=f"hidden_{member}")(x)
        x = keras.layers.Dropout(options.dropout, seed=seed + 1, name=f"hidden_dropout_{member}")(x)
    logits = keras.layers.Dense(num_classes, name=f"class_logits_{member}")(x)
    return keras.Model(features, logits, name=f"head_{member}")


def _compile(
    model: keras.Model,
    learning_rate: float,
    options: TrainingOptions,
    total_steps: int,
    steps_per_execution: int = 1,
) -> None:
    """AdamW with cosine decay over ``total_steps``; label-smoothed cross-entropy on logits.

    ``steps_per_execution`` > 1 runs several optimiser steps per graph call (the head's
    steps take microseconds of arithmetic; Python overhead per step dominates otherwise).
    """
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(total_steps, 1))
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=options.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=options.label_smoothing
        ),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=False,  # XLA on CPU is far slower for these graphs (see features.py)
        steps_per_execution=steps_per_execution,
    )


def _steps(n_samples: int, batch_size: int, epochs: int) -> int:
    return epochs * -(-n_samples // batch_size)


def feature_dataset(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
) -> Any:
    """A ``tf.data`` pipeline over cached features ``[N, V, D]`` (every view is a sample),
    one-hot labels."""
    import tensorflow as tf

    n, views, dim = features.shape
    x = features.reshape(n * views, dim)
    y = np.eye(num_classes, dtype=np.float32)[np.repeat(labels, views)]
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        dataset = dataset.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_head(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    options: TrainingOptions,
    progress: Progress,
    member: int = 0,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train one head on cached features; return it and its per-epoch history.

    MLflow per-epoch names: ``epoch_*`` for the first member, ``head<i>_epoch_*`` else.
    """
    head = build_head(train_features, num_classes, options, member)
    n_samples = train_features.shape[0] * train_features.shape[1]
    _compile(
        head,
        options.learning_rate,
        options,
        _steps(n_samples, options.batch_size, options.epochs),
        steps_per_execution=HEAD_STEPS_PER_EXECUTION,
    )
    name = "head" if options.heads == 1 else f"head {member + 1}/{options.heads}"
    task = progress.add_task(f"{name} epochs", total=options.epochs)
    fit = head.fit(
        feature_dataset(
            train_features,
            train_labels,
            num_classes,
            options.batch_size,
            shuffle=True,
            seed=options.seed + member,
        ),
        validation_data=feature_dataset(
            val_features, val_labels, num_classes, 256, shuffle=False, seed=options.seed
        ),
        epochs=options.epochs,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
        class_weight=class_weights(train_labels, num_classes),
        callbacks=[
            _epoch_callback(
                progress, task, name, prefix="epoch_" if member == 0 else f"head{member}_epoch_"
            )
        ],
        verbose=0,
    )
    return head, _history(fit.history)


def train_heads(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    options: TrainingOptions,
    progress: Progress,
) -> tuple[list[keras.Model], dict[str, list[float]]]:
    """Train ``options.heads`` heads (an ensemble averaged in the exported graph).

    Returns the heads and the first head's history (the others are logged to MLflow).
    """
    heads, histories = [], []
    for member in range(options.heads):
        head, history = train_head(
            train_features,
            train_labels,
            val_features,
            val_labels,
            num_classes,
            options,
            progress,
            member,
        )
        heads.append(head)
        histories.append(history)
    return heads, histories[0]


def _history(keras_history: dict[str, list[float]]) -> dict[str, list[float]]:
    names = {
        "loss": "train_loss",
        "accuracy": "train_accuracy",
        "val_loss": "val_loss",
        "val_accuracy": "val_accuracy",
    }
    return {
        names[k]: [float(v) for v in values] for k, values in keras_history.items() if k in names
    }


def render_images(
    refs: Sequence[Any], views: Sequence[str], size: int, progress: Progress, description: str
) -> np.ndarray:
    """uint8 pixel arrays ``[N * len(views), S, S, 3]`` (image-major) of cached views."""
    from skin_mlops.modeling.features import render_views

    out = np.empty((len(refs) * len(views), size, size, 3), dtype=np.uint8)
    task = progress.add_task(description, total=len(refs))
    for i, ref in enumerate(refs):
        for j, array in enumerate(render_views(ref.load(), ref.sha256, views, size)):
            out[i * len(views) + j] = array.astype(np.uint8)
        progress.advance(task)
    return out


@dataclass(frozen=True)
class BackboneSplit:
    """A backbone cut in two at a block boundary, for cached fine-tuning.

    ``bottom`` (frozen) maps images to the activation map at ``cut``; its outputs are
    cached like features. ``top`` maps that activation to the pooled features and holds
    every layer that fine-tuning unfreezes (its layers are the backbone's own objects, so
    training ``top`` trains the exported model).
    """

    bottom: Backbone
    top: keras.Model
    cut: str
    map_shape: tuple[int, ...]


def split_backbone(backbone: Backbone, fine_tune_layers: int) -> BackboneSplit:
    """Cut ``backbone`` just below its top ``fine_tune_layers`` weight-carrying layers.

    The cut is the last layer before them whose output alone determines the rest of the
    graph (a block boundary); found by trying to build the top sub-model from it.

    Raises:
        ConfigError: ``fine_tune_layers`` exceeds the backbone, or no cut exists.
    """
    import keras

    from skin_mlops.modeling.backbones import Backbone as BackboneType

    model = backbone.model
    weighted = [layer for layer in model.layers if layer.weights]
    if not 1 <= fine_tune_layers <= len(weighted):
        raise ConfigError(
            f"--fine-tune-layers must be between 1 and {len(weighted)} for {backbone.name} "
            f"(got {fine_tune_layers})"
        )
    first = model.layers.index(weighted[-fine_tune_layers])
    for candidate in reversed(model.layers[:first]):
        if isinstance(candidate, keras.layers.InputLayer):
            break
        try:
            top = keras.Model(candidate.output, model.output, name=f"{model.name}_top")
        except Exception:  # noqa: BLE001 - not a separating cut (a skip connection crosses)
            continue
        map_shape = tuple(int(d) for d in candidate.output.shape[1:])
        bottom_model = keras.Model(model.input, candidate.output, name=f"{model.name}_bottom")
        bottom = BackboneType(
            name=backbone.name,
            model=bottom_model,
            weights_sha256=backbone.weights_sha256,
            image_size=backbone.image_size,
            feature_dim=int(np.prod(map_shape)),
        )
        return BackboneSplit(bottom, top, candidate.name, map_shape)
    raise ConfigError(f"no block boundary below the top {fine_tune_layers} layers to cut at")


def pool_maps(top: keras.Model, maps: np.ndarray, map_shape: tuple[int, ...]) -> np.ndarray:
    """Pooled features ``[N, V, D]`` of cached activation maps ``[N, V, prod(map)]``."""
    n, views, _ = maps.shape
    flat = maps.reshape(n * views, *map_shape)
    out = [np.asarray(top(flat[i : i + 256], training=False)) for i in range(0, len(flat), 256)]
    return np.concatenate(out).reshape(n, views, -1)


def fine_tune_on_maps(
    split: BackboneSplit,
    backbone_model: keras.Model,
    heads: Sequence[keras.Model],
    train_maps: np.ndarray,
    train_labels: np.ndarray,
    val_maps: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    options: TrainingOptions,
    progress: Progress,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train the unfrozen top of the backbone and the heads on cached activation maps.

    Same maths as fine-tuning through the images (the frozen bottom's output is what is
    cached), without recomputing the bottom every epoch. BatchNorm stays frozen.

    Returns:
        The fine-tuning model (activation map -> logits) and its per-epoch history.
    """
    import keras
    import tensorflow as tf

    from skin_mlops.modeling.backbones import unfreeze_top_layers
    from skin_mlops.modeling.export import apply_heads

    unfrozen = unfreeze_top_layers(backbone_model, options.fine_tune_layers)
    if unfrozen == 0:
        raise ConfigError(f"--fine-tune-layers {options.fine_tune_layers} unfreezes nothing")
    maps = keras.Input(split.map_shape, name="activation_map")
    model = keras.Model(maps, apply_heads(split.top(maps), heads), name="fine_tune")
    n, views, _ = train_maps.shape
    _compile(
        model,
        options.fine_tune_learning_rate,
        options,
        _steps(n * views, options.batch_size, options.fine_tune_epochs),
        steps_per_execution=4,
    )
    one_hot = np.eye(num_classes, dtype=np.float32)
    train = (
        tf.data.Dataset.from_tensor_slices(
            (
                train_maps.reshape(n * views, *split.map_shape),
                one_hot[np.repeat(train_labels, views)],
            )
        )
        .shuffle(n * views, seed=options.seed, reshuffle_each_iteration=True)
        .batch(options.batch_size)
        .prefetch(2)
    )
    val = tf.data.Dataset.from_tensor_slices(
        (val_maps.reshape(len(val_maps), *split.map_shape), one_hot[val_labels])
    ).batch(256)
    task = progress.add_task("fine-tune epochs", total=options.fine_tune_epochs)
    fit = model.fit(
        train,
        validation_data=val,
        epochs=options.fine_tune_epochs,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
        class_weight=class_weights(np.repeat(train_labels, views), num_classes),
        callbacks=[_epoch_callback(progress, task, "fine-tune", prefix="finetune_epoch_")],
        verbose=0,
    )
    backbone_model.trainable = False
    return model, {f"finetune_{k}": v for k, v in _history(fit.history).items()}


# --- the stage ------------------------------------------------------------------------------


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 3)


def _quiet_libraries() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("mlflow", "alembic", "tf2onnx", "absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


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

    Returns:
        TrainingResult: run id, registry decision, metrics, export location, timings.

    Raises:
        SkinMlopsError: any problem a user can fix, as one line (see module docstring).
    """
    from skin_mlops import export_format
    from skin_mlops.modeling import evaluate, export, tracking
    from skin_mlops.modeling.features import (
        FeatureSpace,
        FeatureStore,
        ImageRef,
        dihedral_view_ids,
        extract_features,
    )
    from skin_mlops.modeling.promotion import VAL_SET_ARTIFACT, SamePhotoScorer, ValPhoto, ValSet
    from skin_mlops.storage import make_object_store

    _quiet_libraries()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    settings = settings or get_settings()
    options = options or TrainingOptions()
    console = console or Console()
    config = load_dataset_config(dataset_config or settings.dataset_config)
    labels = list(config.labels)
    label_index = config.label_to_index

    # 1. checks, before any heavy work
    with _timed(timings, "checks"):
        records = load_records(config)
        experiment_id = tracking.connect(settings)
        store = store or make_object_store(settings)
        store.ensure_bucket(settings.s3_models_bucket)
    import keras
    import mlflow

    # the requirements are pinned explicitly; MLflow still warns that the venv has no pip
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)

    # 2. data (val photos that are also training photos - the same bytes, or the same
    # picture re-saved - left out unless asked)
    train_records, val_found = records[TRAIN_SPLIT], records[VAL_SPLIT]
    fetch = ImageFetcher(store, config.storage.bucket, settings.dataset_cache_dir)
    clean_val, leaked_val = split_leaked_val(train_records, val_found)
    with _timed(timings, "near_duplicates"):
        clean_val, near_val = split_near_duplicate_val(
            train_records, clean_val, fetch, settings.feature_cache_dir
        )
    val_records = val_found if options.keep_leaked_val else clean_val
    if not val_records:
        raise DataError(
            f"all {len(val_found)} val photos are also training photos (the same bytes or "
            "the same picture: leakage); add distinct val photos, or train with "
            "--keep-leaked-val"
        )
    for count, what in (
        (len(leaked_val), "have the bytes of a training photo (leakage)"),
        (len(near_val), "are near-duplicates of a training photo (the same picture re-saved)"),
    ):
        if count:
            console.print(
                f"{count} val photo(s) {what}: "
                + (
                    "kept in val (--keep-leaked-val)"
                    if options.keep_leaked_val
                    else "left out of val (--keep-leaked-val keeps them)"
                ),
                style="yellow",
                highlight=False,
            )

    def refs(rows: Sequence[LesionRecord]) -> list[ImageRef]:
        return [
            ImageRef(r.sha256, functools.partial(fetch, r), r.source_path or r.object_key)
            for r in rows
        ]

    train_refs, val_refs = refs(train_records), refs(val_records)
    y_train = np.array([label_index[r.label] for r in train_records], dtype=np.int64)
    y_val = np.array([label_index[r.label] for r in val_records], dtype=np.int64)
    fingerprint = dataset_fingerprint(train_records + val_records)
    counts = Counter((r.split, r.label) for r in train_records + val_records)

    # the backbone (a missing weights file fails here, before a run is opened)
    with _timed(timings, "backbone"):
        if backbone is None:
            from skin_mlops.modeling.backbones import build_backbone

            backbone = build_backbone(
                options.backbone,
                image_size=options.image_size,
                weights_cache_dir=settings.weights_cache_dir,
                # str options (pooling=...), never image_size or include_top: mypy cannot
                # tell; build_backbone checks them per backbone
                **dict(options.backbone_options),  # type: ignore[arg-type]  # option keys only
            )

    keras.utils.set_random_seed(options.seed)
    progress = make_progress(console, show_progress)
    with mlflow.start_run(experiment_id=experiment_id) as run, progress:
        run_id = run.info.run_id
        export_version = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{run_id[:8]}"
        params: dict[str, Any] = {
            **options.params(),
            "dataset": config.dataset,
            "dataset_fingerprint": fingerprint,
            "labels": ",".join(labels),
            "preprocessing_id": preprocessing.PREPROCESSING_ID,
            "git_commit": tracking.git_commit(),
            "n_train": len(train_records),
            "n_val": len(val_records),
            **{
                f"count_{split}_{label}": counts[(split, label)]
                for split in (TRAIN_SPLIT, VAL_SPLIT)
                for label in labels
            },
        }
        mlflow.set_tags({"stage": "train", "dataset": config.dataset})
        mlflow.log_metrics(
            {
                "val_leaked": len(leaked_val),
                "val_near_duplicates": len(near_val),
                "val_leaked_excluded": len(val_found) - len(val_records),
            }
        )
        val_set = ValSet(
            dataset=config.dataset,
            bucket=config.storage.bucket,
            labels=tuple(labels),
            photos=tuple(
                ValPhoto(r.sha256, r.label, r.object_key, r.source_path or "") for r in val_records
            ),
        )
        mlflow.log_dict(val_set.as_dict(), VAL_SET_ARTIFACT)

        # 3. frozen features
        params.update(
            backbone=backbone.name,
            image_size=backbone.image_size,
            backbone_weights_sha256=backbone.weights_sha256,
            feature_dim=backbone.feature_dim,
        )
        tracking.log_params(params)
        feature_store = FeatureStore(settings.feature_cache_dir)
        val_views = dihedral_view_ids()[: options.tta_views]
        split = (
            split_backbone(backbone, options.fine_tune_layers) if options.fine_tune_layers else None
        )
        backbone_onnx: Path | None = None
        if split is None:
            # the frozen backbone on ONNX Runtime (converted once per feature space, cached)
            with _timed(timings, "backbone_onnx"):
                from skin_mlops.modeling.onnx_backbone import (
                    ensure_backbone_onnx,
                    onnx_feature_function,
                )

                backbone_onnx = ensure_backbone_onnx(
                    backbone,
                    FeatureSpace.of(backbone, options.backbone_options_key).key,
                    settings.weights_cache_dir,
                )
        mlflow.log_param("feature_engine", "onnxruntime" if backbone_onnx else "keras")
        compute = onnx_feature_function(backbone_onnx) if backbone_onnx else None
        with _timed(timings, "features"):
            # with fine-tuning, the cache holds the activation map at the cut, and the
            # pooled features are the (still frozen) top applied to it
            extractor = split.bottom if split else backbone
            cache_key = options.backbone_options_key + (f",cut={split.cut}" if split else "")
            train_table = extract_features(
                extractor,
                train_refs,
                options.views,
                feature_store,
                backbone_options=cache_key,
                progress=progress,
                description=f"features train ({options.views} views)",
                compute=compute,
            )
            val_table = extract_features(
                extractor,
                val_refs,
                val_views,
                feature_store,
                backbone_options=cache_key,
                progress=progress,
                description=f"features val ({options.tta_views} views)",
                compute=compute,
            )
            if split:
                train_features = pool_maps(split.top, train_table.features, split.map_shape)
                val_features = pool_maps(split.top, val_table.features, split.map_shape)
            else:
                train_features, val_features = train_table.features, val_table.features
        extracted = train_table.extracted + val_table.extracted
        reused = train_table.reused + val_table.reused
        mlflow.log_metrics(
            {
                "features_extracted": extracted,
                "features_reused": reused,
                "images_downloaded": fetch.downloaded,
            }
        )
        if split:
            mlflow.log_param("fine_tune_cut", split.cut)

        # 4. head(s) on cached features
        with _timed(timings, "head_training"):
            heads, history = train_heads(
                train_features,
                y_train,
                val_features[:, :1],  # per-epoch curves: centre view
                y_val,
                len(labels),
                options,
                progress,
            )
        # 5. optional fine-tuning of the backbone's top, on the cached activation maps
        if split:
            with _timed(timings, "fine_tuning"):
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
            val_logits = np.mean(
                [
                    export.keras_logits(head, val_features[:, v], batch_size=256)
                    for head in heads
                    for v in range(options.tta_views)
                ],
                axis=0,
            )

        # the out-of-distribution guard, on the pooled features the exported graph computes
        with _timed(timings, "ood_guard"):
            if split:  # after fine-tuning the top's features changed: pool the maps again
                guard_train = pool_maps(split.top, train_table.features, split.map_shape)
                guard_val = pool_maps(split.top, val_table.features[:, :1], split.map_shape)[:, 0]
            else:
                guard_train, guard_val = train_features, val_features[:, 0]
            guard = _fit_ood_guard(guard_train, y_train, len(labels), options, console)
            del guard_train
        model = export.compose_model(
            backbone.model, heads, backbone.image_size, tta_views=options.tta_views, guard=guard
        )

        # 6. evaluation and calibration
        with _timed(timings, "evaluation"):
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
            plots = _write_plots(evaluation, history, labels)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(plots), artifact_path="plots")
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
        with _timed(timings, "export"):
            parity_pixels = np.stack(
                [
                    preprocessing.preprocess_bytes(ref.load(), backbone.image_size)
                    for ref in val_refs[:PARITY_IMAGES]
                ]
            )
            keras_parity_logits, keras_parity_ood = export.keras_outputs(model, parity_pixels)
            _check_cache_consistency(keras_parity_logits, val_logits[:PARITY_IMAGES])
            signature = export_format.ModelSignature(
                model_version=export_version,
                run_id=run_id,
                backbone=backbone.name,
                backbone_weights_sha256=backbone.weights_sha256,
                image_size=backbone.image_size,
                preprocessing_id=preprocessing.PREPROCESSING_ID,
                labels=labels,
                temperature=evaluation.temperature,
                input=export_format.TensorSpec(
                    name=export.INPUT_NAME,
                    shape=[None, backbone.image_size, backbone.image_size, 3],
                ),
                output=export_format.TensorSpec(name=export.OUTPUT_NAME, shape=[None, len(labels)]),
                ood=_ood_spec(guard),
                metrics={k: round(v, 6) for k, v in metrics.items()},
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

        # 8. tracking: models, metadata, registry
        with _timed(timings, "tracking"):
            mlflow_signature = tracking.mlflow_signature(
                backbone.image_size, len(labels), with_ood=guard is not None
            )
            mlflow.log_artifact(str(staging / export_format.CLASS_INDEX_FILE), "export/data")
            mlflow.log_artifact(str(staging / export_format.SIGNATURE_FILE), "export/inference")
            import mlflow.keras
            import mlflow.onnx
            import onnx

            keras_info = mlflow.keras.log_model(
                model,
                name="keras-model",
                signature=mlflow_signature,
                pip_requirements=tracking.pinned_requirements("tensorflow-cpu", "keras"),
            )
            onnx_info = mlflow.onnx.log_model(
                onnx.load(str(staging / export_format.ONNX_MODEL_FILE)),
                name="onnx-model",
                signature=mlflow_signature,
                save_as_external_data=False,
                pip_requirements=tracking.pinned_requirements("onnx", "onnxruntime"),
                extra_files=[
                    str(staging / export_format.SIGNATURE_FILE),
                    str(staging / export_format.CLASS_INDEX_FILE),
                ],
            )
            registered = tracking.register_version(
                onnx_info.model_uri,
                settings.registered_model_name,
                evaluation.report.macro_f1,
                run_id=run_id,
                tags={"export_version": export_version, "keras_model_uri": keras_info.model_uri},
            )
            # every export is uploaded (the Airflow gate publishes from there)
            export_uri = export.upload_export(store, settings.s3_models_bucket, run_id, staging)
            mlflow.set_tag("export_uri", export_uri)

        # 9. promotion: the champion re-scored on these val photos; a new champion published
        with _timed(timings, "promotion"):
            try:
                if promote:
                    val_bytes = {ref.sha256: ref.load for ref in val_refs}
                    decision = tracking.promote_if_better(
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
                    decision = tracking.ChampionDecision.deferred(
                        settings.registered_model_name, registered, evaluation.report.macro_f1
                    )
            finally:  # published: renamed into runs/skin5/; otherwise (or on error): dropped
                shutil.rmtree(staging, ignore_errors=True)
            tracking.log_decision(
                mlflow.MlflowClient(settings.mlflow_tracking_uri), run_id, decision
            )
            published = decision.published_dir
        timings["total"] = round(time.perf_counter() - started, 3)
        mlflow.log_metrics({f"time_{k}_s": v for k, v in timings.items()})

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
        val_leaked_excluded=len(val_found) - len(val_records),
    )
    shutil.rmtree(plots, ignore_errors=True)
    return training_result


def _write_plots(
    evaluation: Evaluation, history: dict[str, list[float]], labels: list[str]
) -> Path:
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


def _fit_ood_guard(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    options: TrainingOptions,
    console: Console,
) -> OodGuard | None:
    """The out-of-distribution guard (:mod:`skin_mlops.modeling.ood`), or None (with a
    yellow line) when some class has too few training photos to hold any out."""
    import mlflow

    from skin_mlops.modeling import ood

    try:
        guard = ood.fit_guard(
            features, labels, num_classes, pass_rate=options.ood_pass_rate, seed=options.seed
        )
    except DataError as exc:
        console.print(f"no out-of-distribution guard: {exc}", style="yellow", highlight=False)
        mlflow.log_param("ood_guard", "none")
        return None
    mlflow.log_params({"ood_guard": ood.METHOD, "ood_folds": guard.folds})
    return guard


def _ood_spec(guard: OodGuard | None) -> export_format.OodSpec | None:
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


def _check_cache_consistency(fresh: np.ndarray, cached_logits: np.ndarray) -> None:
    """The exported Keras graph's logits on real pixels (``fresh``) must be the logits
    the cached features gave."""
    from skin_mlops.export_format import softmax

    gap = float(np.max(np.abs(softmax(fresh) - softmax(cached_logits)), initial=0.0))
    if gap > 1e-3:
        raise DataError(
            f"the feature cache disagrees with the backbone (max |dp| = {gap:.2e}); "
            "delete the feature cache folder and train again"
        )


# --- CLI ------------------------------------------------------------------------------------


def _print_summary(result: TrainingResult, labels: list[str], console: Console) -> None:
    m = result.metrics
    table = Table(title=f"run {result.run_id}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "val_accuracy",
        "val_balanced_accuracy",
        "val_macro_f1",
        "val_ece_before_scaling",
        "val_ece_after_scaling",
        "val_ece_floor_calibrated",
        "temperature",
    ):
        table.add_row(key, f"{m[key]:.4f}")
    for label in labels:
        table.add_row(f"f1 {label}", f"{m[f'val_f1_{label}']:.3f}")
    table.add_row(
        "features extracted / reused", f"{result.features_extracted} / {result.features_reused}"
    )
    table.add_row("ONNX vs Keras max |dp|", f"{result.parity_max_abs_prob_diff:.1e}")
    table.add_row("time (s)", f"{result.timings.get('total', 0):.1f}")
    console.print(table)
    console.print(result.decision, highlight=False)
    if result.published_dir is not None:
        console.print(f"published: {result.published_dir}", highlight=False)
    console.print(f"uploaded: {result.export_uri}", highlight=False)


def train_command(
    dataset_config: DatasetConfigOption = None,
    epochs: Annotated[int, typer.Option(help="Head training epochs.")] = DEFAULT_EPOCHS,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = DEFAULT_BATCH_SIZE,
    learning_rate: Annotated[float, typer.Option(help="Head learning rate.")] = (
        DEFAULT_LEARNING_RATE
    ),
    backbone: Annotated[
        str, typer.Option(help="Backbone: efficientnet_lite0 or efficientnet_b0.")
    ] = DEFAULT_BACKBONE,
    image_size: Annotated[int, typer.Option(help="Input side S in pixels.")] = (DEFAULT_IMAGE_SIZE),
    views: Annotated[
        int, typer.Option(help="Cached views per training photo (1 = no augmentation).")
    ] = DEFAULT_VIEWS,
    pooling: Annotated[
        str,
        typer.Option(
            help="Backbone pooling: avg, avg+mid (+ block-6 average) or multi "
            "(+ blocks 6/5/4; Lite0)."
        ),
    ] = DEFAULT_POOLING,
    heads: Annotated[
        int, typer.Option(help="Heads trained with different seeds, averaged in the model.")
    ] = DEFAULT_HEADS,
    tta_views: Annotated[
        int,
        typer.Option(help="Dihedral views averaged inside the exported model (1, 2, 4, 8)."),
    ] = DEFAULT_TTA_VIEWS,
    fine_tune_layers: Annotated[
        int,
        typer.Option(
            help="Fine-tune the top N backbone layers (weight layers, BatchNorm counted but "
            "kept frozen) on cached activation maps after the head (0 = off)."
        ),
    ] = DEFAULT_FINE_TUNE_LAYERS,
    fine_tune_epochs: Annotated[
        int, typer.Option(help="Fine-tuning epochs (with --fine-tune-layers).")
    ] = DEFAULT_FINE_TUNE_EPOCHS,
    seed: Annotated[int, typer.Option(help="Random seed.")] = DEFAULT_SEED,
    keep_leaked_val: Annotated[
        bool,
        typer.Option(
            "--keep-leaked-val",
            help="Keep val photos whose bytes are also training photos (default: left out "
            "of val for training and evaluation, and counted).",
        ),
    ] = False,
    ood_pass_rate: Annotated[
        float,
        typer.Option(
            min=0.5,
            max=0.999,
            help="Share of held-out training photos the out-of-distribution guard lets "
            "through (its threshold).",
        ),
    ] = DEFAULT_OOD_PASS_RATE,
    promotion_min_delta: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Val macro-F1 improvement over the champion (re-scored on this run's val "
            "photos) needed to take @champion (default: PROMOTION_MIN_DELTA, 0.01).",
        ),
    ] = None,
) -> None:
    """Train the classifier on the ingested images; log to MLflow; export and publish."""
    from skin_mlops.core.native_logs import filter_native_stderr

    filter_native_stderr()  # TensorFlow's unconditional C++ start-up lines (see module)
    options = TrainingOptions(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        backbone=backbone,
        backbone_options=(("pooling", pooling),),
        image_size=image_size,
        views=views,
        heads=heads,
        tta_views=tta_views,
        fine_tune_layers=fine_tune_layers,
        fine_tune_epochs=fine_tune_epochs,
        seed=seed,
        keep_leaked_val=keep_leaked_val,
        ood_pass_rate=ood_pass_rate,
    )
    settings = get_settings()
    console = Console()
    config_path = dataset_config or settings.dataset_config
    result = run_training(
        config_path,
        settings=settings,
        options=options,
        console=console,
        min_delta=promotion_min_delta,
    )
    _print_summary(result, load_dataset_config(config_path).labels, console)
