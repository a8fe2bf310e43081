"""``POST /admin/reload``: load the source's current model now (bearer token).

Disabled (403) unless ``ADMIN_TOKEN`` is set; a missing or wrong token is 401. The reload
is forced (the current source version is loaded even if it looks unchanged), validated and
warmed up off to the side; a refused model (or nothing published) answers 409, a source
that cannot be asked now (MLflow unreachable) 503 with ``Retry-After``, an internal error
500; in each case the old model keeps serving.
Polling (``MODEL_POLL_SECONDS``) does the same automatically when the source changes.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from skin_mlops.api.middleware import current_request_id, internal_error_detail
from skin_mlops.api.model_runtime import retry_after_s
from skin_mlops.api.schemas import ErrorResponse, ReloadResult
from skin_mlops.api.services import ServicesDep, unavailable

router = APIRouter(prefix="/admin", tags=["admin"])
_bearer = HTTPBearer(auto_error=False, description="the ADMIN_TOKEN setting")


def require_admin(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """403 when admin endpoints are disabled, 401 without the right bearer token."""
    token = services.settings.admin_token
    if token is None or not token.get_secret_value():
        raise HTTPException(403, "admin endpoints are disabled (set ADMIN_TOKEN to enable them)")
    if credentials is None or not secrets.compare_digest(
        credentials.credentials.encode(), token.get_secret_value().encode()
    ):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


@router.post(
    "/reload",
    response_model=ReloadResult,
    dependencies=[Depends(require_admin)],
    responses={
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse},
        409: {
            "model": ErrorResponse,
            "description": "the new model was refused; the old one serves",
        },
        503: {
            "model": ErrorResponse,
            "description": "the model source (MLflow) is unreachable; the old model serves",
        },
    },
)
async def reload_model(services: ServicesDep) -> ReloadResult:
    """Load, validate, warm up and swap in the source's current model."""
    outcome = await services.runtime.reload(force=True)
    if not outcome.reloaded:
        serving = f"; still serving {outcome.previous_version}" if outcome.previous_version else ""
        if outcome.kind == "unavailable":
            retry = retry_after_s(services.settings)
            raise unavailable(f"new model {outcome.detail}{serving}", retry)
        if outcome.kind == "error":
            raise HTTPException(500, f"{internal_error_detail(current_request_id())}{serving}")
        raise HTTPException(409, f"new model {outcome.detail}{serving}")
    return ReloadResult(
        reloaded=True,
        model_version=outcome.model_version,
        previous_version=outcome.previous_version,
        detail=outcome.detail,
    )
