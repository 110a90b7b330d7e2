"""The life of one accepted WebSocket: join, read and dispatch messages, leave.

Incoming messages pass, in order: the rate limit, validation, then dispatch. A connection that
keeps sending refused messages is closed with 1008; one whose token runs out without an
`auth_refresh` is closed with 4001.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.websockets import WebSocket

from app.admission.auth import AuthService
from app.admission.gatekeeper import Ticket
from app.documents.editor import Editor
from app.documents.service import DocumentService
from app.errors import CloseCode, Refusal
from app.fanout.connection import BacklogLimits, Connection
from app.metrics import Metrics
from app.protocols.base import Codec
from app.protocols.json.messages import (
    DOCUMENT_TYPES,
    InboundMessage,
    YjsAwareness,
    YjsQueryAwareness,
    YjsSyncStep1,
    YjsSyncStep2,
    YjsUpdate,
    YjsUpdatePart,
    utc_timestamp,
)
from app.rooms.registry import RoomRegistry
from app.session.keepalive import KeepAlive
from app.session.ratelimit import StrikeCounter, TokenBucket
from app.socket.transport import transport_of

logger = logging.getLogger("texflow.session")

# Refusals that are the server's state, not the client's mistake: they never count as strikes.
_NOT_THE_CLIENTS_FAULT = frozenset({"document_unavailable", "store_unavailable"})


@dataclass(frozen=True, slots=True)
class SessionLimits:
    rate_per_second: float
    burst: int
    max_strikes: int
    strike_window: float
    expiry_warning: float
    leeway: float


def new_client_id() -> str:
    return secrets.token_hex(8)


def _scrub(scope: MutableMapping[str, Any]) -> None:
    """Forget the upgrade request once admitted: its headers (cookies included) would be kept
    for the connection's whole life, and its query string may hold the token."""
    scope["headers"] = []
    scope["query_string"] = b""
    scope["subprotocols"] = []


def _fields(connection: Connection) -> dict[str, str]:
    # Built when logging, not kept for the connection's life.
    return {
        "user_id": connection.user_id,
        "project_id": connection.project_id,
        "client_id": connection.client_id,
    }


class _Expiry:
    """The connection's deadline: a warning shortly before, a 4001 close at it."""

    def __init__(
        self, registry: RoomRegistry, connection: Connection, warning: float, leeway: float
    ) -> None:
        self._registry = registry
        self._connection = connection
        self._warning = warning
        self._leeway = leeway
        # One timer at a time: the warning's, then the deadline's.
        self._handle: asyncio.TimerHandle | None = None
        self.deadline = 0.0

    def schedule(self, expires_at: float) -> None:
        self.cancel()
        self.deadline = expires_at + self._leeway
        remaining = self.deadline - time.time()
        self._handle = asyncio.get_running_loop().call_later(
            max(0.0, remaining - self._warning), self._warn
        )

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _deadline_text(self) -> str:
        return utc_timestamp(datetime.fromtimestamp(self.deadline, UTC))

    def _warn(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(
            max(0.0, self.deadline - time.time()), self._expire
        )
        self._registry.send(
            self._connection,
            "error",
            {
                "code": "token_expiring",
                "message": "the token expires soon: send auth_refresh with a fresh one",
                "expires_at": self._deadline_text(),
            },
        )

    def _expire(self) -> None:
        self._handle = None
        self._registry.send(
            self._connection,
            "error",
            {
                "code": "token_expired",
                "message": "the token expired",
                "expired_at": self._deadline_text(),
            },
        )
        self._connection.close(CloseCode.TOKEN_EXPIRED, "token expired")


class SessionHandler:
    """Runs accepted connections; one `run` call per WebSocket, for as long as it is open."""

    def __init__(
        self,
        registry: RoomRegistry,
        metrics: Metrics,
        auth: AuthService,
        backlog: BacklogLimits,
        limits: SessionLimits,
        documents: DocumentService,
        keepalive: KeepAlive,
    ) -> None:
        self._registry = registry
        self._keepalive = keepalive
        self._documents = documents
        self._metrics = metrics
        self._auth = auth
        self._backlog = backlog
        self._limits = limits

    async def run(
        self,
        websocket: WebSocket,
        ticket: Ticket,
        codec: Codec,
        *,
        max_frame_bytes: int | None = None,
    ) -> None:
        """Serve one admitted WebSocket; `max_frame_bytes`: its frame limit, when not the
        server's. A codec bound to one document has it opened and offered as it joins."""
        # The ticket's slots are freed as soon as the socket is gone, before presence cleanup,
        # so a client that sees `user_left` may reconnect at once.
        try:
            transport = transport_of(websocket.scope)
            if transport is not None and max_frame_bytes is not None:
                # Before the accept: the client's first frame may follow the 101 at once.
                transport.limit_frames(max_frame_bytes)
            await websocket.accept(subprotocol=ticket.subprotocol)
            _scrub(websocket.scope)
            if transport is None:
                logger.error(
                    "server has no texflow transport; start it with `python -m app`",
                    extra={"event": "ws_misconfigured"},
                )
                await websocket.close(CloseCode.INTERNAL_ERROR, "server misconfigured")
                return
            identity = ticket.identity
            connection = Connection(
                client_id=new_client_id(),
                user_id=identity.user_id,
                username=identity.username,
                project_id=ticket.project_id,
                ip=ticket.ip,
                transport=transport,
                codec=codec,
                limits=self._backlog,
                observer=self._metrics,
            )
            await self._serve(websocket, connection, ticket)
        finally:
            ticket.release()

    async def _serve(
        self,
        websocket: WebSocket,
        connection: Connection,
        ticket: Ticket,
    ) -> None:
        metrics = self._metrics
        protocol = connection.codec.name
        metrics.active_connections.labels(protocol).inc()
        metrics.connections.labels(protocol).inc()
        started = time.monotonic()
        logger.info(
            "connected",
            extra={
                "event": "ws_connected",
                "protocol": connection.codec.name,
                **_fields(connection),
            },
        )
        expiry = _Expiry(
            self._registry, connection, self._limits.expiry_warning, self._limits.leeway
        )
        code, reason = 1006, ""  # no close frame: never sent, only reported
        editor = self._documents.editor(connection)
        try:
            try:
                await self._registry.join(connection)
                document_id = connection.codec.document_id
                if document_id is not None:
                    await editor.greet(document_id)
            except Refusal as refusal:
                # The room or the connection's document could not be opened (the store does
                # not answer, say): tell the client to come back later rather than serve it a
                # room without its content.
                self._registry.send(connection, "error", refusal.payload())
                code, reason = int(CloseCode.TRY_AGAIN_LATER), refusal.code
                connection.close(code, reason)
                return
            expiry.schedule(ticket.identity.expires_at)
            if connection.codec.keepalive is not None:
                self._keepalive.add(connection)
            code, reason = await self._read(websocket, connection, expiry, editor)
        finally:
            self._keepalive.discard(connection)
            expiry.cancel()
            ticket.release()
            # Before leaving: the others are told its awareness states are gone.
            editor.close()
            await self._registry.leave(connection)
            duration = time.monotonic() - started
            metrics.active_connections.labels(protocol).dec()
            metrics.connection_duration.observe(duration)
            metrics.disconnections.labels(str(code), protocol).inc()
            logger.info(
                "disconnected",
                extra={
                    "event": "ws_disconnected",
                    **_fields(connection),
                    "close_code": code,
                    "close_reason": reason,
                    "duration_s": round(duration, 3),
                },
            )

    async def _read(
        self, websocket: WebSocket, connection: Connection, expiry: _Expiry, editor: Editor
    ) -> tuple[int, str]:
        """Dispatch incoming messages until the peer leaves; returns the close code and reason."""
        limits = self._limits
        clock = time.monotonic
        bucket = TokenBucket(limits.rate_per_second, limits.burst, clock())
        strikes = StrikeCounter(limits.max_strikes, limits.strike_window)
        receive = websocket.receive
        paced = connection.codec.paced
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code") or 1005), str(message.get("reason") or "")
            now = clock()
            dropped = False
            if not bucket.allow(now):
                self._metrics.received("rate_limited")
                if paced:
                    # Nothing dropped: reading waits for the bucket, and TCP holds the rest back.
                    while not bucket.allow(now):
                        await asyncio.sleep(bucket.wait())
                        now = clock()
                else:
                    dropped = True
            if dropped:
                self._registry.send(
                    connection,
                    "error",
                    {"code": "rate_limited", "message": "too many messages: this one was dropped"},
                )
                accepted = False
            else:
                try:
                    decoded = connection.codec.decode(message.get("text"), message.get("bytes"))
                except Refusal as error:
                    accepted = self._refuse(connection, error)
                else:
                    if decoded.type in DOCUMENT_TYPES:
                        # Awaited in line: a document's first use loads it, and what the
                        # connection sends next waits, so its acknowledgements keep its order.
                        accepted = await self._edit(connection, editor, decoded)
                    else:
                        accepted = self._handle(connection, decoded, expiry)
            if not accepted and strikes.strike(now):
                logger.info(
                    "closing a connection that keeps sending refused messages",
                    extra={"event": "ws_abuse", "client_id": connection.client_id},
                )
                connection.close(CloseCode.POLICY_VIOLATION, "too many refused messages")

    async def _edit(self, connection: Connection, editor: Editor, message: InboundMessage) -> bool:
        """Handle one message for a document; False when it was refused for the client's fault."""
        self._metrics.received(message.type)
        try:
            if isinstance(message, YjsUpdate):
                payload = message.payload
                await editor.update(payload.document_id, payload.update, payload.origin)
            elif isinstance(message, YjsSyncStep2):
                await editor.update(message.payload.document_id, message.payload.update, "sync")
            elif isinstance(message, YjsSyncStep1):
                await editor.sync(message.payload.document_id, message.payload.state_vector)
            elif isinstance(message, YjsUpdatePart):
                part = message.payload
                await editor.part(part.document_id, part.index, part.data, part.final)
            elif isinstance(message, YjsAwareness):
                await editor.awareness(message.payload.document_id, message.payload.update)
            elif isinstance(message, YjsQueryAwareness):
                await editor.query_awareness(message.payload.document_id)
        except Refusal as error:
            # Which document it was about: a client with several open can tell.
            return self._refuse(connection, error, getattr(message.payload, "document_id", None))
        except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
            raise
        except BaseException:
            # A Rust panic from yrs is a BaseException: a fault of ours, never the session's end.
            self._failed(connection)
        return True

    def _handle(self, connection: Connection, message: InboundMessage, expiry: _Expiry) -> bool:
        """Handle one message within the rate limit; False when it was refused."""
        try:
            self._metrics.received(message.type)
            if message.type == "ping":
                self._registry.send(connection, "pong", message.payload.relay())
            elif message.type == "auth_refresh":
                return self._refresh(connection, message.payload.token, expiry)
            else:
                self._registry.relay(connection, message.type, message.payload.relay())
        except Refusal as error:
            # A room hook refused it (an update a document cannot take): nobody else got it.
            return self._refuse(connection, error)
        except Exception:
            self._failed(connection)
        return True

    def _failed(self, connection: Connection) -> None:
        # A fault of ours must not cost this client its connection, nor reach it.
        logger.exception(
            "message handling failed",
            extra={"event": "ws_internal_error", "client_id": connection.client_id},
        )
        failure = Refusal("internal_error", "the message was not processed", status=500)
        self._registry.send(connection, "error", failure.payload())
        close = connection.codec.closes_for(failure)
        if close is not None:
            # Unless the protocol cannot say so: then only a reconnect's sync step makes sure
            # the server has what the client believes it sent.
            connection.close(*close)

    def _refresh(self, connection: Connection, token: str, expiry: _Expiry) -> bool:
        try:
            identity = self._auth.verify(token)
        except Refusal as exc:
            return self._refuse(connection, Refusal("invalid_token", exc.message))
        if identity.user_id != connection.user_id or not identity.may_join(connection.project_id):
            self._registry.send(
                connection,
                "error",
                {"code": "forbidden", "message": "the new token is for another user or project"},
            )
            connection.close(CloseCode.ACCESS_REVOKED, "token refused")
            return True
        expiry.schedule(identity.expires_at)
        self._registry.send(
            connection,
            "auth_refreshed",
            {"expires_at": utc_timestamp(datetime.fromtimestamp(expiry.deadline, UTC))},
        )
        return True

    def _refuse(
        self, connection: Connection, error: Refusal, document_id: str | None = None
    ) -> bool:
        self._metrics.received("invalid")
        payload = error.payload()
        if document_id is not None:
            payload["document_id"] = document_id
        self._registry.send(connection, "error", payload)
        close = connection.codec.closes_for(error)
        if close is not None:
            connection.close(*close)
            return True
        return error.code in _NOT_THE_CLIENTS_FAULT
