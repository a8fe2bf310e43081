"""Where a request's time goes: per-stage marks, ``Server-Timing`` and ``api_stage_seconds``.

:class:`StageTimingMiddleware` gives every HTTP request a :class:`StageTimes` (readable in
the request's task with :func:`current_stage_times`) and the code on the request's path
adds the seconds of each stage to it (a few ``time.perf_counter()`` calls: ~0.1 µs each).
The answer carries them in the standard ``Server-Timing`` header (milliseconds, W3C
``name;dur=ms``; browsers' dev tools show it), and when the response is sent every stage
is observed in the Prometheus histogram ``api_stage_seconds{stage}``.

The stages of ``POST /predict``, in order (see :data:`STAGES`):

==============  ============================================================================
``read``        the request's arrival at the app -> its last body chunk received
``parse``       last body chunk -> the route holds the file's bytes (multipart parsing,
                FastAPI's validation, reading the spooled upload)
``pool_wait``   waiting for a preprocess thread, and for the event loop to resume after it
``probe``       the image header (format, size, EXIF orientation) and the pixel-bomb check
``decode``      JPEG/PNG decode
``exif``        EXIF orientation, conversion to RGB
``resize``      short side to ``S``, centre crop
``normalise``   to ``float32[S, S, 3]`` (backbone scaling is inside the model graph)
``batch_wait``  queued in the micro-batcher until its model call starts
``model``       the ONNX Runtime call (logits and the out-of-distribution guard's score
                come out of the same graph), inside the inference thread
``model_hop``   handing the batch to the inference thread and back
``postprocess`` calibrated softmax, the guard's verdict, building the answer
``json``        serialising the answer
``app``         the whole time inside the app until the response starts (the sum of the
                above plus whatever no stage covers); ``send`` (writing the response) is
                known only after the header is gone: it is in the histogram only
==============  ============================================================================

For ``POST /predict/batch`` the image stages are summed over its files. A stage that did
not happen (a 415 before decoding) is absent.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skin_mlops.api.metrics import ApiMetrics

STAGES = (
    "read",
    "parse",
    "pool_wait",
    "probe",
    "decode",
    "exif",
    "resize",
    "normalise",
    "batch_wait",
    "model",
    "model_hop",
    "postprocess",
    "json",
)
TOTAL_STAGE = "app"
SEND_STAGE = "send"
SERVER_TIMING_HEADER = b"server-timing"
_CURRENT: ContextVar[StageTimes | None] = ContextVar("skin_mlops_stage_times", default=None)


class StageTimes:
    """Seconds per stage of one request (added up when a stage happens more than once)."""

    __slots__ = ("body_end", "seconds", "started")

    def __init__(self, started: float | None = None) -> None:
        self.started = time.perf_counter() if started is None else started
        self.body_end: float | None = None
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to ``stage``."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def add_all(self, seconds: dict[str, float]) -> None:
        """Add several stages at once (e.g. the preprocessing steps of one image)."""
        for stage, value in seconds.items():
            self.add(stage, value)

    def since_body(self, stage: str, now: float | None = None) -> float:
        """Record ``stage`` as the time since the last body chunk arrived; returns now."""
        now = time.perf_counter() if now is None else now
        if self.body_end is not None:
            self.add(stage, now - self.body_end)
        return now

    def header_value(self, total_s: float) -> str:
        """``Server-Timing`` value: the stages in :data:`STAGES` order, then ``app``."""
        order = {name: i for i, name in enumerate(STAGES)}
        stages = sorted(self.seconds.items(), key=lambda item: order.get(item[0], len(order)))
        parts = [f"{name};dur={seconds * 1000:.3f}" for name, seconds in stages]
        parts.append(f"{TOTAL_STAGE};dur={total_s * 1000:.3f}")
        return ", ".join(parts)


def current_stage_times() -> StageTimes | None:
    """The :class:`StageTimes` of the request handled in this task (None outside one)."""
    return _CURRENT.get()


def parse_server_timing(value: str) -> dict[str, float]:
    """``"decode;dur=1.2, model;dur=9"`` -> ``{"decode": 1.2, "model": 9.0}`` (ms)."""
    out: dict[str, float] = {}
    for entry in value.split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, number = param.strip().partition("=")
            if key == "dur" and name:
                out[name] = out.get(name, 0.0) + float(number)
    return out


class StageTimingMiddleware:
    """Times the stages of every HTTP request (see the module docstring).

    ``header``: add ``Server-Timing`` to the responses (setting ``SERVER_TIMING``).
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, header: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.header = header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        times = StageTimes()
        response_started: float | None = None

        async def timed_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                if times.body_end is None:
                    times.body_end = time.perf_counter()
                    times.add("read", times.body_end - times.started)
            return message

        async def timed_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = time.perf_counter()
                if self.header:
                    value = times.header_value(response_started - times.started)
                    headers = [
                        h
                        for h in message.get("headers", [])
                        if h[0].lower() != SERVER_TIMING_HEADER
                    ]
                    message = {
                        **message,
                        "headers": [*headers, (SERVER_TIMING_HEADER, value.encode("latin-1"))],
                    }
            await send(message)
            if (
                message["type"] == "http.response.body"
                and not message.get("more_body", False)
                and response_started is not None
                and "model" in times.seconds  # requests that ran the model
            ):
                self._observe(times, response_started, time.perf_counter())

        token = _CURRENT.set(times)
        try:
            await self.app(scope, timed_receive, timed_send)
        finally:
            _CURRENT.reset(token)

    def _observe(self, times: StageTimes, response_started: float, sent: float) -> None:
        histogram = self.metrics.stage_seconds
        for stage, seconds in times.seconds.items():
            histogram.labels(stage=stage).observe(seconds)
        histogram.labels(stage=TOTAL_STAGE).observe(response_started - times.started)
        histogram.labels(stage=SEND_STAGE).observe(sent - response_started)
