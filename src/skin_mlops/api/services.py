"""What the routes share (settings, model runtime, batcher, metrics) and the prediction path.

The prediction path for one uploaded file, as :func:`predict_upload` runs it:

1. size check (``MAX_UPLOAD_BYTES`` -> 413; the middleware already cut bodies off at the
   route's limit, so nothing unbounded was buffered);
2. in the preprocess thread pool (never on the event loop): :func:`preprocess_bytes` of
   :mod:`skin_mlops.preprocessing` - the module training used - with the bomb guard
   ``MAX_IMAGE_PIXELS``; its typed errors become 415 / 422 / 413;
3. the micro-batcher runs the model; probabilities are ``softmax(logits / temperature)``.

Whose fault a failure is, in the status code: the client's image 413 / 415 / 422; the
server's state 503 with ``Retry-After`` (no model yet, ``MAX_QUEUED_IMAGES`` reached, out
of memory, shutting down); a bug 500 (generic body with the request id, traceback in the
log: :class:`~skin_mlops.api.middleware.RequestIdMiddleware`).

:func:`until_disconnected` runs a route's work while watching the connection: a client
that goes away cancels it, so its images leave the batcher's queue before the model runs
(nothing is computed for nobody); the request ends as 499 in the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Annotated, TypeVar

import numpy as np
from fastapi import Depends, HTTPException, Request, UploadFile

from skin_mlops import preprocessing
from skin_mlops.api.batching import (
    BatcherOverloadedError,
    BatcherStoppedError,
    BatchFailedError,
    MicroBatcher,
)
from skin_mlops.api.metrics import ApiMetrics
from skin_mlops.api.model_runtime import LoadedModel, ModelRuntime, retry_after_s
from skin_mlops.api.schemas import LabelProbability, Prediction
from skin_mlops.api.timing import StageTimes, current_stage_times
from skin_mlops.core.config import Settings

log = logging.getLogger("skin_mlops.api")
T = TypeVar("T")
RETRY_AFTER_S = 1
CLIENT_CLOSED_REQUEST = 499  # nginx's code: the client went away before the answer


class ClientDisconnectedError(Exception):
    """The client closed the connection before its answer was ready (nothing is sent)."""


def unavailable(detail: str, after_s: float = RETRY_AFTER_S) -> HTTPException:
    """A 503 that tells the client when to try again (``Retry-After``, whole seconds)."""
    return HTTPException(503, detail, headers={"Retry-After": str(max(1, round(after_s)))})


_IMAGE_ERROR_STATUS: tuple[tuple[type[preprocessing.ImageError], int], ...] = (
    (preprocessing.EmptyImageError, 422),
    (preprocessing.NotAnImageError, 415),
    (preprocessing.ImageTooLargeError, 413),
    (preprocessing.CorruptImageError, 422),
)


@dataclass
class Services:
    """Everything a request handler needs; one instance per app (``app.state.services``)."""

    settings: Settings
    metrics: ApiMetrics
    runtime: ModelRuntime
    batcher: MicroBatcher
    preprocess_pool: ThreadPoolExecutor | None = None


def get_services(request: Request) -> Services:
    """FastAPI dependency: the app's :class:`Services`."""
    return request.app.state.services


# A route parameter annotated ``ServicesDep`` receives the app's :class:`Services`.
ServicesDep = Annotated[Services, Depends(get_services)]


def require_model(services: Services) -> LoadedModel:
    """The model serving new requests, or 503 with the reason there is none."""
    model = services.runtime.current
    if model is None:
        reason = services.runtime.last_error or "the model is still loading"
        raise unavailable(f"no model is loaded yet: {reason}", retry_after_s(services.settings))
    return model


async def _wait_for_disconnect(request: Request) -> None:
    """Return once the client has gone (the body is already read: nothing else arrives)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it and raise :class:`ClientDisconnectedError` if the client goes.

    Cancelling the work cancels its batcher futures, so its images are dropped from the
    queue (a model call already running for them finishes, its result unused).
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task  # let it unwind: reservations released, futures cancelled
        watcher.cancel()
    if task.cancelled():
        raise ClientDisconnectedError
    return task.result()


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """The uploaded bytes, or 413 when the file is over ``limit`` bytes."""
    if upload.size is not None and upload.size > limit:
        raise HTTPException(
            413, f"file of {upload.size:,} bytes is over the limit of {limit:,} bytes"
        )
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"file is over the limit of {limit:,} bytes")
    return data


def _preprocess(
    data: bytes, size: int, max_pixels: int, timings: dict[str, float] | None = None
) -> np.ndarray:
    """Bytes -> model input, with every decoder failure mapped to an HTTP status.

    ``timings`` (a dict, filled in this thread) gets each preprocessing step's seconds and
    ``_work`` (the whole call), from which the caller derives the pool's wait.
    """
    started = time.perf_counter()
    try:
        return preprocessing.preprocess_bytes(data, size, max_pixels=max_pixels, timings=timings)
    except preprocessing.ImageError as exc:
        for error_type, status in _IMAGE_ERROR_STATUS:
            if isinstance(exc, error_type):
                raise HTTPException(status, str(exc)) from None
        raise HTTPException(422, str(exc)) from None
    except MemoryError:  # the server's state, not the image (pixel bombs are refused above)
        raise unavailable("the server is out of memory; retry in a moment") from None
    except Exception as exc:  # a decoder edge case: still the client's image
        log.warning(
            "image rejected by an unexpected decoder error: %s: %s", type(exc).__name__, exc
        )
        raise HTTPException(422, "the image could not be decoded") from None
    finally:
        if timings is not None:
            timings["_work"] = time.perf_counter() - started


OUT_OF_DISTRIBUTION_WARNING = (
    "this does not look like the clinical skin photos the model was trained on: its "
    "label means nothing here; use a close, well-lit photo of the skin lesion"
)


def build_prediction(
    services: Services,
    model: LoadedModel,
    probabilities: np.ndarray,
    top_k: int,
    elapsed_ms: float,
    batch_size: int,
    ood_score: float | None = None,
) -> Prediction:
    """Turn one row of probabilities into the response (and count it in the metrics).

    An out-of-distribution photo (the guard's score over its threshold) is uncertain
    whatever its confidence, with the guard's warning.
    """
    order = np.argsort(-probabilities, kind="stable")
    ranked = [
        LabelProbability(label=model.labels[i], probability=float(probabilities[i]))
        for i in order[: min(top_k, len(model.labels))]
    ]
    label, confidence = model.labels[order[0]], float(probabilities[order[0]])
    threshold = services.settings.uncertainty_threshold
    in_distribution = model.in_distribution(ood_score)
    low_confidence = confidence < threshold
    uncertain = low_confidence or in_distribution is False
    services.metrics.record_prediction(label, confidence, in_distribution)
    if in_distribution is False:
        warning: str | None = OUT_OF_DISTRIBUTION_WARNING
    elif low_confidence:
        warning = (
            f"low confidence ({confidence:.2f} < {threshold:.2f}): the model is unsure about "
            "this photo; retake it closer and in focus, or ask a clinician"
        )
    else:
        warning = None
    relative_score = (
        round(ood_score / model.signature.ood.threshold, 4)
        if ood_score is not None and model.signature.ood is not None
        else None
    )
    return Prediction(
        label=label,
        confidence=confidence,
        top_k=ranked,
        model_version=model.version,
        inference_ms=round(elapsed_ms, 3),
        uncertain=uncertain,
        in_distribution=in_distribution,
        ood_score=relative_score,
        warning=warning,
        batch_size=batch_size,
    )


def _record_preprocess(times: StageTimes, steps: dict[str, float], round_trip_s: float) -> None:
    """The preprocessing steps of one image, and the pool's wait around them."""
    work = steps.pop("_work", round_trip_s)
    times.add_all(steps)
    times.add("pool_wait", max(0.0, round_trip_s - work))


async def predict_bytes(services: Services, data: bytes, top_k: int) -> Prediction:
    """Preprocess ``data`` off the event loop, run it through the batcher, build the answer.

    Each stage's seconds go to the request's :class:`~skin_mlops.api.timing.StageTimes`
    (``Server-Timing``, ``api_stage_seconds``).
    """
    model = require_model(services)
    times = current_stage_times()
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    try:
        reservation = services.batcher.reserve()
    except (BatcherStoppedError, BatcherOverloadedError) as exc:
        raise unavailable(str(exc)) from None
    with reservation:
        steps: dict[str, float] | None = {} if times is not None else None
        try:
            pixels = await loop.run_in_executor(
                services.preprocess_pool,
                partial(
                    _preprocess, data, model.image_size, services.settings.max_image_pixels, steps
                ),
            )
        finally:
            if times is not None and steps is not None:
                _record_preprocess(times, steps, time.perf_counter() - started)
        try:
            result = await services.batcher.submit(model, pixels, reservation)
        except (BatcherStoppedError, BatcherOverloadedError) as exc:
            raise unavailable(str(exc)) from None
        except BatchFailedError as exc:
            if exc.out_of_memory:
                raise unavailable(str(exc)) from None
            raise  # a bug: 500 with the request id (RequestIdMiddleware)
    answered = time.perf_counter()
    elapsed_ms = (answered - started) * 1000
    prediction = build_prediction(
        services,
        result.model,
        result.probabilities,
        top_k,
        elapsed_ms,
        result.batch_size,
        result.ood_score,
    )
    if times is not None:
        times.add("batch_wait", result.wait_s)
        times.add("model", result.run_s)
        times.add("model_hop", result.hop_s)
        # softmax ran in the batch (its share is the call's time beyond run + hop)
        softmax_s = max(0.0, result.model_ms / 1000 - result.run_s - result.hop_s)
        times.add("postprocess", softmax_s + time.perf_counter() - answered)
    return prediction
