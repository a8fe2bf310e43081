"""Response bodies of the prediction service (they define the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    """Every error: one clear line in ``detail``."""

    detail: str = Field(examples=["not a supported image (expected one of JPEG, PNG)"])


class LabelProbability(BaseModel):
    """One label and its calibrated probability."""

    label: str
    probability: float = Field(ge=0, le=1)


class Prediction(BaseModel):
    """The model's answer for one image.

    ``confidence`` is the calibrated probability of ``label`` (softmax of the logits
    divided by the export's temperature). ``uncertain`` is true when it is below
    ``UNCERTAINTY_THRESHOLD`` or when the photo is out of distribution; ``warning`` then
    says so in words. ``in_distribution`` is the out-of-distribution guard's verdict (does
    the photo look like the training photos?) and ``ood_score`` its distance relative to
    the threshold (above 1: out of distribution); both are null for a model exported
    without the guard. ``inference_ms`` is the server-side time for this image: decode +
    preprocessing + batching + model.
    """

    label: str
    confidence: float = Field(ge=0, le=1)
    top_k: list[LabelProbability]
    model_version: str
    inference_ms: float = Field(ge=0)
    uncertain: bool
    in_distribution: bool | None = Field(
        default=None, description="false: unlike the photos the model was trained on"
    )
    ood_score: float | None = Field(
        default=None,
        ge=0,
        description="the guard's distance / its threshold: above 1 is out of distribution",
    )
    warning: str | None = None
    batch_size: int = Field(ge=1, description="images in the model call that served this one")


class BatchItem(BaseModel):
    """One file of a batch request: a prediction, or the error for that file alone."""

    index: int = Field(ge=0)
    filename: str | None = None
    status_code: int = Field(description="what a single POST /predict would have answered")
    prediction: Prediction | None = None
    error: str | None = None


class BatchPrediction(BaseModel):
    """Answers for every file of ``POST /predict/batch``, in upload order."""

    items: list[BatchItem]
    succeeded: int = Field(ge=0)
    failed: int = Field(ge=0)


class Health(BaseModel):
    """Liveness: the process answers."""

    status: str = "ok"


class Readiness(BaseModel):
    """Readiness: a model is loaded and warmed up."""

    ready: bool
    model_version: str | None = None
    detail: str | None = None


class ModelInfo(BaseModel):
    """The served model, as ``signature.json`` describes it, plus reload state."""

    model_version: str
    run_id: str | None
    backbone: str
    image_size: int
    labels: list[str]
    temperature: float
    preprocessing_id: str
    precision: str = Field(
        default="fp32", description="fp32 (model.onnx) or int8 (model.int8.onnx, gated)"
    )
    engine: str = Field(default="onnxruntime", description="onnxruntime or openvino")
    int8_gate: dict[str, float | int | str | None] | None = Field(
        default=None, description="the export's int8 quality gate figures (None: no int8 model)"
    )
    metrics: dict[str, float]
    created_at: str
    source: str
    loaded_at: float = Field(description="UNIX time the model started serving")
    warmup_ms: float
    last_reload_error: str | None = Field(
        default=None, description="why the newest candidate was refused (the old one serves)"
    )


class ReloadResult(BaseModel):
    """What ``POST /admin/reload`` did."""

    reloaded: bool
    model_version: str | None
    previous_version: str | None
    detail: str
