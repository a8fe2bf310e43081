"""Prometheus exporter of the web app: its own registry, its own port (``WEBAPP_METRICS_PORT``).

Streamlit re-runs the page file on every interaction (and re-imports edited modules with
the file watcher on), so metrics registered on the default registry would be registered
twice. The page builds one :class:`WebappMetrics` per process through
``st.cache_resource``; each instance has its own :class:`CollectorRegistry`. A port that is
already taken is logged and leaves the counters working without an HTTP endpoint: a
re-run must never crash because the exporter exists already.

Labels stay low-cardinality: ``label`` is one of the model's labels or ``other``,
``status`` one of :data:`skin_mlops.webapp.client.CALL_STATUSES`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from skin_mlops.webapp.client import CALL_STATUSES, CallStatus

log = logging.getLogger(__name__)

# Round trip page -> API -> page: tens of ms for one photo, seconds for a batch on CPU.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class WebappMetrics:
    """The web app's counters and the exporter serving them.

    Attributes:
        port: the port the exporter listens on, or ``None`` when it could not start.
        problem: why it could not start (a busy port), else ``None``.
    """

    registry: CollectorRegistry
    page_views: Counter
    uploads: Counter
    predict_clicks: Counter
    prediction_results: Counter
    prediction_latency: Histogram
    low_confidence: Counter
    port: int | None = None
    problem: str | None = None
    _server: WSGIServer | None = field(default=None, repr=False)

    def observe_call(self, status: CallStatus, seconds: float) -> None:
        """One API round trip of the page, by how it ended."""
        self.prediction_latency.labels(status=status).observe(seconds)

    def record_result(self, label: str, *, low_confidence: bool) -> None:
        """One prediction shown (``label`` already mapped to a known label or ``other``)."""
        self.prediction_results.labels(label=label).inc()
        if low_confidence:
            self.low_confidence.inc()

    def declare_labels(self, labels: Iterable[str]) -> None:
        """Create the per-label series at 0, so a rate exists before the first prediction."""
        for label in labels:
            self.prediction_results.labels(label=label)

    def stop(self) -> None:
        """Stop the HTTP exporter (tests; the page's exporter lives as long as the process)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def create_metrics(port: int | None, host: str = "127.0.0.1") -> WebappMetrics:
    """Build the metrics on a fresh registry and serve them on ``host:port``.

    Args:
        port: where to serve ``/metrics``; 0 = any free port; ``None`` = do not serve.
        host: interface to bind (``0.0.0.0`` in a container).
    """
    registry = CollectorRegistry(auto_describe=True)
    metrics = WebappMetrics(
        registry=registry,
        page_views=Counter("webapp_page_views", "Page sessions opened.", registry=registry),
        uploads=Counter("webapp_uploads", "Photos uploaded to the page.", registry=registry),
        predict_clicks=Counter(
            "webapp_predict_clicks", "Clicks on the classify button.", registry=registry
        ),
        prediction_results=Counter(
            "webapp_prediction_results",
            "Predictions shown, by predicted label.",
            ["label"],
            registry=registry,
        ),
        prediction_latency=Histogram(
            "webapp_prediction_latency_seconds",
            "Round trip of one prediction call from the page to the API, by outcome.",
            ["status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        low_confidence=Counter(
            "webapp_low_confidence",
            "Predictions shown whose top probability was under the page's threshold.",
            registry=registry,
        ),
    )
    for status in CALL_STATUSES:
        metrics.prediction_latency.labels(status=status)
    if port is None:
        return metrics
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        metrics.problem = f"metrics exporter not started on {host}:{port}: {exc.strerror or exc}"
        log.warning("%s (set WEBAPP_METRICS_PORT to move it)", metrics.problem)
        return metrics
    metrics._server = server
    metrics.port = server.server_address[1]
    log.info("webapp metrics on http://%s:%d/metrics", host, metrics.port)
    return metrics


_started: dict[tuple[int, str], WebappMetrics] = {}
_started_lock = threading.Lock()


def process_metrics(port: int, host: str = "127.0.0.1") -> WebappMetrics:
    """The process's metrics for ``host:port``, created and served on first use.

    ``skin-mlops webapp`` calls this before Streamlit starts, so ``/metrics`` answers before
    the first visit; the page calls it again (through ``st.cache_resource``) and gets the
    same object. A fixed port is served once; port 0 means "a new free port" each time.
    """
    with _started_lock:
        key = (port, host)
        if port and key in _started:
            return _started[key]
        metrics = create_metrics(port, host)
        if port:
            _started[key] = metrics
        return metrics
