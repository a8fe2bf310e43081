"""Metrics, temperature scaling, ECE and plots of skin_mlops.modeling.evaluate."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skin_mlops.modeling.evaluate import (
    classification_report,
    evaluate_logits,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_training_curves,
    softmax,
)

LABELS = ["a", "b", "c"]


def _overconfident_logits(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits drawn from a calibrated model (T=1), then sharpened 3x (true T = 3)."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, size=(n, 3))
    probs = softmax(true_logits)
    labels = np.array([rng.choice(3, p=p) for p in probs])
    return true_logits * 3.0, labels


def test_softmax_rows_sum_to_one_and_temperature_flattens() -> None:
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    probs = softmax(logits)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs[0, 0] == pytest.approx(1.0)
    assert softmax(logits, 10.0)[1].max() < probs[1].max()


def test_fit_temperature_recovers_known_sharpening() -> None:
    logits, labels = _overconfident_logits()
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    assert negative_log_likelihood(logits, labels, temperature) < negative_log_likelihood(
        logits, labels, 1.0
    )


def test_scaling_reduces_ece_of_overconfident_model() -> None:
    logits, labels = _overconfident_logits()
    evaluation = evaluate_logits(logits, labels, LABELS)
    assert evaluation.ece_before > 0.1
    assert evaluation.ece_after < 0.03
    assert evaluation.nll_after < evaluation.nll_before


def test_ece_hand_computed() -> None:
    # two predictions at confidence 0.9 (one right), one at 0.6 (right)
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2]])
    labels = np.array([0, 1, 1])
    expected = (2 * abs(0.5 - 0.9) + 1 * abs(1.0 - 0.6)) / 3
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(expected)


def test_classification_report_values() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    preds = np.array([0, 0, 0, 1, 1, 1, 2, 0])
    report = classification_report(labels, preds, LABELS)
    assert report.accuracy == pytest.approx(6 / 8)
    assert report.balanced_accuracy == pytest.approx((3 / 4 + 1 + 1 / 2) / 3)
    assert report.per_class["a"].precision == pytest.approx(3 / 4)
    assert report.per_class["b"].recall == pytest.approx(1.0)
    assert report.per_class["c"].support == 2
    f1s = [2 * 0.75 * 0.75 / 1.5, 2 * (2 / 3) / (5 / 3), 2 * 0.5 / 1.5]
    assert report.macro_f1 == pytest.approx(np.mean(f1s))
    assert report.confusion.tolist() == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_never_predicted_class_counts_as_zero_f1() -> None:
    report = classification_report(np.array([0, 1, 2]), np.array([0, 1, 1]), LABELS)
    assert report.per_class["c"].f1 == 0.0
    assert report.macro_f1 == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_as_metrics_has_per_class_entries() -> None:
    logits, labels = _overconfident_logits(300)
    metrics = evaluate_logits(logits, labels, LABELS).as_metrics()
    for name in (
        "val_accuracy",
        "val_macro_f1",
        "val_balanced_accuracy",
        "temperature",
        "val_ece_before_scaling",
        "val_ece_after_scaling",
        "val_f1_c",
        "val_precision_a",
        "val_recall_b",
    ):
        assert name in metrics


def test_plots_are_pngs(tmp_path) -> None:
    logits, labels = _overconfident_logits(200)
    evaluation = evaluate_logits(logits, labels, LABELS)
    paths = [
        plot_confusion_matrix(evaluation.report.confusion, LABELS, tmp_path / "cm.png"),
        plot_reliability_diagram(evaluation, tmp_path / "rel.png"),
        plot_training_curves(
            {
                "train_loss": [1.0, 0.5],
                "val_loss": [1.1, 0.7],
                "train_accuracy": [0.5, 0.8],
                "val_accuracy": [0.4, 0.7],
            },
            tmp_path / "curves.png",
        ),
    ]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width > 300 and image.height > 200


def test_ece_noise_floor_shrinks_with_more_photos() -> None:
    from skin_mlops.modeling.evaluate import ece_noise_floor

    rng = np.random.default_rng(1)
    small = softmax(rng.normal(0, 2, (129, 5)))
    large = softmax(rng.normal(0, 2, (20000, 5)))
    floor_small, floor_large = ece_noise_floor(small), ece_noise_floor(large, draws=50)
    assert 0.02 < floor_small < 0.15
    assert floor_large < 0.01
    # a model that really is calibrated measures about its floor
    labels = np.array([rng.choice(5, p=p) for p in large])
    assert expected_calibration_error(large, labels) < 3 * floor_large + 0.005


def test_macro_f1_equals_scikit_learn_including_unknown_and_missing_classes() -> None:
    from sklearn.metrics import f1_score

    from skin_mlops.modeling.evaluate import macro_f1

    rng = np.random.default_rng(1)
    for trial in range(50):
        k = int(rng.integers(2, 7))
        n = int(rng.integers(1, 40))
        y = rng.integers(0, k - (trial % 2), n)  # odd trials: the last class absent
        predictions = rng.integers(0, k + 1, n)  # k = a label this set does not know
        expected = f1_score(y, predictions, labels=list(range(k)), average="macro", zero_division=0)
        assert macro_f1(y, predictions, k) == pytest.approx(expected, abs=1e-12)
