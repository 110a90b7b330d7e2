"""The codec seam: what a wire protocol must provide for a connection to speak it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app.errors import Refusal
from app.protocols.json.messages import InboundMessage
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

    @property
    def document_id(self) -> str | None:
        """The one document the protocol's connections are bound to, for a protocol whose
        frames name none (a codec per document); None when frames name their documents."""

    @property
    def acknowledges(self) -> bool:
        """True when the protocol carries `yjs_ack`; without it, the answer to a sync step 1
        waits until every update the connection sent before it is stored."""

    @property
    def paced(self) -> bool:
        """True when frames past the rate limit wait to be read instead of being dropped with
        an `error`: a protocol without error messages would lose a dropped update silently."""

    @property
    def keepalive(self) -> bytes | None:
        """A message the client ignores, sent periodically to connections whose clients close
        quiet connections themselves; None when its clients need none."""

    def decode(self, text: str | None, data: bytes | None) -> InboundMessage:
        """One received frame (`text` for a text frame, `data` for a binary one) as a validated
        client message; raises Refusal with what the client should be told."""

    def encode(self, event: RoomEvent) -> bytes | None:
        """The message carrying `event`, unframed; None when the protocol has no form for it
        (its connections then do not get it)."""

    def close_code(self, code: int) -> int:
        """The code this protocol's clients get for one of CloseCode's."""

    def closes_for(self, refusal: Refusal) -> tuple[int, str] | None:
        """The close a refusal calls for, when the protocol cannot tell its client otherwise
        and going on would leave it believing the server holds what it refused."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where an upgrade's path leads: its project, and the protocol it speaks (for a protocol
    whose frames name no document, the codec of the one document the path names)."""

    project_id: str
    codec: Codec
