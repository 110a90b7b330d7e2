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
    encoded: dict[Codec, tuple[bytes, bytes] | None] = {}
    codec: Codec | None = None
    current: tuple[bytes, bytes] | None = None
    delivered = 0
    for client_id, connection in connections.items():
        if client_id == exclude:
            continue
        if connection.codec is not codec:
            codec = connection.codec
            if codec in encoded:
                current = encoded[codec]
            else:
                data = codec.encode(event)
                current = None if data is None else (data, data_frame(data, codec.binary))
                encoded[codec] = current
        if current is not None:
            connection.deliver(current[0], message_type, sender, current[1])
            delivered += 1
    return delivered
