"""The JSON text protocol: every message an envelope `{type, payload, timestamp, user_id, ...}`."""

from __future__ import annotations

from pydantic_core import to_json

from app.errors import Refusal
from app.protocols.base import Route
from app.protocols.json.messages import ClientMessage, epoch_timestamp, parse_client_message
from app.rooms.events import RoomEvent

# Message types are few; the bound only guards against a peer instance sending junk types.
_MAX_HEADS = 64


class JsonCodec:
    """The protocol of `/ws/`: JSON text both ways, binary frames refused."""

    name = "json"
    binary = False
    acknowledges = True
    paced = False
    document_id = None
    keepalive = None

    def __init__(self) -> None:
        # b'{"type":"cursor_update","payload":' for each type seen: a handful of entries.
        self._heads: dict[str, bytes] = {}

    def decode(self, text: str | None, data: bytes | None) -> ClientMessage:
        if text is None:
            raise Refusal("unsupported_frame", "binary frames are not supported: send JSON text")
        return parse_client_message(text)

    def closes_for(self, refusal: Refusal) -> None:
        # Every refusal reaches the client as an `error` message, and a refused update was
        # applied nowhere: the client knows, and keeps it or drops it.
        return None

    def encode(self, event: RoomEvent) -> bytes:
        # Assembled from parts, not serialised: the payload is JSON already, and the author's
        # part is encoded once per connection. Same bytes as to_json of the envelope dict.
        head = self._heads.get(event.type)
        if head is None:
            head = b'{"type":' + to_json(event.type) + b',"payload":'
            if len(self._heads) < _MAX_HEADS:
                self._heads[event.type] = head
        return b"".join(
            (
                head,
                event.payload,
                b',"timestamp":"',
                epoch_timestamp(event.timestamp).encode(),
                b'"',
                event.author.json_tail,
            )
        )


class JsonRoutes:
    """`/ws/{project_id}`: the rest of the path is the project."""

    def __init__(self, codec: JsonCodec) -> None:
        self._codec = codec

    def __call__(self, path: str) -> Route:
        return Route(path, self._codec)
