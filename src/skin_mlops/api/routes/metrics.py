"""``GET /metrics``: Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from skin_mlops.api.services import ServicesDep

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(services: ServicesDep) -> Response:
    """Every metric of :mod:`skin_mlops.api.metrics`, for Prometheus to scrape."""
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
