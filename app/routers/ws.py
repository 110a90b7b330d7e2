"""The WebSocket endpoint of one wire protocol: admission before the upgrade, then the session."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.datastructures import Headers, QueryParams
from starlette.websockets import WebSocket

from app.admission.gatekeeper import BEARER_SUBPROTOCOL, Gatekeeper
from app.errors import Refusal
from app.protocols.base import Route
from app.routers.errors import refusal_response
from app.session.handler import SessionHandler
from app.session.refusal_hold import RefusalHold

logger = logging.getLogger("texflow.ws")


class SocketEndpoint:
    """Serves upgrades under one path prefix; `route` reads what follows the prefix.

    `max_frame_bytes` is the protocol's frame limit where the server's does not fit it (a
    whole document in one sync message); `hold` answers the refusals of who the client is
    inside the WebSocket, for protocols whose clients would otherwise retry at once.
    """

    def __init__(
        self,
        gatekeeper: Gatekeeper,
        sessions: SessionHandler,
        route: Callable[[str], Route],
        *,
        protocol: str,
        max_frame_bytes: int | None = None,
        hold: RefusalHold | None = None,
    ) -> None:
        self._gatekeeper = gatekeeper
        self._sessions = sessions
        self._route = route
        self._protocol = protocol
        self._max_frame_bytes = max_frame_bytes
        self._hold = hold

    async def __call__(self, websocket: WebSocket, path: str) -> None:
        gatekeeper = self._gatekeeper
        protocol = self._protocol
        peer = websocket.client.host if websocket.client else "unknown"
        # Read from the scope without the WebSocket's caches, so that nothing keeps the
        # request's headers and query (the token) alive once the session scrubs them.
        scope = websocket.scope
        headers = Headers(scope=scope)
        subprotocols = scope.get("subprotocols", [])
        try:
            try:
                route = self._route(path)
            except Refusal as rejection:
                gatekeeper.count_refusal(rejection, protocol)
                raise
            ticket = gatekeeper.admit(
                project_id=route.project_id,
                headers=headers,
                query=QueryParams(scope.get("query_string", b"")),
                peer=peer,
                subprotocols=subprotocols,
                protocol=protocol,
            )
        except Refusal as rejection:
            ip = gatekeeper.client_address(peer, headers)
            logger.info(
                "upgrade refused",
                extra={
                    "event": "ws_rejected",
                    "code": rejection.code,
                    "status": rejection.status,
                    "ip": ip,
                },
            )
            hold = self._hold
            if hold is not None and hold.holds(rejection):
                subprotocol = BEARER_SUBPROTOCOL if BEARER_SUBPROTOCOL in subprotocols else None
                if await hold.serve(websocket, rejection, ip, subprotocol):
                    return
            await websocket.send_denial_response(refusal_response(rejection))
            return
        await self._sessions.run(
            websocket,
            ticket,
            route.codec,
            max_frame_bytes=self._max_frame_bytes,
        )
