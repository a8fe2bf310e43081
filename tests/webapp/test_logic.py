"""The page's decisions, as plain functions (no Streamlit)."""

from __future__ import annotations

import pytest

from skin_mlops.api.schemas import LabelProbability, Prediction
from skin_mlops.webapp import logic
from skin_mlops.webapp.client import (
    ApiBadResponse,
    ApiRefused,
    ApiServerError,
    ApiTimeout,
    ApiUnreachable,
)
from utils.images import encode, two_tone, with_exif_orientation


def prediction(confidence: float = 0.8) -> Prediction:
    rest = (1 - confidence) / 2
    return Prediction(
        label="basal_cell_carcinoma",
        confidence=confidence,
        top_k=[
            LabelProbability(label="basal_cell_carcinoma", probability=confidence),
            LabelProbability(label="acne", probability=rest),
            LabelProbability(label="lichen_planus", probability=rest),
        ],
        model_version="v7",
        inference_ms=12.5,
        uncertain=confidence < 0.5,
        batch_size=1,
    )


def test_plain_label_uses_known_names_then_spaces() -> None:
    assert logic.plain_label("basal_cell_carcinoma") == "Basal cell carcinoma"
    assert logic.plain_label("nv") == "Melanocytic nevus (mole)"
    assert logic.plain_label("seborrheic_keratosis") == "Seborrheic keratosis"


@pytest.mark.parametrize(
    ("confidence", "threshold", "warns"), [(0.49, 0.5, True), (0.5, 0.5, False)]
)
def test_the_warning_appears_only_under_the_threshold(
    confidence: float, threshold: float, warns: bool
) -> None:
    warning = logic.uncertainty_warning(confidence, threshold)
    assert (warning is not None) is warns
    if warning:
        assert "unsure" in warning and "clinician" in warning and "49%" in warning


def test_result_view_reranks_for_k_and_threshold_without_a_call() -> None:
    answer = prediction(0.6)
    view = logic.result_view(answer, k=2, threshold=0.5)
    assert view.title == "Basal cell carcinoma" and view.warning is None
    assert [item.label for item in view.ranked] == ["basal_cell_carcinoma", "acne"]
    bars = view.chart["data"]["values"]  # type: ignore[index]
    assert [bar["label"] for bar in bars] == ["Basal cell carcinoma", "Acne"]
    assert [bar["probability"] for bar in bars] == [0.6, 0.2]
    stricter = logic.result_view(answer, k=1, threshold=0.9)
    assert stricter.warning is not None and len(stricter.ranked) == 1


def test_a_photo_the_guard_flags_gets_its_warning_even_when_confident() -> None:
    flagged = prediction(0.93).model_copy(update={"in_distribution": False, "ood_score": 2.4})
    view = logic.result_view(flagged, k=3, threshold=0.5)
    assert view.warning == logic.OUT_OF_DISTRIBUTION_WARNING
    assert "does not look like the clinical skin photos" in view.warning

    passed = prediction(0.93).model_copy(update={"in_distribution": True, "ood_score": 0.6})
    assert logic.result_view(passed, k=3, threshold=0.5).warning is None
    unsure = prediction(0.3).model_copy(update={"in_distribution": True, "ood_score": 0.6})
    assert "unsure" in (logic.result_view(unsure, k=3, threshold=0.5).warning or "")


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (ApiUnreachable("cannot reach http://x (connection refused)"), "not reachable"),
        (ApiTimeout("no answer within 30 s"), "too slow"),
        (ApiRefused("not a supported image (expected one of JPEG, PNG)", 415), "HTTP 415"),
        (ApiServerError("no model loaded yet", 503), "not ready"),
        (ApiServerError("Internal Server Error", 500), "failed (HTTP 500)"),
        (ApiBadResponse("body is not JSON", 200), "cannot read"),
    ],
)
def test_every_api_error_has_a_sentence_with_the_apis_words(error, words: str) -> None:
    message = logic.error_message(error)
    assert words in message and error.detail in message
    assert "Traceback" not in message


def test_metric_labels_stay_within_the_models_labels() -> None:
    assert logic.metric_label("acne", ["acne", "nv"]) == "acne"
    assert logic.metric_label("<script>", ["acne", "nv"]) == logic.OTHER_LABEL


def test_display_image_applies_exif_orientation() -> None:
    upright = two_tone("red", size=(90, 60))  # landscape
    shown = logic.display_image(with_exif_orientation(upright))
    assert shown.problem is None and shown.image is not None
    assert shown.image.size == (90, 60), "shown as the model sees it: upright, not as stored"


def test_display_image_outlines_the_centre_square_the_model_sees() -> None:
    shown = logic.display_image(encode(two_tone("black", size=(120, 60))), crop_size=32)
    assert shown.image is not None
    gold = (255, 215, 0)
    assert shown.image.getpixel((30, 30)) == gold and shown.image.getpixel((89, 30)) == gold
    assert shown.image.getpixel((10, 30)) != gold


def test_display_image_says_why_a_file_cannot_be_shown() -> None:
    shown = logic.display_image(b"not an image")
    assert shown.image is None and "not a supported image" in (shown.problem or "")
