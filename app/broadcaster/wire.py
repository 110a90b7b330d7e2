"""The versioned format of events between instances: a JSON header line, then the payload.

Compatibility rule: a field added to a header keeps the version (readers ignore fields they do
not know); a change an older reader would misread takes a new version, which older readers
count and skip. Roll out readers of a new version before any writer emits it.

Version 0 is the unversioned format of the releases before this one (five lines: origin, type,
sender, exclude, then the JSON envelope as clients get it). It is read always, and written
when WIRE_VERSION=0, so that a rolling deploy from those releases loses nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictInt,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import from_json, to_json

from app.rooms.events import Author, AwarenessQuery, InstanceEvent, Resync, Revoke, RoomEvent

VERSION = 1
LEGACY = 0
_NEWLINE = b"\n"
# Version 0's control events, disguised as message types.
_LEGACY_REVOKE = "texflow.revoke"
_LEGACY_RESYNC = "texflow.resync"
_LEGACY_AWARENESS_QUERY = "texflow.awareness_query"
# Before the year 10000: what an RFC 3339 timestamp for clients can say.
_LAST_TIMESTAMP = 253_402_300_800.0


class _Header(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: StrictInt
    origin: str


class _AuthorFields(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: str
    username: str
    client_id: str


class EventHeader(_Header):
    kind: Literal["event"]
    type: str
    author: _AuthorFields
    ts: Annotated[FiniteFloat, Field(ge=0, lt=_LAST_TIMESTAMP)]
    exclude: str | None = None
    seq: int | None = None


class RevokeHeader(_Header):
    kind: Literal["revoke"]
    user_id: str


class ResyncHeader(_Header):
    kind: Literal["resync"]


class AwarenessQueryHeader(_Header):
    kind: Literal["awareness_query"]
    document_id: str


Header = Annotated[
    EventHeader | RevokeHeader | ResyncHeader | AwarenessQueryHeader, Field(discriminator="kind")
]
_HEADER = TypeAdapter[Header](Header)


KINDS = frozenset({"event", "revoke", "resync", "awareness_query"})


class Unreadable(Exception):
    """An event this instance skips. `reason` is `unknown_version` or `unknown_kind` (a newer
    instance), or `malformed` (a bug, or something else writing to the channel)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _LegacyEnvelope(BaseModel):
    """What version 0 carried of an event: the envelope every client got."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    payload: dict[str, Any]
    timestamp: datetime
    user_id: str
    username: str
    client_id: str


def origin_prefix(origin: str) -> bytes:
    """How every version 1 event from `origin` starts: an instance skips its own echoes by it."""
    return b'{"v":1,"origin":' + to_json(origin) + b","


def encode(origin: str, event: InstanceEvent, version: int = VERSION) -> bytes:
    if version == LEGACY:
        return _encode_legacy(origin, event)
    header: dict[str, Any]
    if isinstance(event, RoomEvent):
        author = event.author
        header = {
            "v": VERSION,
            "origin": origin,
            "kind": "event",
            "type": event.type,
            "author": {
                "user_id": author.user_id,
                "username": author.username,
                "client_id": author.client_id,
            },
            "ts": event.timestamp,
            "exclude": event.exclude,
            "seq": event.seq,
        }
        return to_json(header) + _NEWLINE + event.payload
    if isinstance(event, Revoke):
        header = {"v": VERSION, "origin": origin, "kind": "revoke", "user_id": event.user_id}
    elif isinstance(event, AwarenessQuery):
        header = {
            "v": VERSION,
            "origin": origin,
            "kind": "awareness_query",
            "document_id": event.document_id,
        }
    else:
        header = {"v": VERSION, "origin": origin, "kind": "resync"}
    return to_json(header) + _NEWLINE


def _encode_legacy(origin: str, event: InstanceEvent) -> bytes:
    # Imported here: only a deployment still mixing in releases before version 1 needs it.
    from app.protocols.json.codec import JsonCodec

    if isinstance(event, RoomEvent):
        fields = (event.type, event.author.client_id, event.exclude or "")
        body = JsonCodec().encode(event)
    elif isinstance(event, Revoke):
        fields, body = (_LEGACY_REVOKE, "service", ""), event.user_id.encode()
    elif isinstance(event, AwarenessQuery):
        # Instances of before version 1 skip it as a malformed envelope; they hold no
        # documents to answer from anyway.
        fields, body = (_LEGACY_AWARENESS_QUERY, "instance", ""), event.document_id.encode()
    else:
        fields, body = (_LEGACY_RESYNC, "instance", ""), b""
    return _NEWLINE.join((origin.encode(), *(field.encode() for field in fields), body))


class Decoder:
    """Reads what other instances publish. Authors repeat (a few people type at a time), so the
    last few thousand are kept rather than built again for every event."""

    def __init__(self, max_authors: int = 4096) -> None:
        self._authors: dict[tuple[str, str, str], Author] = {}
        self._max_authors = max_authors

    def decode(self, project_id: str, data: bytes) -> tuple[str, InstanceEvent]:
        """The origin instance and the event; raises Unreadable for what it must skip."""
        if not data.startswith(b"{"):
            return self._decode_legacy(project_id, data)
        head, _, payload = data.partition(_NEWLINE)
        try:
            # One pass in the common case: 5 µs against 7 for parsing, then validating.
            header = _HEADER.validate_json(head)
        except ValidationError:
            raise _unreadable(head) from None
        if header.v != VERSION:
            raise Unreadable("unknown_version", f"expected version {VERSION}, got {header.v}")
        if isinstance(header, EventHeader):
            if not (payload.startswith(b"{") and payload.endswith(b"}")):
                raise Unreadable("malformed", "expected a JSON object as the payload")
            return header.origin, RoomEvent(
                project_id=project_id,
                type=header.type,
                payload=payload,
                author=self._author(header.author),
                timestamp=header.ts,
                exclude=header.exclude,
                seq=header.seq,
            )
        if isinstance(header, RevokeHeader):
            return header.origin, Revoke(project_id, header.user_id)
        if isinstance(header, AwarenessQueryHeader):
            return header.origin, AwarenessQuery(project_id, header.document_id)
        return header.origin, Resync(project_id)

    def _decode_legacy(self, project_id: str, data: bytes) -> tuple[str, InstanceEvent]:
        parts = data.split(_NEWLINE, 4)
        if len(parts) != 5:
            raise Unreadable("malformed", "expected a JSON header line")
        try:
            origin, message_type, _sender, exclude = (part.decode() for part in parts[:4])
        except UnicodeDecodeError:
            raise Unreadable("malformed", "expected UTF-8 version 0 header lines") from None
        body = parts[4]
        if message_type == _LEGACY_REVOKE:
            return origin, Revoke(project_id, body.decode(errors="replace"))
        if message_type == _LEGACY_RESYNC:
            return origin, Resync(project_id)
        if message_type == _LEGACY_AWARENESS_QUERY:
            return origin, AwarenessQuery(project_id, body.decode(errors="replace"))
        try:
            envelope = _LegacyEnvelope.model_validate_json(body)
        except ValidationError:
            raise Unreadable("malformed", "expected a version 0 envelope") from None
        return origin, RoomEvent(
            project_id=project_id,
            type=message_type,
            payload=to_json(envelope.payload),
            author=self._author_of(envelope.user_id, envelope.username, envelope.client_id),
            timestamp=envelope.timestamp.timestamp(),
            exclude=exclude or None,
        )

    def _author(self, fields: _AuthorFields) -> Author:
        return self._author_of(fields.user_id, fields.username, fields.client_id)

    def _author_of(self, user_id: str, username: str, client_id: str) -> Author:
        key = (user_id, username, client_id)
        author = self._authors.get(key)
        if author is None:
            if len(self._authors) >= self._max_authors:
                self._authors.clear()
            author = self._authors[key] = Author(*key)
        return author


def _unreadable(head: bytes) -> Unreadable:
    """Why a header that is not a version 1 header was refused."""
    try:
        fields = from_json(head)
    except ValueError:
        return Unreadable("malformed", "expected a JSON header line")
    if not isinstance(fields, dict):
        return Unreadable("malformed", "expected a JSON object as the header")
    version = fields.get("v")
    if type(version) is not int or version != VERSION:
        return Unreadable("unknown_version", f"expected version {VERSION}, got {version!r}")
    kind = fields.get("kind")
    if kind not in KINDS:
        return Unreadable("unknown_kind", f"expected one of {sorted(KINDS)}, got {kind!r}")
    return Unreadable("malformed", f"expected a version {VERSION} {kind} header")
