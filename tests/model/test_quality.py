"""Val macro-F1 floor and calibration (ECE) bound of the served probabilities."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from skin_mlops.api.model_runtime import LoadedModel
from skin_mlops.modeling.evaluate import Evaluation, evaluate_logits
from utils.model_checks import ValSet

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def evaluation(served_model: LoadedModel, val_set: ValSet) -> Evaluation:
    """The package's evaluation of the val logits with the model's own temperature."""
    return evaluate_logits(
        val_set.logits,
        val_set.labels,
        served_model.labels,
        temperature=served_model.signature.temperature,
    )


def test_val_macro_f1_is_above_the_floor(
    served_model: LoadedModel,
    evaluation: Evaluation,
    pytestconfig: pytest.Config,
    figure: Callable[[str], None],
) -> None:
    """Macro-F1 (every label counts the same) on the val photos >= ``--min-macro-f1``."""
    floor = pytestconfig.getoption("--min-macro-f1")
    report = evaluation.report
    recorded = served_model.signature.metrics.get("val_macro_f1")
    per_class = ", ".join(f"{name} {m.f1:.3f}" for name, m in report.per_class.items())
    figure(
        f"val macro-F1 {report.macro_f1:.4f} (accuracy {report.accuracy:.4f}; "
        f"signature says {recorded if recorded is None else round(recorded, 4)}); "
        f"F1 {per_class}"
    )
    assert report.macro_f1 >= floor, f"val macro-F1 {report.macro_f1:.4f} < floor {floor}"


def test_served_probabilities_are_calibrated(
    served_model: LoadedModel,
    evaluation: Evaluation,
    pytestconfig: pytest.Config,
    figure: Callable[[str], None],
) -> None:
    """ECE of ``softmax(logits / temperature)`` (what the API serves) <= ``--max-ece``."""
    bound = pytestconfig.getoption("--max-ece")
    figure(
        f"val ECE {evaluation.ece_after:.4f} at T = {served_model.signature.temperature:.3f} "
        f"(T = 1: {evaluation.ece_before:.4f}; noise floor of a calibrated model on "
        f"{len(evaluation.labels)} photos: {evaluation.ece_floor:.4f})"
    )
    assert evaluation.ece_after <= bound, (
        f"val ECE {evaluation.ece_after:.4f} > {bound} with the model's temperature "
        f"{served_model.signature.temperature:.3f}"
    )
