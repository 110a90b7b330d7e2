"""Room statistics for operators, behind a bearer token."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from app.errors import Refusal
from app.routers.deps import AuthDep, BroadcasterDep, RegistryDep, StatsRoleDep
from app.routers.errors import ErrorResponse

router = APIRouter(tags=["stats"])

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="A JWT signed with the service's key (the same kind WebSocket clients use).",
)


class RoomStats(BaseModel):
    room_id: str
    client_count: int
    created_at: datetime
    last_activity: datetime


class ClusterTotals(BaseModel):
    instances: int
    total_rooms: int
    total_clients: int


class StatsResponse(BaseModel):
    total_rooms: int = Field(description="Rooms on this instance")
    total_clients: int = Field(description="Connections on this instance")
    rooms: list[RoomStats]
    instance_id: str | None = Field(
        default=None, description="This instance, when several share Redis"
    )
    cluster: ClusterTotals | None = Field(
        default=None, description="Totals over every live instance, when Redis is configured"
    )


@router.get(
    "/stats",
    response_model=StatsResponse,
    summary="Rooms and connections on this instance",
    responses={
        401: {"model": ErrorResponse, "description": "Missing or invalid token"},
        403: {"model": ErrorResponse, "description": "The token lacks STATS_REQUIRED_ROLE"},
    },
)
async def stats(
    auth: AuthDep,
    registry: RegistryDep,
    broadcaster: BroadcasterDep,
    required_role: StatsRoleDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> StatsResponse:
    identity = auth.verify(credentials.credentials if credentials else None)
    if required_role is not None and required_role not in identity.roles:
        raise Refusal("forbidden", f"expected a token with the role {required_role!r}", status=403)
    rooms = [
        RoomStats(
            room_id=room.room_id,
            client_count=room.client_count,
            created_at=room.created_at,
            last_activity=room.last_activity,
        )
        for room in registry.snapshot()
    ]
    cluster = await broadcaster.cluster_stats()
    return StatsResponse(
        total_rooms=len(rooms),
        total_clients=sum(room.client_count for room in rooms),
        rooms=rooms,
        instance_id=broadcaster.instance_id if cluster is not None else None,
        cluster=ClusterTotals(
            instances=cluster.instances,
            total_rooms=cluster.total_rooms,
            total_clients=cluster.total_clients,
        )
        if cluster is not None
        else None,
    )
