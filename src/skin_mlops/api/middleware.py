"""Two pure-ASGI middlewares: request body limits and request metrics.

:class:`BodySizeLimitMiddleware` refuses an over-large body with 413 *before* it is
buffered: a ``Content-Length`` over the limit is answered at once without reading the body,
and a body without one (chunked) is counted while it streams in and cut off at the limit.
Limits are per route (an upload route allows ``MAX_UPLOAD_BYTES`` plus multipart framing).

:class:`MetricsMiddleware` times every request and labels it with the *route template*
(``/predict``), never the raw path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skin_mlops.api.metrics import UNMATCHED_ENDPOINT, ApiMetrics, method_label

MULTIPART_OVERHEAD_BYTES = 64 * 1024


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` when a streamed body passes its route's limit.

    An :class:`~starlette.exceptions.HTTPException` (413) so that FastAPI's body parsing
    re-raises it as is and the app's error handler renders it.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the limit of {limit:,} bytes")
        self.limit = limit


async def send_json_error(send: Send, status: int, detail: str) -> None:
    """Answer with ``{"detail": ...}`` directly at the ASGI level."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """413 for bodies over ``limit_for(path)`` bytes, without buffering them."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                declared_bytes = int(declared)
            except ValueError:
                await send_json_error(send, 400, "invalid Content-Length header")
                return
            if declared_bytes > limit:
                await send_json_error(
                    send,
                    413,
                    f"request body of {declared_bytes:,} bytes is over the limit of {limit:,}",
                )
                return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError as exc:
            if response_started:
                raise
            await send_json_error(send, 413, exc.detail)


class MetricsMiddleware:
    """Counts and times requests by route template, method and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, routes: Callable[[], list]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _endpoint(self, scope: Scope) -> str:
        partial = None
        for route in self.routes():
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
            if match == Match.PARTIAL and partial is None:
                partial = route.path
        return partial or UNMATCHED_ENDPOINT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self._endpoint(scope)
        method = method_label(scope["method"])
        status = 500
        started = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_progress = self.metrics.in_progress.labels(endpoint=endpoint, method=method)
        in_progress.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            in_progress.dec()
            self.metrics.requests.labels(endpoint=endpoint, method=method, status=str(status)).inc()
            self.metrics.request_duration.labels(endpoint=endpoint, method=method).observe(
                time.perf_counter() - started
            )
