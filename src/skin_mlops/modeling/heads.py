"""The head stage of training: an MLP on cached features, class-balanced, seeded.

:func:`build_head` (input normalisation from the training features, dropout, hidden
layer, logits), :func:`train_head` / :func:`train_heads` (a ``tf.data`` pipeline over the
cached arrays; an epoch costs milliseconds to a second) and the progress helpers shared by
the training stages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    import keras

    from skin_mlops.modeling.options import TrainingOptions


HEAD_STEPS_PER_EXECUTION = 16


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


def epoch_callback(progress: Progress, task: Any, name: str, prefix: str = "") -> Any:
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


def compile_model(
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


def total_steps(n_samples: int, batch_size: int, epochs: int) -> int:
    return epochs * -(-n_samples // batch_size)


def feature_dataset(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    targets: np.ndarray | None = None,
    mixup_alpha: float = 0.0,
) -> Any:
    """A ``tf.data`` pipeline over cached features ``[N, V, D]`` (every view is a sample),
    one-hot labels, or ``targets`` ``[N, V, K]`` (a distribution per view: distillation's
    soft targets) when given.

    ``mixup_alpha`` > 0: mixup on the features (:func:`mix_batch`), batch by batch, seeded
    by ``seed`` and the batch's rows (so the same run mixes the same pairs).

    What is shuffled is the row *indices*, and each batch is gathered from the caller's
    array by NumPy (``tf.numpy_function``), so memory holds the one copy of the features
    the caller already has: no TensorFlow copy of them (``tf.constant`` of the array costs
    about twice its size more here, measured on a 390 MiB array) and no full-size shuffle
    buffer (the same seeded order as shuffling the rows).
    """
    import tensorflow as tf

    n, views, dim = features.shape
    rows_of = features.reshape(n * views, dim)  # a view of the caller's array, not a copy
    if targets is None:
        y = np.eye(num_classes, dtype=np.float32)[np.repeat(labels, views)]
    else:
        y = np.asarray(targets, np.float32).reshape(n * views, num_classes)
    dataset = tf.data.Dataset.range(n * views)
    if shuffle:
        dataset = dataset.shuffle(n * views, seed=seed, reshuffle_each_iteration=True)

    def gather(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, t = np.asarray(rows_of[rows], np.float32), y[rows]
        if mixup_alpha > 0:
            rng = np.random.default_rng([seed, int(rows[0]), len(rows)])
            x, t = mix_batch(x, t, mixup_alpha, rng)
        return x, t

    def batch_of(rows: Any) -> tuple[Any, Any]:
        x, t = tf.numpy_function(gather, [rows], (tf.float32, tf.float32), stateful=False)
        return tf.ensure_shape(x, [None, dim]), tf.ensure_shape(t, [None, num_classes])

    dataset = dataset.batch(batch_size).map(
        batch_of, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def mix_batch(
    features: np.ndarray, targets: np.ndarray, alpha: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Mixup (Zhang et al., 2018) of one batch of feature vectors and their targets.

    Each row ``i`` is blended with row ``p(i)`` of a random permutation of the batch by
    ``lam_i ~ Beta(alpha, alpha)`` folded to ``max(lam, 1 - lam)``, so the row's own photo
    keeps at least half of the mix (and its class weight, which Keras reads from the
    largest target, still belongs to it): ``x_i' = lam_i x_i + (1 - lam_i) x_p(i)``, the
    targets alike (each row still sums to 1).
    """
    lam = rng.beta(alpha, alpha, size=(len(features), 1)).astype(np.float32)
    lam = np.maximum(lam, 1 - lam)
    partner = rng.permutation(len(features))
    mixed = lam * features + (1 - lam) * features[partner]
    mixed_targets = lam * targets + (1 - lam) * targets[partner]
    return mixed.astype(np.float32), mixed_targets.astype(np.float32)


def train_head(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    options: TrainingOptions,
    progress: Progress,
    member: int = 0,
    targets: np.ndarray | None = None,
    role: str = "",
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train one head on cached features; return it and its per-epoch history.

    ``targets`` ``[N, V, K]``: train on these distributions instead of the one-hot labels
    (distillation; the class weights still follow ``train_labels``). ``role`` (e.g.
    ``teacher``) prefixes the progress bar and the MLflow names (``teacher_epoch_*``).

    MLflow per-epoch names: ``epoch_*`` for the first member, ``head<i>_epoch_*`` else.
    """
    head = build_head(train_features, num_classes, options, member)
    n_samples = train_features.shape[0] * train_features.shape[1]
    compile_model(
        head,
        options.learning_rate,
        options,
        total_steps(n_samples, options.batch_size, options.epochs),
        steps_per_execution=HEAD_STEPS_PER_EXECUTION,
    )
    name = "head" if options.heads == 1 else f"head {member + 1}/{options.heads}"
    name = f"{role} {name}" if role else name
    metric_prefix = f"{role}_" if role else ""
    task = progress.add_task(f"{name} epochs", total=options.epochs)
    fit = head.fit(
        feature_dataset(
            train_features,
            train_labels,
            num_classes,
            options.batch_size,
            shuffle=True,
            seed=options.seed + member,
            targets=targets,
            mixup_alpha=options.mixup_alpha,
        ),
        validation_data=feature_dataset(
            val_features, val_labels, num_classes, 256, shuffle=False, seed=options.seed
        ),
        epochs=options.epochs,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
        class_weight=class_weights(train_labels, num_classes),
        callbacks=[
            epoch_callback(
                progress,
                task,
                name,
                prefix=metric_prefix + ("epoch_" if member == 0 else f"head{member}_epoch_"),
            )
        ],
        verbose=0,
    )
    return head, history_of(fit.history)


def train_heads(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    options: TrainingOptions,
    progress: Progress,
    targets: np.ndarray | None = None,
    role: str = "",
) -> tuple[list[keras.Model], dict[str, list[float]]]:
    """Train ``options.heads`` heads (an ensemble averaged in the exported graph), on the
    one-hot labels or on ``targets`` (see :func:`train_head`).

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
            targets,
            role,
        )
        heads.append(head)
        histories.append(history)
    return heads, histories[0]


def history_of(keras_history: dict[str, list[float]]) -> dict[str, list[float]]:
    names = {
        "loss": "train_loss",
        "accuracy": "train_accuracy",
        "val_loss": "val_loss",
        "val_accuracy": "val_accuracy",
    }
    return {
        names[k]: [float(v) for v in values] for k, values in keras_history.items() if k in names
    }
