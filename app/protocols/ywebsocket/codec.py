"""The codec of `/yjs/{project_id}/{document_id}`: y-protocols binary frames for one document."""

from __future__ import annotations

import base64
import binascii
import weakref
from typing import Any

from pydantic_core import from_json

from app.errors import CloseCode, Refusal
from app.protocols.base import Route
from app.protocols.json.messages import (
    MAX_DOCUMENT_ID,
    InboundMessage,
    YjsAwareness,
    YjsAwarenessPayload,
    YjsDocumentPayload,
    YjsQueryAwareness,
    YjsSyncStep1,
    YjsSyncStep1Payload,
    YjsSyncStep2,
    YjsSyncStep2Payload,
    YjsUpdate,
    YjsUpdatePayload,
)
from app.protocols.ywebsocket.frames import (
    AwarenessUpdate,
    PermissionDenied,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    read_frame,
    write_awareness,
    write_permission_denied,
    write_sync_step1,
    write_sync_step2,
    write_sync_update,
)
from app.rooms.events import RoomEvent

# Event type -> (payload key holding the bytes, frame writer).
_WRITERS = {
    "yjs_update": ("update", write_sync_update),
    "yjs_sync_step2": ("update", write_sync_step2),
    "yjs_sync_step1": ("state_vector", write_sync_step1),
    "yjs_awareness": ("update", write_awareness),
}

# `error` codes that mean the token no longer grants the document: y-protocols' auth message
# says so (the stock provider logs the reason) before the close that follows them.
_ACCESS_ENDED = frozenset({"access_revoked", "token_expired", "forbidden", "unauthorized"})

# Refusals of content the provider already holds as shared: the protocol has no error message,
# so the connection is closed, and the provider's reconnect offers it again in its sync step.
_CLOSES = {
    "invalid_update": (CloseCode.INVALID_DATA, "invalid update"),
    "document_too_large": (CloseCode.MESSAGE_TOO_BIG, "document too large"),
    "document_deleted": (CloseCode.DOCUMENT_DELETED, "document deleted"),
    "document_unavailable": (CloseCode.TRY_AGAIN_LATER, "document unavailable"),
    "store_unavailable": (CloseCode.TRY_AGAIN_LATER, "store unavailable"),
    "too_many_documents": (CloseCode.POLICY_VIOLATION, "too many documents"),
    "internal_error": (CloseCode.INTERNAL_ERROR, "update not processed"),
}
# y-websocket 3.1+ stops reconnecting after a close in 4400-4499 (its `shouldReconnect`), and
# reconnects after any other: an ended access is said in that range.
_CLOSE_CODES: dict[int, int] = {
    CloseCode.ACCESS_REVOKED: CloseCode.FORBIDDEN,
    CloseCode.TOKEN_EXPIRED: CloseCode.UNAUTHORIZED,
}
# An empty awareness update (no states): the provider reads it as a message and changes
# nothing, which is all its 30 s timeout needs.
KEEPALIVE = write_awareness(b"\x00")


class YWebsocketCodec:
    """The protocol of one document, named by the path: frames carry no document id. One
    instance per document (`YWebsocketRoutes`), so a broadcast is encoded once for every
    provider of the document."""

    name = "ywebsocket"
    binary = True
    acknowledges = False
    paced = True
    keepalive = KEEPALIVE

    def __init__(self, document_id: str) -> None:
        # The models below are built without validation, so the one field not from the frame
        # is checked here, against the JSON protocol's bound.
        if not 1 <= len(document_id) <= MAX_DOCUMENT_ID:
            raise ValueError(f"expected a document id of 1 to {MAX_DOCUMENT_ID} characters")
        self.document_id = document_id

    def decode(self, text: str | None, data: bytes | None) -> InboundMessage:
        if data is None:
            raise Refusal("unsupported_frame", "text frames are not supported: send binary")
        frame = read_frame(data)
        if isinstance(frame, QueryAwareness):
            return YjsQueryAwareness(
                type="yjs_query_awareness",
                payload=YjsDocumentPayload.model_construct(document_id=self.document_id),
            )
        if isinstance(frame, PermissionDenied):
            raise Refusal("invalid_frame", "expected a sync or awareness message, got auth")
        # The JSON protocol refuses empty bytes (YjsBytes); the same holds here so that
        # sessions see the same messages whichever protocol carried them.
        payload = frame.state_vector if isinstance(frame, SyncStep1) else frame.update
        if not payload:
            raise Refusal("invalid_frame", "expected at least one byte of payload, got none")
        # model_construct: the bytes are already bytes, which YjsBytes' validator (built for
        # base64 text and arrays) would refuse, and the document id was checked once above.
        doc = self.document_id
        if isinstance(frame, SyncStep1):
            return YjsSyncStep1(
                type="yjs_sync_step1",
                payload=YjsSyncStep1Payload.model_construct(document_id=doc, state_vector=payload),
            )
        if isinstance(frame, SyncStep2):
            return YjsSyncStep2(
                type="yjs_sync_step2",
                payload=YjsSyncStep2Payload.model_construct(document_id=doc, update=payload),
            )
        if isinstance(frame, SyncUpdate):
            return YjsUpdate(
                type="yjs_update",
                payload=YjsUpdatePayload.model_construct(document_id=doc, update=payload),
            )
        assert isinstance(frame, AwarenessUpdate)
        return YjsAwareness(
            type="yjs_awareness",
            payload=YjsAwarenessPayload.model_construct(document_id=doc, update=payload),
        )

    def close_code(self, code: int) -> int:
        return _CLOSE_CODES.get(code, code)

    def closes_for(self, refusal: Refusal) -> tuple[int, str] | None:
        return _CLOSES.get(refusal.code)

    def encode(self, event: RoomEvent) -> bytes | None:
        writer = _WRITERS.get(event.type)
        if writer is None:
            if event.type == "error":
                return _access_ended(event.payload)
            # Presence, cursors, acks, errors...: y-protocols has no form for them.
            return None
        key, write = writer
        payload = _payload(event.payload)
        if payload is None or payload.get("document_id") != self.document_id:
            return None
        raw = _base64(payload.get(key))
        if raw is None:
            return None
        return write(raw)


def _access_ended(data: bytes) -> bytes | None:
    payload = _payload(data)
    if payload is None or payload.get("code") not in _ACCESS_ENDED:
        return None
    return permission_denied(Refusal(payload["code"], str(payload.get("message", ""))))


def permission_denied(refusal: Refusal) -> bytes:
    """y-protocols' auth message for a refused upgrade: the stock provider logs the reason."""
    return write_permission_denied(f"{refusal.code}: {refusal.message}")


class YWebsocketRoutes:
    """`/yjs/{project_id}/{document_id}`, as `new WebsocketProvider(url + '/yjs/' + project,
    document, doc)` opens it: everything after the project, already percent-decoded by the
    server, is the document id (file paths hold `/`). Each document's codec is shared by its
    connections and goes with the last of them."""

    def __init__(self) -> None:
        self._codecs: weakref.WeakValueDictionary[str, YWebsocketCodec] = (
            weakref.WeakValueDictionary()
        )

    def __call__(self, path: str) -> Route:
        project_id, _, document_id = path.partition("/")
        if not 1 <= len(document_id) <= MAX_DOCUMENT_ID:
            raise Refusal(
                "invalid_document_id",
                f"expected /yjs/{{project_id}}/{{document_id}} with a document id of 1 to "
                f"{MAX_DOCUMENT_ID} characters",
            )
        codec = self._codecs.get(document_id)
        if codec is None:
            codec = self._codecs[document_id] = YWebsocketCodec(document_id)
        return Route(project_id, codec)


def _payload(data: bytes) -> dict[str, Any] | None:
    # Payloads were validated where they came in, but one from a peer instance is only bytes
    # off Redis: anything unreadable is not sent rather than breaking the fan-out.
    try:
        value = from_json(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _base64(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
