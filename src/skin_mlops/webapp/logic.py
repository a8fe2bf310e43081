"""Every decision the page makes, as plain functions (no Streamlit here: tests call them).

The page (:mod:`skin_mlops.webapp.app`) only draws what these functions return: the label
in plain words, whether to warn, what to say when the API fails, which photo to show.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from skin_mlops.preprocessing import ImageError, load_rgb
from skin_mlops.webapp.client import (
    ApiBadResponse,
    ApiClient,
    ApiError,
    ApiRefused,
    ApiServerError,
    ApiTimeout,
    ApiUnreachable,
    CallStatus,
    LabelProbability,
    Prediction,
    UploadFile,
    top_k,
)

DISCLAIMER = (
    "**Not a diagnosis.** This is a research tool: it ranks a few skin conditions it was "
    "trained on and can be wrong, or confident about a photo it was never meant to see. "
    "Ask a clinician about any lesion that worries you."
)

# Names a person reads; any other label is shown with underscores as spaces.
PLAIN_NAMES: dict[str, str] = {
    "acne": "Acne",
    "actinic_keratosis": "Actinic keratosis",
    "atopic_dermatitis": "Atopic dermatitis (eczema)",
    "basal_cell_carcinoma": "Basal cell carcinoma",
    "lichen_planus": "Lichen planus",
    # HAM10000's short codes
    "akiec": "Actinic keratosis / intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevus (mole)",
    "vasc": "Vascular lesion",
}

#: The labels a metric may carry besides the model's own (keeps cardinality fixed).
OTHER_LABEL = "other"


def plain_label(label: str) -> str:
    """``basal_cell_carcinoma`` -> ``Basal cell carcinoma`` (known names first)."""
    if label in PLAIN_NAMES:
        return PLAIN_NAMES[label]
    words = label.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:] if words else label


def uncertainty_warning(confidence: float, threshold: float) -> str | None:
    """The warning to show when the top probability is under ``threshold``, else ``None``."""
    if confidence >= threshold:
        return None
    return (
        f"The model is unsure: its best guess has a probability of {confidence:.0%}, below "
        f"the {threshold:.0%} threshold. Do not rely on this answer; a clinician should "
        "look at this lesion."
    )


OUT_OF_DISTRIBUTION_WARNING = (
    "This does not look like the clinical skin photos the model was trained on, so its "
    "label means nothing here. Upload a close, well-lit photo of the skin lesion itself."
)


def prediction_warning(prediction: Prediction, threshold: float) -> str | None:
    """The out-of-distribution warning first (a confident answer about a photo unlike the
    training photos is still meaningless), else the low-confidence one, else ``None``."""
    if prediction.in_distribution is False:
        return OUT_OF_DISTRIBUTION_WARNING
    return uncertainty_warning(prediction.confidence, threshold)


def error_message(error: ApiError) -> str:
    """What the page says when a call to the API failed (never a traceback)."""
    if isinstance(error, ApiUnreachable):
        return (
            f"The prediction service is not reachable: {error.detail}. "
            "Start it with `skin-mlops serve` (or check API_BASE_URL), then try again."
        )
    if isinstance(error, ApiTimeout):
        return f"The prediction service is too slow right now: {error.detail}. Try again."
    if isinstance(error, ApiRefused):
        return (
            f"The prediction service refused this photo (HTTP {error.status_code}): {error.detail}"
        )
    if isinstance(error, ApiServerError):
        if error.status_code == 503:
            return f"The prediction service is not ready (HTTP 503): {error.detail}"
        return f"The prediction service failed (HTTP {error.status_code}): {error.detail}"
    if isinstance(error, ApiBadResponse):
        return f"The prediction service sent an answer this page cannot read: {error.detail}"
    return f"The prediction service call failed: {error.detail}"


def metric_label(label: str, known: Sequence[str]) -> str:
    """``label`` if it is one of the model's labels, else :data:`OTHER_LABEL`."""
    return label if label in known else OTHER_LABEL


@dataclass(frozen=True)
class ResultView:
    """One prediction, ready to draw."""

    label: str
    title: str
    confidence: float
    ranked: list[LabelProbability]
    chart: dict[str, object]
    warning: str | None
    model_version: str
    inference_ms: float


def result_view(prediction: Prediction, *, k: int, threshold: float) -> ResultView:
    """Turn the API's answer into what the page shows, for the current ``k`` and threshold.

    The page asks the API for every label's probability, so changing ``k`` or the threshold
    re-draws without another call.
    """
    ranked = top_k(prediction.top_k, k)
    return ResultView(
        label=prediction.label,
        title=plain_label(prediction.label),
        confidence=prediction.confidence,
        ranked=ranked,
        chart=probability_chart(ranked),
        warning=prediction_warning(prediction, threshold),
        model_version=prediction.model_version,
        inference_ms=prediction.inference_ms,
    )


def probability_chart(ranked: Sequence[LabelProbability]) -> dict[str, object]:
    """A Vega-Lite spec of horizontal probability bars, most probable on top.

    Written out rather than built by ``st.bar_chart`` (pandas + Altair: ~30 ms a chart on
    this CPU, and 1.3 s for the first one in a process); the data is inline.
    """
    values = [
        {"label": plain_label(item.label), "probability": round(item.probability, 4)}
        for item in ranked
    ]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": values},
        "mark": {"type": "bar", "cornerRadiusEnd": 3},
        "height": {"step": 26},
        "encoding": {
            "y": {
                "field": "label",
                "type": "nominal",
                "sort": None,
                "title": None,
                "axis": {"labelLimit": 260},
            },
            "x": {
                "field": "probability",
                "type": "quantitative",
                "scale": {"domain": [0, 1]},
                "axis": {"format": "%", "title": "probability"},
            },
            "tooltip": [
                {"field": "label", "type": "nominal"},
                {"field": "probability", "type": "quantitative", "format": ".1%"},
            ],
        },
    }


@dataclass(frozen=True)
class DisplayImage:
    """The photo as the model sees it (EXIF-rotated), or why it cannot be shown."""

    image: Image.Image | None
    problem: str | None = None


def display_image(
    data: bytes, *, crop_size: int | None = None, max_side: int = 640
) -> DisplayImage:
    """Decode ``data`` with the platform's preprocessing (EXIF orientation applied).

    With ``crop_size`` (the model's input size), the centre square the model classifies is
    outlined. The picture is shrunk to ``max_side`` for display.
    """
    try:
        img = load_rgb(data, min_side=max_side)
    except ImageError as exc:
        return DisplayImage(None, str(exc))
    if crop_size:
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        if img.width != img.height:
            draw = ImageDraw.Draw(img)
            width = max(2, side // 150)
            draw.rectangle(
                (left, top, left + side - 1, top + side - 1), outline=(255, 215, 0), width=width
            )
    img.thumbnail((max_side, max_side))
    return DisplayImage(img)


def image_bytes(img: Image.Image) -> bytes:
    """JPEG bytes of ``img`` for ``st.image`` (PNG costs ~130 ms and ~400 KB a photo here)."""
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


# The API caps top_k at its label count: asking for this many returns every label, so the
# page can re-rank for another K (or redraw the chart) without calling again.
ALL_LABELS = 100


@dataclass(frozen=True)
class FileOutcome:
    """The answer for one photo: a prediction, or the sentence saying why there is none.

    ``call_failed``: the whole call failed (API down, ...), not this photo alone.
    """

    prediction: Prediction | None = None
    error: str | None = None
    call_failed: bool = False


@dataclass(frozen=True)
class ClassifyOutcome:
    """One call for a set of photos: an outcome per photo (upload order), how the call went."""

    files: list[FileOutcome]
    status: CallStatus
    seconds: float
    error: str | None = None
    predictions: list[Prediction] = field(default_factory=list)


def classify(client: ApiClient, uploads: Sequence[UploadFile]) -> ClassifyOutcome:
    """Send the photos: one through ``POST /predict``, several through ``/predict/batch``.

    A failed call gives every photo the same message; in a batch, a photo the API refuses
    carries the API's own reason while the others still get their prediction.
    """
    started = time.perf_counter()
    try:
        if len(uploads) == 1:
            answers = [FileOutcome(prediction=client.predict(uploads[0], top_k=ALL_LABELS))]
        else:
            batch = client.predict_batch(uploads, top_k=ALL_LABELS)
            answers = [
                FileOutcome(prediction=item.prediction)
                if item.prediction is not None
                else FileOutcome(
                    error=error_message(
                        _item_error(item.error or "no answer for this photo", item.status_code)
                    )
                )
                for item in sorted(batch.items, key=lambda item: item.index)
            ]
    except ApiError as exc:
        message = error_message(exc)
        return ClassifyOutcome(
            files=[FileOutcome(error=message, call_failed=True) for _ in uploads],
            status=exc.status,
            seconds=time.perf_counter() - started,
            error=message,
        )
    return ClassifyOutcome(
        files=answers,
        status="ok",
        seconds=time.perf_counter() - started,
        predictions=[a.prediction for a in answers if a.prediction is not None],
    )


def _item_error(detail: str, status_code: int) -> ApiError:
    """The error class one file of a batch would have raised on its own."""
    if status_code >= 500:
        return ApiServerError(detail, status_code)
    return ApiRefused(detail, status_code)
