"""Prometheus metrics of the prediction service (prometheus-client).

Names are a stable contract (dashboards and alerts use them):

=================================  =========  ==========================================
name                               type       labels
=================================  =========  ==========================================
``api_requests_total``             counter    ``endpoint`` (route template), ``method``,
                                              ``status``
``api_request_duration_seconds``   histogram  ``endpoint``, ``method``
``fastapi_request_inprogress``     gauge      ``endpoint``, ``method``
``api_predictions_total``          counter    ``label`` (a model label)
``api_prediction_confidence``      histogram  ``label``
``api_batch_size``                 histogram  -
``api_model_info``                 gauge = 1  ``version``, ``backbone``, ``precision``, ``engine``
``api_model_reloads_total``        counter    ``result`` (``success`` / ``refused``)
``api_model_reload_failing``       gauge      - (1 while the newest candidate is refused)
``api_stage_seconds``              histogram  ``stage``: a stage of a prediction request
                                              (:data:`skin_mlops.api.timing.STAGES`,
                                              ``app``, ``send``)
``api_images_dropped_total``       counter    ``reason``: ``queue_full``, ``client_gone``,
                                              ``batch_failed``, ``out_of_memory``,
                                              ``shutdown`` (images given no prediction)
=================================  =========  ==========================================

Every label value is bounded: endpoints are route templates (``/predict``, or
``unmatched``), methods are the HTTP verbs (others become ``OTHER``), statuses are codes,
labels come from the model. File names, paths and hashes never become label values.

Each app gets its own :class:`~prometheus_client.CollectorRegistry`, so several apps (tests)
can live in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED_ENDPOINT = "unmatched"

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


def method_label(method: str) -> str:
    """An HTTP method as a bounded label value."""
    upper = method.upper()
    return upper if upper in KNOWN_METHODS else "OTHER"


class ApiMetrics:
    """All metrics of one app, registered in :attr:`registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "api_requests_total",
            "HTTP requests handled, by route template, method and status code.",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "api_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            ["endpoint", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "api_stage_seconds",
            "Seconds per stage of a prediction request (read, parse, decode, model, json, "
            "...; see skin_mlops.api.timing), for requests that ran the model.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "fastapi_request_inprogress",
            "Requests being handled right now.",
            ["endpoint", "method"],
            registry=r,
        )
        self.predictions = Counter(
            "api_predictions_total", "Predictions returned, by top-1 label.", ["label"], registry=r
        )
        self.confidence = Histogram(
            "api_prediction_confidence",
            "Calibrated top-1 probability of returned predictions.",
            ["label"],
            buckets=_CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "api_batch_size",
            "Images per ONNX Runtime call (micro-batching).",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "api_model_info",
            "The served model (value 1): version, backbone, precision (fp32/int8) and engine.",
            ["version", "backbone", "precision", "engine"],
            registry=r,
        )
        self.reloads = Counter(
            "api_model_reloads_total",
            "Model reload attempts: success (swapped in) or refused (kept the old model).",
            ["result"],
            registry=r,
        )
        self.label_train_share = Gauge(
            "api_model_label_train_share",
            "Each label's share of the served model's training photos (0-1; drift baseline).",
            ["label"],
            registry=r,
        )
        self.images_dropped = Counter(
            "api_images_dropped_total",
            "Admitted or refused images that got no prediction, by reason: queue_full (503 "
            "at admission), client_gone (dropped before the model ran), batch_failed, "
            "out_of_memory, shutdown.",
            ["reason"],
            registry=r,
        )
        self.out_of_distribution = Counter(
            "api_out_of_distribution_total",
            "Predictions whose photo the out-of-distribution guard flagged (unlike the "
            "training photos), by top-1 label.",
            ["label"],
            registry=r,
        )
        self.reload_failing = Gauge(
            "api_model_reload_failing",
            "1 while the newest model candidate is refused and an older model keeps serving.",
            registry=r,
        )

    def set_model(
        self,
        version: str,
        backbone: str,
        train_shares: dict[str, float] | None = None,
        labels: list[str] | None = None,
        precision: str = "fp32",
        engine: str = "onnxruntime",
    ) -> None:
        """Point ``api_model_info`` (and the training shares) at the model now served.

        ``api_out_of_distribution_total`` is created at 0 for each of the model's
        ``labels``, so its share is 0 (not absent) until a photo is flagged.
        """
        self.model_info.clear()
        self.model_info.labels(
            version=version, backbone=backbone, precision=precision, engine=engine
        ).set(1)
        self.label_train_share.clear()
        for label, share in (train_shares or {}).items():
            self.label_train_share.labels(label=label).set(share)
        for label in labels or []:
            self.out_of_distribution.labels(label=label)

    def record_prediction(
        self, label: str, confidence: float, in_distribution: bool | None = None
    ) -> None:
        """Count one returned prediction (and an out-of-distribution one apart)."""
        self.predictions.labels(label=label).inc()
        self.confidence.labels(label=label).observe(confidence)
        if in_distribution is False:
            self.out_of_distribution.labels(label=label).inc()
