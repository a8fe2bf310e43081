"""``POST /predict`` (one image) and ``POST /predict/batch`` (several)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response

from skin_mlops.api.schemas import BatchItem, BatchPrediction, ErrorResponse, Prediction
from skin_mlops.api.services import (
    ServicesDep,
    predict_bytes,
    read_upload,
    until_disconnected,
)
from skin_mlops.api.timing import current_stage_times

router = APIRouter(tags=["prediction"])

_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse, "description": "malformed multipart body"},
    413: {"model": ErrorResponse, "description": "file or body too large, or too many pixels"},
    415: {"model": ErrorResponse, "description": "not a JPEG/PNG image"},
    422: {"model": ErrorResponse, "description": "empty, corrupt or truncated image; bad request"},
    503: {
        "model": ErrorResponse,
        "description": "no model loaded yet, too many images queued, out of memory or "
        "shutting down (see Retry-After)",
    },
}
TopK = Annotated[
    int, Query(ge=1, le=100, description="how many labels to rank (capped at the label count)")
]


@router.post("/predict", response_model=Prediction, responses=_ERRORS)
async def predict(
    request: Request,
    file: Annotated[UploadFile, File(description="one JPEG or PNG photo")],
    services: ServicesDep,
    top_k: TopK = 3,
) -> Response:
    """Classify one photo: the top label, its calibrated confidence and the top-k ranking."""
    data = await read_upload(file, services.settings.max_upload_bytes)
    times = current_stage_times()
    if times is not None:
        times.since_body("parse")
    prediction = await until_disconnected(request, predict_bytes(services, data, top_k))
    return json_response(prediction)


def json_response(body: Prediction | BatchPrediction) -> Response:
    """``body`` as JSON (pydantic's serialiser), timed as the ``json`` stage."""
    started = time.perf_counter()
    content = body.__pydantic_serializer__.to_json(body)
    times = current_stage_times()
    if times is not None:
        times.add("json", time.perf_counter() - started)
    return Response(content, media_type="application/json")


@router.post("/predict/batch", response_model=BatchPrediction, responses=_ERRORS)
async def predict_batch(
    request: Request,
    files: Annotated[list[UploadFile], File(description="several JPEG or PNG photos")],
    services: ServicesDep,
    top_k: TopK = 3,
) -> Response:
    """Classify several photos in one request; a bad file gets its own error, not the batch's."""
    limit = services.settings.max_batch_files
    if len(files) > limit:
        raise HTTPException(
            413, f"{len(files)} files is over the limit of {limit} per batch request"
        )

    async def one(index: int, upload: UploadFile) -> BatchItem:
        filename = (upload.filename or None) and upload.filename[:255]
        try:
            data = await read_upload(upload, services.settings.max_upload_bytes)
            prediction = await predict_bytes(services, data, top_k)
        except HTTPException as exc:
            if exc.status_code == 503:
                raise
            return BatchItem(
                index=index, filename=filename, status_code=exc.status_code, error=str(exc.detail)
            )
        return BatchItem(index=index, filename=filename, status_code=200, prediction=prediction)

    async def every() -> list[BatchItem]:
        tasks = [asyncio.ensure_future(one(i, f)) for i, f in enumerate(files)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:  # a 503 / 500 for one file is the request's: stop the others
            for task in tasks:
                task.cancel()
            raise

    times = current_stage_times()
    if times is not None:
        times.since_body("parse")
    items = await until_disconnected(request, every())
    succeeded = sum(item.prediction is not None for item in items)
    return json_response(
        BatchPrediction(items=items, succeeded=succeeded, failed=len(items) - succeeded)
    )
