"""Evaluation of a classifier's logits: metrics, temperature scaling, calibration, plots.

Everything here works on plain numpy arrays (logits ``[N, K]``, integer labels ``[N]``),
so it serves training, the benchmarks and any later re-evaluation alike:

* :func:`classification_report` - accuracy, balanced accuracy, macro-F1, per-class
  precision / recall / F1 / support and the confusion matrix (scikit-learn);
  :func:`macro_f1` alone is the selection metric (the promotion gate re-scores the
  champion with it);
* :func:`fit_temperature` - the temperature ``T`` minimising the negative log-likelihood
  of ``softmax(logits / T)`` (scipy L-BFGS-B on ``log T``), fitted on validation data;
* :func:`expected_calibration_error` - equal-width confidence bins (15 by default), and
  :func:`ece_noise_floor` - the ECE a perfectly calibrated model would still show on this
  few photos (sampling noise);
* :func:`evaluate_logits` - all of the above in one :class:`Evaluation`;
* :func:`plot_confusion_matrix`, :func:`plot_reliability_diagram`,
  :func:`plot_training_curves` - PNG files (matplotlib's object API, no pyplot state).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from skin_mlops.export_format import softmax

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_ECE_BINS = 15


# --- probabilities and calibration ----------------------------------------------------


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of ``labels`` under ``softmax(logits / temperature)``."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled).sum(axis=1))
    picked = scaled[np.arange(len(labels)), np.asarray(labels)]
    return float(np.mean(log_norm - picked))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T > 0`` minimising the NLL of ``softmax(logits / T)``.

    Optimised over ``log T`` with scipy's L-BFGS-B (bounded to ``T`` in [0.05, 20]);
    the objective is smooth and one-dimensional, so this converges in a few steps.

    Args:
        logits (np.ndarray): ``[N, K]`` validation logits.
        labels (np.ndarray): ``[N]`` integer labels.

    Returns:
        float: the fitted temperature (1.0 when there is nothing to fit on).
    """
    from scipy.optimize import minimize

    if len(labels) == 0:
        return 1.0

    def objective(log_t: np.ndarray) -> float:
        return negative_log_likelihood(logits, labels, float(np.exp(log_t[0])))

    result = minimize(
        objective, x0=np.zeros(1), method="L-BFGS-B", bounds=[(np.log(0.05), np.log(20.0))]
    )
    return float(np.exp(result.x[0]))


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin confidence, accuracy and count (equal-width bins over [0, 1])."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> ReliabilityBins:
    """Bin predictions by top-1 confidence; empty bins have count 0 (and NaN means)."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin i holds (edges[i], edges[i+1]]; confidence 0 (impossible for softmax) -> bin 0
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        mean_acc = np.bincount(index, weights=correct, minlength=n_bins) / count
    return ReliabilityBins(edges, mean_conf, mean_acc, count)


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> float:
    """ECE: the count-weighted mean ``|accuracy - confidence|`` over confidence bins."""
    if len(labels) == 0:
        return 0.0
    bins = reliability_bins(probs, labels, n_bins)
    filled = bins.count > 0
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float(np.sum(gaps * bins.count[filled]) / bins.count.sum())


def ece_noise_floor(
    probs: np.ndarray, n_bins: int = DEFAULT_ECE_BINS, draws: int = 1000, seed: int = 0
) -> float:
    """Mean ECE of a *perfectly calibrated* model with these confidences on this many photos.

    Each prediction is drawn correct with probability equal to its confidence; the ECE
    measured on such draws is pure sampling noise. On a small validation set (129 photos)
    this floor is several hundredths: an ECE near it is as calibrated as can be measured.
    """
    if len(probs) == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    confidence = probs.max(axis=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    correct = rng.random((draws, len(confidence))) < confidence
    acc_sum = np.stack([np.bincount(index, weights=c, minlength=n_bins) for c in correct])
    return float(np.mean(np.abs(acc_sum - conf_sum).sum(axis=1) / len(confidence)))


# --- classification metrics -------------------------------------------------------------


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall, F1 and support of one class."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationReport:
    """Top-1 metrics of predictions against labels."""

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    confusion: np.ndarray  # [K, K], rows = true label, columns = predicted


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of the per-class F1 over classes ``0..num_classes-1``.

    As scikit-learn's ``f1_score(average="macro", labels=range(K), zero_division=0)`` (a
    test keeps them equal), in NumPy: the bootstrap of the model card calls it thousands of
    times. A class never predicted correctly scores 0. A prediction outside
    ``0..num_classes-1`` (a label the scored model knows and this label set does not) is
    simply wrong: it counts as a miss of the true class and as nobody's hit.
    """
    labels = np.asarray(labels, np.int64)
    predictions = np.asarray(predictions, np.int64)
    k = num_classes
    support = np.bincount(labels, minlength=k)[:k]
    known = (predictions >= 0) & (predictions < k)
    predicted = np.bincount(predictions[known], minlength=k)[:k]
    hits = np.bincount(labels[labels == predictions], minlength=k)[:k]
    denominator = support + predicted
    f1 = np.divide(2.0 * hits, denominator, out=np.zeros(k), where=denominator > 0)
    return float(f1.mean())


def classification_report(
    labels: np.ndarray, predictions: np.ndarray, label_names: Sequence[str]
) -> ClassificationReport:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1 and the confusion matrix.

    Classes absent from both ``labels`` and ``predictions`` score 0 (scikit-learn's
    ``zero_division=0``), so a class the model never gets right drags macro-F1 down.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    classes = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    per_class = {
        name: ClassMetrics(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(label_names)
    }
    with warnings.catch_warnings():  # a class missing from y_true warns; 0 recall is the answer
        warnings.simplefilter("ignore")
        balanced = float(balanced_accuracy_score(labels, predictions))
    return ClassificationReport(
        accuracy=float(accuracy_score(labels, predictions)),
        balanced_accuracy=balanced,
        macro_f1=macro_f1(labels, predictions, len(label_names)),
        per_class=per_class,
        confusion=confusion_matrix(labels, predictions, labels=classes),
    )


@dataclass(frozen=True)
class Evaluation:
    """Everything measured on one split's logits, before and after temperature scaling."""

    report: ClassificationReport
    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    ece_floor: float
    probs_before: np.ndarray = field(repr=False)
    probs_after: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)

    def as_metrics(self, prefix: str = "val_") -> dict[str, float]:
        """Flat ``{name: value}`` for MLflow (per-class metrics as ``<prefix>f1_<label>``)."""
        metrics = {
            f"{prefix}accuracy": self.report.accuracy,
            f"{prefix}balanced_accuracy": self.report.balanced_accuracy,
            f"{prefix}macro_f1": self.report.macro_f1,
            f"{prefix}nll_before_scaling": self.nll_before,
            f"{prefix}nll_after_scaling": self.nll_after,
            f"{prefix}ece_before_scaling": self.ece_before,
            f"{prefix}ece_after_scaling": self.ece_after,
            f"{prefix}ece_floor_calibrated": self.ece_floor,
            "temperature": self.temperature,
        }
        for name, cls in self.report.per_class.items():
            metrics[f"{prefix}precision_{name}"] = cls.precision
            metrics[f"{prefix}recall_{name}"] = cls.recall
            metrics[f"{prefix}f1_{name}"] = cls.f1
        return metrics


def evaluate_logits(
    logits: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    *,
    temperature: float | None = None,
    n_bins: int = DEFAULT_ECE_BINS,
) -> Evaluation:
    """Metrics of ``logits`` against ``labels``; fits the temperature when not given.

    Top-1 metrics do not depend on the temperature (it never changes the argmax).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    fitted = fit_temperature(logits, labels) if temperature is None else float(temperature)
    probs_before, probs_after = softmax(logits), softmax(logits, fitted)
    return Evaluation(
        report=classification_report(labels, probs_before.argmax(axis=1), label_names),
        temperature=fitted,
        nll_before=negative_log_likelihood(logits, labels, 1.0),
        nll_after=negative_log_likelihood(logits, labels, fitted),
        ece_before=expected_calibration_error(probs_before, labels, n_bins),
        ece_after=expected_calibration_error(probs_after, labels, n_bins),
        ece_floor=ece_noise_floor(probs_after, n_bins),
        probs_before=probs_before,
        probs_after=probs_after,
        labels=labels,
    )


# --- plots ----------------------------------------------------------------------------------


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_confusion_matrix(
    confusion: np.ndarray, label_names: Sequence[str], path: Path, *, title: str = ""
) -> Path:
    """A confusion-matrix PNG: counts, cells shaded by row-normalised recall."""
    from matplotlib.figure import Figure

    confusion = np.asarray(confusion)
    row_sums = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(
        confusion, row_sums, out=np.zeros_like(confusion, float), where=row_sums > 0
    )
    size = max(4.5, 1.1 * len(label_names) + 1.5)
    figure = Figure(figsize=(size + 1, size))
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="row share (recall)")
    ticks = range(len(label_names))
    axes.set_xticks(ticks, labels=label_names, rotation=35, ha="right")
    axes.set_yticks(ticks, labels=label_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for i in ticks:
        for j in ticks:
            axes.text(
                j,
                i,
                str(int(confusion[i, j])),
                ha="center",
                va="center",
                color="white" if normalised[i, j] > 0.5 else "black",
            )
    axes.set_title(title or "Confusion matrix")
    return _save(figure, path)


def plot_reliability_diagram(
    evaluation: Evaluation, path: Path, *, n_bins: int = DEFAULT_ECE_BINS
) -> Path:
    """Reliability diagram PNG: accuracy vs confidence per bin, before and after scaling."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5))
    panels = (
        ("before scaling (T = 1)", evaluation.probs_before, evaluation.ece_before),
        (
            f"after scaling (T = {evaluation.temperature:.3f})",
            evaluation.probs_after,
            evaluation.ece_after,
        ),
    )
    for position, (name, probs, ece) in enumerate(panels, 1):
        axes = figure.add_subplot(1, 2, position)
        bins = reliability_bins(probs, evaluation.labels, n_bins)
        centres = (bins.edges[:-1] + bins.edges[1:]) / 2
        width = bins.edges[1] - bins.edges[0]
        filled = bins.count > 0
        axes.bar(
            centres[filled],
            bins.accuracy[filled],
            width=width * 0.95,
            color="#4C72B0",
            edgecolor="black",
            label="accuracy",
        )
        axes.bar(
            centres[filled],
            (bins.confidence - bins.accuracy)[filled],
            bottom=bins.accuracy[filled],
            width=width * 0.95,
            color="#DD8452",
            alpha=0.5,
            edgecolor="#DD8452",
            label="gap to confidence",
        )
        axes.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("confidence (top-1 probability)")
        axes.set_ylabel("accuracy")
        axes.set_title(f"{name}\nECE = {ece:.4f}")
        axes.legend(loc="upper left", fontsize="small")
    return _save(figure, path)


def plot_training_curves(history: Mapping[str, Sequence[float]], path: Path) -> Path:
    """Loss and accuracy per epoch (train and val) as a two-panel PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4))
    for position, metric in enumerate(("loss", "accuracy"), 1):
        axes = figure.add_subplot(1, 2, position)
        for split in ("train", "val"):
            values = list(history.get(f"{split}_{metric}", []))
            if values:
                axes.plot(range(1, len(values) + 1), values, marker="o", label=split)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(metric)
        axes.legend()
        axes.grid(alpha=0.3)
    return _save(figure, path)
