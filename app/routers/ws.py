"""The WebSocket endpoint of one wire protocol: admission before the upgrade, then the session."""

from __future__ import annotations

import logging

from starlette.datastructures import Headers, QueryParams
from starlette.websockets import WebSocket

from app.admission.gatekeeper import Gatekeeper
from app.errors import Refusal
from app.protocols.base import Codec
from app.routers.errors import refusal_response
from app.session.handler import SessionHandler

logger = logging.getLogger("texflow.ws")


class SocketEndpoint:
    """Serves upgrades under one path prefix: what follows the prefix is the project id."""

    def __init__(self, gatekeeper: Gatekeeper, sessions: SessionHandler, codec: Codec) -> None:
        self._gatekeeper = gatekeeper
        self._sessions = sessions
        self._codec = codec

    async def __call__(self, websocket: WebSocket, project_id: str) -> None:
        gatekeeper = self._gatekeeper
        peer = websocket.client.host if websocket.client else "unknown"
        # Read from the scope without the WebSocket's caches, so that nothing keeps the
        # request's headers and query (the token) alive once the session scrubs them.
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
        await self._sessions.run(websocket, ticket, self._codec)
