"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.responses import JSONResponse

from app.routers.deps import BroadcasterDep, RegistryDep

router = APIRouter(tags=["health"])


class HealthResponse(BaseModel):
    status: Literal["healthy"]
    service: Literal["websocket-service"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    reason: str | None = None
    broadcaster: str


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
    status = broadcaster.status()
    if not registry.accepting:
        body = ReadyResponse(
            status="not_ready", reason="shutting down or not started", broadcaster=status.detail
        )
        return JSONResponse(body.model_dump(), status_code=503)
    return JSONResponse(ReadyResponse(status="ready", broadcaster=status.detail).model_dump())
