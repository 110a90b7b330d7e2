"""The codec of `/yjs/{project_id}/{document_id}`: y-protocols binary frames for one document."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json

from app.errors import Refusal
from app.protocols.json.messages import (
    MAX_DOCUMENT_ID,
    ClientMessage,
    YjsAwareness,
    YjsAwarenessPayload,
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
    write_sync_step1,
    write_sync_step2,
    write_sync_update,
)
from app.rooms.events import RoomEvent


@dataclass(frozen=True, slots=True)
class YjsQueryAwareness:
    """A client asks for every awareness state of the document; the JSON protocol has no
    such message, so it has no model in messages.py."""

    document_id: str


# Event type -> (payload key holding the bytes, frame writer).
_WRITERS = {
    "yjs_update": ("update", write_sync_update),
    "yjs_sync_step2": ("update", write_sync_step2),
    "yjs_sync_step1": ("state_vector", write_sync_step1),
    "yjs_awareness": ("update", write_awareness),
}


class YWebsocketCodec:
    """One connection's document, named by the path: frames carry no document id."""

    name = "ywebsocket"
    binary = True

    def __init__(self, document_id: str) -> None:
        # The models below are built without validation, so the one field not from the frame
        # is checked here, against the JSON protocol's bound.
        if not 1 <= len(document_id) <= MAX_DOCUMENT_ID:
            raise ValueError(f"expected a document id of 1 to {MAX_DOCUMENT_ID} characters")
        self.document_id = document_id

    def decode(self, text: str | None, data: bytes | None) -> ClientMessage | YjsQueryAwareness:
        if data is None:
            raise Refusal("unsupported_frame", "text frames are not supported: send binary")
        frame = read_frame(data)
        if isinstance(frame, QueryAwareness):
            return YjsQueryAwareness(self.document_id)
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

    def encode(self, event: RoomEvent) -> bytes | None:
        writer = _WRITERS.get(event.type)
        if writer is None:
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
