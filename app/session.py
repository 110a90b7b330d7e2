"""The life of one accepted WebSocket: join, read and dispatch messages, leave."""

from __future__ import annotations

import logging
import secrets
import time

from starlette.websockets import WebSocket

from app.connection import BacklogLimits, Connection
from app.gatekeeper import Ticket
from app.messages import MessageError, parse_client_message
from app.metrics import Metrics
from app.registry import RoomRegistry
from app.transport import transport_of

logger = logging.getLogger("texflow.session")

CLOSE_INTERNAL_ERROR = 1011


def new_client_id() -> str:
    return secrets.token_hex(8)


class SessionHandler:
    """Runs accepted connections; one `run` call per WebSocket, for as long as it is open."""

    def __init__(self, registry: RoomRegistry, metrics: Metrics, limits: BacklogLimits) -> None:
        self._registry = registry
        self._metrics = metrics
        self._limits = limits

    async def run(self, websocket: WebSocket, ticket: Ticket) -> None:
        # The ticket's per-IP slot is freed as soon as the socket is gone, before presence
        # cleanup, so a client that sees `user_left` may reconnect at once.
        try:
            await websocket.accept()
            transport = transport_of(websocket.scope)
            if transport is None:
                logger.error(
                    "server has no texflow transport; start it with `python -m app`",
                    extra={"event": "ws_misconfigured"},
                )
                await websocket.close(CLOSE_INTERNAL_ERROR, "server misconfigured")
                return
            identity = ticket.identity
            connection = Connection(
                client_id=new_client_id(),
                user_id=identity.user_id,
                username=identity.username,
                project_id=ticket.project_id,
                ip=ticket.ip,
                transport=transport,
                limits=self._limits,
                observer=self._metrics,
            )
            await self._serve(websocket, connection, ticket)
        finally:
            ticket.release()

    async def _serve(self, websocket: WebSocket, connection: Connection, ticket: Ticket) -> None:
        metrics = self._metrics
        metrics.active_connections.inc()
        started = time.monotonic()
        fields = {
            "user_id": connection.user_id,
            "project_id": connection.project_id,
            "client_id": connection.client_id,
        }
        logger.info("connected", extra={"event": "ws_connected", **fields})
        code, reason = 1006, ""
        try:
            await self._registry.join(connection)
            code, reason = await self._read(websocket, connection)
        finally:
            ticket.release()
            await self._registry.leave(connection)
            duration = time.monotonic() - started
            metrics.active_connections.dec()
            metrics.connection_duration.observe(duration)
            logger.info(
                "disconnected",
                extra={
                    "event": "ws_disconnected",
                    **fields,
                    "close_code": code,
                    "close_reason": reason,
                    "duration_s": round(duration, 3),
                },
            )

    async def _read(self, websocket: WebSocket, connection: Connection) -> tuple[int, str]:
        """Dispatch incoming messages until the peer leaves; returns the close code and reason."""
        receive = websocket.receive
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code") or 1005), str(message.get("reason") or "")
            text = message.get("text")
            if text is None:
                self._refuse(
                    connection,
                    MessageError(
                        "unsupported_frame", "binary frames are not supported: send JSON text"
                    ),
                )
                continue
            try:
                self._dispatch(connection, text)
            except Exception:
                # A fault of ours must not cost this client its connection, nor reach it.
                logger.exception(
                    "message handling failed",
                    extra={"event": "ws_internal_error", "client_id": connection.client_id},
                )
                self._refuse(
                    connection, MessageError("internal_error", "the message was not processed")
                )

    def _dispatch(self, connection: Connection, text: str) -> None:
        try:
            message = parse_client_message(text)
        except MessageError as error:
            self._refuse(connection, error)
            return
        self._metrics.received(message.type)
        if message.type == "ping":
            self._registry.send(connection, "pong", message.payload.relay())
        else:
            self._registry.relay(connection, message.type, message.payload.relay())

    def _refuse(self, connection: Connection, error: MessageError) -> None:
        self._metrics.received("invalid")
        self._registry.send(connection, "error", error.payload())
