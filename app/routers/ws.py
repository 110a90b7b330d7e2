"""The WebSocket endpoint: admission before the upgrade, then the session."""

from __future__ import annotations

import logging

from fastapi import APIRouter, WebSocket

from app.gatekeeper import Rejection
from app.routers.deps import GatekeeperDep, SessionsDep
from app.routers.errors import error_response

router = APIRouter()
logger = logging.getLogger("texflow.ws")


@router.websocket("/ws/{project_id:path}")
async def project_socket(
    websocket: WebSocket, project_id: str, gatekeeper: GatekeeperDep, sessions: SessionsDep
) -> None:
    peer = websocket.client.host if websocket.client else "unknown"
    try:
        ticket = gatekeeper.admit(
            project_id=project_id,
            headers=websocket.headers,
            query=websocket.query_params,
            peer=peer,
            subprotocols=websocket.scope.get("subprotocols", []),
        )
    except Rejection as rejection:
        logger.info(
            "upgrade refused",
            extra={
                "event": "ws_rejected",
                "code": rejection.code,
                "status": rejection.status,
                "ip": gatekeeper.client_address(peer, websocket.headers),
            },
        )
        headers = {"WWW-Authenticate": "Bearer"} if rejection.status == 401 else None
        await websocket.send_denial_response(
            error_response(rejection.status, rejection.code, rejection.message, headers)
        )
        return
    await sessions.run(websocket, ticket)
