"""One event to many connections: encoded and framed once per protocol, never per recipient."""

from __future__ import annotations

from collections.abc import Mapping

from app.fanout.connection import Connection
from app.protocols.base import Codec
from app.rooms.events import RoomEvent
from app.socket.frames import data_frame


def broadcast(event: RoomEvent, connections: Mapping[str, Connection]) -> int:
    """Deliver `event` to every connection but `event.exclude`; returns how many got it."""
    exclude = event.exclude
    if len(connections) == (1 if exclude in connections else 0):
        # Alone in the room (one person editing): nothing encoded, nothing framed.
        return 0
    message_type, sender = event.type, event.author.client_id
    # Rooms nearly always speak one protocol: the last codec's bytes are kept at hand, and
    # the table is only consulted when a member speaks another.
    encoded: dict[Codec, tuple[bytes | None, bytes]] = {}
    codec: Codec | None = None
    data: bytes | None = None
    frame = b""
    delivered = 0
    for client_id, connection in connections.items():
        if client_id == exclude:
            continue
        if connection.codec is not codec:
            codec = connection.codec
            cached = encoded.get(codec)
            if cached is None:
                data = codec.encode(event)
                frame = b"" if data is None else data_frame(data, codec.binary)
                encoded[codec] = (data, frame)
            else:
                data, frame = cached
        if data is not None:
            connection.deliver(data, message_type, sender, frame)
            delivered += 1
    return delivered
