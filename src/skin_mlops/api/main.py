"""The FastAPI app: ``create_app(settings) -> FastAPI``.

Start-up (lifespan): the preprocess thread pool and the micro-batcher start, the model is
loaded, validated and warmed up (``/ready`` turns 200), and a poller watches the model
source every ``MODEL_POLL_SECONDS`` (0: only until a first model serves). If no model can
be loaded the service still starts: ``/health`` answers, ``/ready`` and ``/predict`` say
why with 503, and the poller picks the model up once it is published.

With a registry source and MLflow down, start-up does not wait for it: ``/ready`` says
"model source unreachable" and the poller (every ``MODEL_POLL_SECONDS``, or every few
seconds while no model serves when polling is off) loads the model once MLflow answers.

Errors are always JSON ``{"detail": "<one line>"}``; every response carries an
``X-Request-ID`` and a ``Server-Timing`` header (each stage's milliseconds, see
:mod:`skin_mlops.api.timing`; ``SERVER_TIMING=false`` leaves it out); an unexpected
exception is logged with that id and its traceback and answered 500 with a generic body
naming the id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version as package_version

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from skin_mlops import preprocessing
from skin_mlops.api.batching import MicroBatcher
from skin_mlops.api.metrics import ApiMetrics
from skin_mlops.api.middleware import (
    MULTIPART_OVERHEAD_BYTES,
    BodySizeLimitMiddleware,
    MetricsMiddleware,
    RequestIdMiddleware,
    internal_error_detail,
)
from skin_mlops.api.model_runtime import ModelRuntime, make_source
from skin_mlops.api.routes import admin, health, metrics, model, predict
from skin_mlops.api.services import CLIENT_CLOSED_REQUEST, ClientDisconnectedError, Services
from skin_mlops.api.timing import StageTimingMiddleware
from skin_mlops.core.config import Settings, get_settings

log = logging.getLogger("skin_mlops.api")

_SMALL_BODY_LIMIT = 64 * 1024


def _body_limit(settings: Settings):  # noqa: ANN202 - returns a path -> bytes function
    """Per-route request body limits (bytes) for :class:`BodySizeLimitMiddleware`."""
    single = settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    batch = settings.max_batch_upload_bytes + MULTIPART_OVERHEAD_BYTES

    def limit_for(path: str) -> int:
        if path == "/predict":
            return single
        if path == "/predict/batch":
            return batch
        return _SMALL_BODY_LIMIT

    return limit_for


def _one_line_validation_error(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line_validation_error(exc)}, 422)

    @app.exception_handler(ClientDisconnectedError)
    async def client_gone(_: Request, __: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; metrics do

    # RequestIdMiddleware answers unexpected exceptions; this catches one raised outside it.
    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        log.error(
            "unexpected error on %s %s (request id %s)",
            request.method,
            request.url.path,
            request_id,
            exc_info=exc,
        )
        return JSONResponse({"detail": internal_error_detail(request_id)}, 500)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the prediction service for ``settings`` (default: :func:`get_settings`)."""
    settings = settings or get_settings()
    preprocessing.set_jpeg_decoder(settings.jpeg_decoder)
    api_metrics = ApiMetrics()
    runtime = ModelRuntime(settings, make_source(settings), api_metrics)
    batcher = MicroBatcher(
        settings.max_batch_size,
        settings.max_batch_wait_ms,
        api_metrics,
        max_queued=settings.max_queued_images,
    )
    services = Services(settings, api_metrics, runtime, batcher)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        services.preprocess_pool = ThreadPoolExecutor(
            settings.preprocess_workers, thread_name_prefix="preprocess"
        )
        batcher.start()
        await runtime.reload()
        # Polls every MODEL_POLL_SECONDS; with 0, retries only until a first model serves.
        poller = asyncio.create_task(runtime.poll_forever(), name="model-poller")
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await batcher.stop()
            services.preprocess_pool.shutdown(wait=True)

    app = FastAPI(
        title="skin-mlops prediction API",
        description="Skin-lesion photo classification on ONNX Runtime, micro-batched.",
        version=package_version("skin-mlops"),
        lifespan=lifespan,
    )
    app.state.services = services
    for router in (predict.router, health.router, model.router, metrics.router, admin.router):
        app.include_router(router)
    _install_error_handlers(app)
    # Outermost last: metrics see every status; every response, a 413 of the body limit
    # too, gets its request id.
    app.add_middleware(BodySizeLimitMiddleware, limit_for=_body_limit(settings))
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=api_metrics, routes=lambda: app.router.routes)
    # Outermost: its "read" starts when the request reaches the app, "app" ends at the
    # response's start (Server-Timing, api_stage_seconds).
    app.add_middleware(StageTimingMiddleware, metrics=api_metrics, header=settings.server_timing)
    return app
