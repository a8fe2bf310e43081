"""``POST /predict`` (one image) and ``POST /predict/batch`` (several)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Query, UploadFile

from skin_mlops.api.schemas import BatchItem, BatchPrediction, ErrorResponse, Prediction
from skin_mlops.api.services import ServicesDep, predict_bytes, read_upload

router = APIRouter(tags=["prediction"])

_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse, "description": "malformed multipart body"},
    413: {"model": ErrorResponse, "description": "file or body too large, or too many pixels"},
    415: {"model": ErrorResponse, "description": "not a JPEG/PNG image"},
    422: {"model": ErrorResponse, "description": "empty, corrupt or truncated image; bad request"},
    503: {"model": ErrorResponse, "description": "no model loaded yet"},
}
TopK = Annotated[
    int, Query(ge=1, le=100, description="how many labels to rank (capped at the label count)")
]


@router.post("/predict", response_model=Prediction, responses=_ERRORS)
async def predict(
    file: Annotated[UploadFile, File(description="one JPEG or PNG photo")],
    services: ServicesDep,
    top_k: TopK = 3,
) -> Prediction:
    """Classify one photo: the top label, its calibrated confidence and the top-k ranking."""
    data = await read_upload(file, services.settings.max_upload_bytes)
    return await predict_bytes(services, data, top_k)


@router.post("/predict/batch", response_model=BatchPrediction, responses=_ERRORS)
async def predict_batch(
    files: Annotated[list[UploadFile], File(description="several JPEG or PNG photos")],
    services: ServicesDep,
    top_k: TopK = 3,
) -> BatchPrediction:
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

    items = await asyncio.gather(*(one(i, f) for i, f in enumerate(files)))
    succeeded = sum(item.prediction is not None for item in items)
    return BatchPrediction(items=list(items), succeeded=succeeded, failed=len(items) - succeeded)
