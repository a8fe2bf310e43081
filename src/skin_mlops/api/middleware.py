"""Pure-ASGI middlewares: request ids, request body limits and request metrics.

:class:`RequestIdMiddleware` gives every request an id: the client's ``X-Request-ID`` when
it is sane (1-128 of ``A-Z a-z 0-9 . _ : -``), else a fresh one. It is returned in the
``X-Request-ID`` header of every response, readable anywhere in the request's task with
:func:`current_request_id` (the batcher logs the ids of a failed batch), and an
unexpected exception is logged with it (and its traceback) and answered 500 with a
generic body naming only the id: ``{"detail": "internal server error (request id ...)"}``.

:class:`BodySizeLimitMiddleware` refuses an over-large body with 413 *before* it is
buffered: a ``Content-Length`` over the limit is answered at once without reading the body,
and a body without one (chunked) is counted while it streams in and cut off at the limit.
Limits are per route (an upload route allows ``MAX_UPLOAD_BYTES`` plus multipart framing).

:class:`MetricsMiddleware` times every request and labels it with the *route template*
(``/predict``), never the raw path.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar

from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skin_mlops.api.metrics import UNMATCHED_ENDPOINT, ApiMetrics, method_label

MULTIPART_OVERHEAD_BYTES = 64 * 1024
REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_REQUEST_ID: ContextVar[str | None] = ContextVar("skin_mlops_request_id", default=None)

log = logging.getLogger("skin_mlops.api")


def current_request_id() -> str | None:
    """The id of the request being handled in this task (``None`` outside a request)."""
    return _REQUEST_ID.get()


def internal_error_detail(request_id: str | None) -> str:
    """The generic body line of a 500: no exception text, only the id to find it in the log."""
    return f"internal server error (request id {request_id or 'unknown'})"


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


class RequestIdMiddleware:
    """``X-Request-ID`` in and out; unexpected exceptions logged with it, answered 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode("ascii"))
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                headers = [h for h in message.get("headers", []) if h[0].lower() != header[0]]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        token = _REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.error(
                "unexpected error on %s %s (request id %s)",
                scope.get("method"),
                scope.get("path"),
                request_id,
                exc_info=exc,
            )
            if response_started:  # too late for a 500: let the server close the connection
                raise
            await send_json_error(send_with_id, 500, internal_error_detail(request_id))
        finally:
            _REQUEST_ID.reset(token)


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
