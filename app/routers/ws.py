"""The WebSocket endpoint: admission before the upgrade, then the session."""

from __future__ import annotations

import logging

from fastapi import APIRouter, WebSocket
from starlette.datastructures import Headers, QueryParams

from app.errors import Refusal
from app.routers.deps import GatekeeperDep, SessionsDep
from app.routers.errors import refusal_response

router = APIRouter()
logger = logging.getLogger("texflow.ws")


@router.websocket("/ws/{project_id:path}")
async def project_socket(
    websocket: WebSocket, project_id: str, gatekeeper: GatekeeperDep, sessions: SessionsDep
) -> None:
    peer = websocket.client.host if websocket.client else "unknown"
    # Read from the scope without the WebSocket's caches, so that nothing keeps the request's
    # headers and query (the token) alive once the session scrubs them.
    scope = websocket.scope
    headers = Headers(scope=scope)
    try:
        ticket = gatekeeper.admit(
            project_id=project_id,
            headers=headers,
            query=QueryParams(scope.get("query_string", b"")),
            peer=peer,
            subprotocols=scope.get("subprotocols", []),
        )
    except Refusal as rejection:
        logger.info(
            "upgrade refused",
            extra={
                "event": "ws_rejected",
                "code": rejection.code,
                "status": rejection.status,
                "ip": gatekeeper.client_address(peer, headers),
            },
        )
        await websocket.send_denial_response(refusal_response(rejection))
        return
    await sessions.run(websocket, ticket)
