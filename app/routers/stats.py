"""Room statistics for operators, behind a bearer token."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from app.auth import AuthError
from app.routers.deps import AuthDep, RegistryDep
from app.routers.errors import ApiError, ErrorResponse

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


class StatsResponse(BaseModel):
    total_rooms: int
    total_clients: int
    rooms: list[RoomStats]


@router.get(
    "/stats",
    response_model=StatsResponse,
    summary="Rooms and connections on this instance",
    responses={401: {"model": ErrorResponse, "description": "Missing or invalid token"}},
)
async def stats(
    auth: AuthDep,
    registry: RegistryDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> StatsResponse:
    try:
        auth.verify(credentials.credentials if credentials else None)
    except AuthError as exc:
        raise ApiError(401, "unauthorized", exc.message, {"WWW-Authenticate": "Bearer"}) from None
    rooms = [
        RoomStats(
            room_id=room.room_id,
            client_count=room.client_count,
            created_at=room.created_at,
            last_activity=room.last_activity,
        )
        for room in registry.snapshot()
    ]
    return StatsResponse(
        total_rooms=len(rooms),
        total_clients=sum(room.client_count for room in rooms),
        rooms=rooms,
    )
