"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from app.routers.deps import BroadcasterDep, RegistryDep

router = APIRouter(tags=["health"])


class HealthResponse(BaseModel):
    status: Literal["healthy"]
    service: Literal["websocket-service"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    reason: str | None = None
    broadcaster: str = Field(description="The broadcaster's state, e.g. 'redis connected'")
    broadcaster_connected: bool


@router.get("/health", response_model=HealthResponse, summary="Liveness: the process serves")
async def health() -> HealthResponse:
    return HealthResponse(status="healthy", service="websocket-service")


@router.get(
    "/ready",
    response_model=ReadyResponse,
    summary="Readiness: the instance accepts new connections",
    responses={503: {"model": ReadyResponse, "description": "Not accepting connections"}},
)
async def ready(registry: RegistryDep, broadcaster: BroadcasterDep) -> JSONResponse:
    # A Redis outage does not fail readiness: every instance shares that Redis, so failing
    # would pull all of them out of the load balancer at once, while each can still serve its
    # own rooms. The state is reported here and in websocket_redis_connected for alerting.
    status = broadcaster.status()
    body = ReadyResponse(
        status="ready" if registry.accepting else "not_ready",
        reason=None if registry.accepting else "shutting down or not started",
        broadcaster=status.detail,
        broadcaster_connected=status.connected,
    )
    return JSONResponse(body.model_dump(), status_code=200 if registry.accepting else 503)
