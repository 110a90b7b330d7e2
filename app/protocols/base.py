"""The codec seam: what a wire protocol must provide for a connection to speak it."""

from __future__ import annotations

from typing import Protocol

from app.protocols.json.messages import ClientMessage
from app.rooms.events import RoomEvent


class Codec(Protocol):
    """One wire protocol, chosen for a connection at admission.

    Rooms fan out protocol-neutral events; each codec in use encodes a broadcast once, and its
    frame is shared by every recipient speaking it. Incoming frames become the same validated
    client messages whatever the protocol, so sessions and rooms never see a wire format.
    """

    @property
    def name(self) -> str:
        """The protocol's label in logs and metrics."""

    @property
    def binary(self) -> bool:
        """True when the protocol's frames are binary, False for text."""

    def decode(self, text: str | None, data: bytes | None) -> ClientMessage:
        """One received frame (`text` for a text frame, `data` for a binary one) as a validated
        client message; raises Refusal with what the client should be told."""

    def encode(self, event: RoomEvent) -> bytes | None:
        """The message carrying `event`, unframed; None when the protocol has no form for it
        (its connections then do not get it)."""
