"""``GET /model``: what is being served."""

from __future__ import annotations

from fastapi import APIRouter

from skin_mlops.api.redact import redact_text
from skin_mlops.api.schemas import ErrorResponse, ModelInfo
from skin_mlops.api.services import ServicesDep, require_model

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelInfo, responses={503: {"model": ErrorResponse}})
async def model_info(services: ServicesDep) -> ModelInfo:
    """Labels, version, backbone and training metrics of the served model."""
    model = require_model(services)
    signature = model.signature
    return ModelInfo(
        model_version=signature.model_version,
        run_id=signature.run_id,
        backbone=signature.backbone,
        image_size=signature.image_size,
        labels=signature.labels,
        temperature=signature.temperature,
        preprocessing_id=signature.preprocessing_id,
        precision=model.precision,
        engine=model.engine,
        int8_gate=signature.int8.model_dump() if signature.int8 else None,
        metrics=signature.metrics,
        created_at=signature.created_at,
        source=redact_text(services.runtime.source.description),
        loaded_at=model.loaded_at,
        warmup_ms=round(model.warmup_ms, 1),
        last_reload_error=services.runtime.last_error,
    )
