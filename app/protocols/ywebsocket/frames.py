"""y-protocols' binary messages as typed values: read one from a frame, write each kind.

Layouts follow y-protocols 1.0.7 (sync.js, awareness.js, auth.js) over lib0 encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.documents.lib0 import Reader, Truncated, write_var_bytes, write_var_string, write_var_uint
from app.errors import Refusal

MESSAGE_SYNC = 0
MESSAGE_AWARENESS = 1
MESSAGE_AUTH = 2
MESSAGE_QUERY_AWARENESS = 3

SYNC_STEP1 = 0
SYNC_STEP2 = 1
SYNC_UPDATE = 2

AUTH_PERMISSION_DENIED = 0


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """What the sender has: its state vector."""

    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """What the receiver lacks, in answer to its step 1: an update."""

    update: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    """A change made after the handshake."""

    update: bytes


@dataclass(frozen=True, slots=True)
class AwarenessUpdate:
    """Awareness states, encoded as awareness.js's `encodeAwarenessUpdate` writes them."""

    update: bytes


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    """A request for every awareness state the receiver knows."""


@dataclass(frozen=True, slots=True)
class PermissionDenied:
    """auth.js's only message: the receiver may not use the document, and why."""

    reason: str


Frame = SyncStep1 | SyncStep2 | SyncUpdate | AwarenessUpdate | QueryAwareness | PermissionDenied


def read_frame(data: bytes) -> Frame:
    """The one message `data` holds; raises Refusal("invalid_frame") on anything else."""
    reader = Reader(data)
    try:
        frame = _read(reader)
    except Truncated as exc:
        raise Refusal("invalid_frame", str(exc)) from None
    if not reader.done:
        # y-websocket sends one message a frame; bytes past it would be silently dropped.
        extra = len(data) - reader.position
        raise Refusal("invalid_frame", f"expected the end of the frame, got {extra} more bytes")
    return frame


def _read(reader: Reader) -> Frame:
    if reader.done:
        raise Refusal("invalid_frame", "expected a message type, got an empty frame")
    kind = reader.var_uint()
    if kind == MESSAGE_SYNC:
        sync = reader.var_uint()
        if sync == SYNC_STEP1:
            return SyncStep1(reader.var_bytes())
        if sync == SYNC_STEP2:
            return SyncStep2(reader.var_bytes())
        if sync == SYNC_UPDATE:
            return SyncUpdate(reader.var_bytes())
        raise Refusal("invalid_frame", f"expected a sync message type 0 to 2, got {sync}")
    if kind == MESSAGE_AWARENESS:
        return AwarenessUpdate(reader.var_bytes())
    if kind == MESSAGE_QUERY_AWARENESS:
        return QueryAwareness()
    if kind == MESSAGE_AUTH:
        auth = reader.var_uint()
        if auth == AUTH_PERMISSION_DENIED:
            return PermissionDenied(reader.var_string())
        raise Refusal("invalid_frame", f"expected an auth message type 0, got {auth}")
    raise Refusal("invalid_frame", f"expected a message type 0 to 3, got {kind}")


def write_sync_step1(state_vector: bytes) -> bytes:
    return _sync(SYNC_STEP1, state_vector)


def write_sync_step2(update: bytes) -> bytes:
    return _sync(SYNC_STEP2, update)


def write_sync_update(update: bytes) -> bytes:
    return _sync(SYNC_UPDATE, update)


def write_awareness(update: bytes) -> bytes:
    out = bytearray()
    write_var_uint(out, MESSAGE_AWARENESS)
    write_var_bytes(out, update)
    return bytes(out)


def write_query_awareness() -> bytes:
    return bytes((MESSAGE_QUERY_AWARENESS,))


def write_permission_denied(reason: str) -> bytes:
    out = bytearray()
    write_var_uint(out, MESSAGE_AUTH)
    write_var_uint(out, AUTH_PERMISSION_DENIED)
    # lib0's byte-length rule, not pycrdt's Encoder (which counts characters).
    write_var_string(out, reason)
    return bytes(out)


def write_frame(frame: Frame) -> bytes:
    """Any message as its frame: the inverse of read_frame."""
    if isinstance(frame, SyncStep1):
        return write_sync_step1(frame.state_vector)
    if isinstance(frame, SyncStep2):
        return write_sync_step2(frame.update)
    if isinstance(frame, SyncUpdate):
        return write_sync_update(frame.update)
    if isinstance(frame, AwarenessUpdate):
        return write_awareness(frame.update)
    if isinstance(frame, QueryAwareness):
        return write_query_awareness()
    return write_permission_denied(frame.reason)


def _sync(kind: int, payload: bytes) -> bytes:
    out = bytearray()
    write_var_uint(out, MESSAGE_SYNC)
    write_var_uint(out, kind)
    write_var_bytes(out, payload)
    return bytes(out)
