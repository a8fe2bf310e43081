"""``GET /health`` (liveness) and ``GET /ready`` (model loaded and warmed up)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from skin_mlops.api.schemas import Health, Readiness
from skin_mlops.api.services import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """The process is up and answering (it may not have a model yet: see ``/ready``)."""
    return Health()


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(services: ServicesDep) -> Readiness | JSONResponse:
    """200 once a model is loaded and warmed up; 503 (with the reason) before that."""
    model = services.runtime.current
    if model is None:
        body = Readiness(ready=False, detail=services.runtime.last_error or "model loading")
        return JSONResponse(body.model_dump(), status_code=503)
    return Readiness(ready=True, model_version=model.version)
