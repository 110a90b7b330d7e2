"""The versioned format of events between instances: a JSON header line, then the payload.

Compatibility rule: a field added to a header keeps the version (readers ignore fields they do
not know); a change an older reader would misread takes a new version, which older readers
count and skip. Roll out readers of a new version before any writer emits it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import from_json, to_json

from app.rooms.events import Author, InstanceEvent, Resync, Revoke, RoomEvent

VERSION = 1
_NEWLINE = b"\n"


class _Header(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: int
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
    ts: float
    exclude: str | None = None
    seq: int | None = None


class RevokeHeader(_Header):
    kind: Literal["revoke"]
    user_id: str


class ResyncHeader(_Header):
    kind: Literal["resync"]


Header = Annotated[EventHeader | RevokeHeader | ResyncHeader, Field(discriminator="kind")]
_HEADER = TypeAdapter[Header](Header)


KINDS = frozenset({"event", "revoke", "resync"})


class Unreadable(Exception):
    """An event this instance skips. `reason` is `unknown_version` or `unknown_kind` (a newer
    instance), or `malformed` (a bug, or something else writing to the channel)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def encode(origin: str, event: InstanceEvent) -> bytes:
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
    else:
        header = {"v": VERSION, "origin": origin, "kind": "resync"}
    return to_json(header) + _NEWLINE


def decode(project_id: str, data: bytes) -> tuple[str, InstanceEvent]:
    """The origin instance and the event; raises Unreadable for what it must skip."""
    head, _, payload = data.partition(_NEWLINE)
    try:
        fields = from_json(head)
    except ValueError:
        raise Unreadable("malformed", "expected a JSON header line") from None
    if not isinstance(fields, dict):
        raise Unreadable("malformed", "expected a JSON object as the header")
    version = fields.get("v")
    if type(version) is not int or version != VERSION:
        raise Unreadable("unknown_version", f"expected version {VERSION}, got {version!r}")
    kind = fields.get("kind")
    if kind not in KINDS:
        raise Unreadable("unknown_kind", f"expected one of {sorted(KINDS)}, got {kind!r}")
    try:
        header = _HEADER.validate_python(fields)
    except ValidationError as exc:
        raise Unreadable("malformed", f"expected a version {VERSION} {kind} header") from exc
    if isinstance(header, EventHeader):
        author = header.author
        event: InstanceEvent = RoomEvent(
            project_id=project_id,
            type=header.type,
            payload=payload,
            author=Author(author.user_id, author.username, author.client_id),
            timestamp=header.ts,
            exclude=header.exclude,
            seq=header.seq,
        )
    elif isinstance(header, RevokeHeader):
        event = Revoke(project_id, header.user_id)
    else:
        event = Resync(project_id)
    return header.origin, event
