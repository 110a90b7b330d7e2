"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from app.routers.deps import BroadcasterDep, RegistryDep, WriterDep

router = APIRouter(tags=["health"])


class HealthResponse(BaseModel):
    status: Literal["healthy"]
    service: Literal["websocket-service"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    reason: str | None = None
    broadcaster: str = Field(description="The broadcaster's state, e.g. 'redis connected'")
    broadcaster_connected: bool
    document_store: Literal["up", "failing"] = Field(
        description="'failing' from a failed document store call until the next one that "
        "succeeds: edits are applied and relayed, acknowledgements wait"
    )
    document_pending_bytes: int = Field(
        description="Bytes of updates applied but not stored yet (DOCUMENT_PENDING_BYTES at most)"
    )


@router.get("/health", response_model=HealthResponse, summary="Liveness: the process serves")
async def health() -> HealthResponse:
    return HealthResponse(status="healthy", service="websocket-service")


@router.get(
    "/ready",
    response_model=ReadyResponse,
    summary="Readiness: the instance accepts new connections",
    responses={503: {"model": ReadyResponse, "description": "Not accepting connections"}},
)
async def ready(
    registry: RegistryDep, broadcaster: BroadcasterDep, writer: WriterDep
) -> JSONResponse:
    # Neither a Redis nor a database outage fails readiness: every instance shares them, so
    # failing would pull all of them out of the load balancer at once, while each can still
    # serve its rooms (and keep their edits until the store is back). Both states are reported
    # here and in metrics for alerting.
    status = broadcaster.status()
    body = ReadyResponse(
        status="ready" if registry.accepting else "not_ready",
        reason=None if registry.accepting else "shutting down or not started",
        broadcaster=status.detail,
        broadcaster_connected=status.connected,
        document_store="up" if writer.healthy else "failing",
        document_pending_bytes=writer.pending_bytes,
    )
    return JSONResponse(body.model_dump(), status_code=200 if registry.accepting else 503)
