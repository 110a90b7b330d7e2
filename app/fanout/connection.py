"""One live WebSocket in a room: who it is, and a bounded backlog for when its peer reads slowly.

Overflow policy: while the socket buffer is full, ephemeral messages (cursor, selection,
typing, awareness) are coalesced so only each sender's latest one waits; durable ones wait in
order; past the count or byte limit the connection is closed with 1013 so the client
reconnects and resyncs. Nothing durable is ever dropped silently.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from app.errors import CloseCode
from app.protocols.base import Codec
from app.protocols.json.messages import EPHEMERAL_TYPES
from app.rooms.events import Author, RoomEvent
from app.socket.transport import FrameTransport


class BacklogObserver(Protocol):
    """Told about every backlog decision, for metrics."""

    def coalesced(self, message_type: str) -> None: ...
    def dropped(self, message_type: str) -> None: ...
    def slow_consumer_closed(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BacklogLimits:
    messages: int
    bytes: int


class _Entry:
    __slots__ = ("data",)

    def __init__(self, data: bytes | None) -> None:
        # None marks an entry superseded by a later one from the same sender.
        self.data = data


class Connection:
    """A member of a room; `deliver` never blocks and never raises."""

    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_binary",
        "_drained",
        "_latest",
        "_limits",
        "_live",
        "_observer",
        "_transport",
        "author",
        "client_id",
        "codec",
        "connected_at",
        "ip",
        "project_id",
        "user_id",
        "username",
    )

    def __init__(
        self,
        *,
        client_id: str,
        user_id: str,
        username: str,
        project_id: str,
        ip: str,
        transport: FrameTransport,
        codec: Codec,
        limits: BacklogLimits,
        observer: BacklogObserver,
    ) -> None:
        self.client_id = client_id
        self.user_id = user_id
        self.username = username
        self.author = Author(user_id, username, client_id)
        self.codec = codec
        self._binary = codec.binary
        self.project_id = project_id
        self.ip = ip
        self.connected_at = time.monotonic()
        self._transport = transport
        self._limits = limits
        self._observer = observer
        # Created when first needed: an empty deque is 760 bytes, and most connections never
        # back up.
        self._backlog: deque[_Entry] | None = None
        self._latest: dict[tuple[str, str], _Entry] = {}
        self._live = 0
        self._backlog_bytes = 0
        # Futures of the session waiting for the backlog to empty (before a large reply).
        self._drained: list[asyncio.Future[None]] | None = None

    @property
    def backlog(self) -> int:
        """Messages waiting for the socket buffer to drain."""
        return self._live

    def send(self, event: RoomEvent, *, reply: bool = False) -> bool:
        """Encode `event` in this connection's protocol and deliver it; False when the
        protocol has no form for it."""
        data = self.codec.encode(event)
        if data is None:
            return False
        self.deliver(data, event.type, event.author.client_id, reply=reply)
        return True

    async def drained(self) -> None:
        """Until nothing waits in the backlog (or the connection closed)."""
        if not self._backlog or self._transport.closed:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._drained is None:
            self._drained = []
        self._drained.append(future)
        await future

    def _wake(self) -> None:
        waiting, self._drained = self._drained, None
        for future in waiting or ():
            if not future.done():
                future.set_result(None)

    def deliver(
        self,
        data: bytes,
        message_type: str,
        sender: str,
        frame: bytes | None = None,
        *,
        reply: bool = False,
    ) -> None:
        """Send `data` (a message in this connection's protocol) now if the socket takes it,
        else queue it under the overflow policy.

        `frame` is `data` already framed, shared by every recipient of a broadcast. A `reply`
        is what this connection asked for (a document's state, up to MAX_DOCUMENT_BYTES): it is
        queued past the limits, which it alone may exceed, so that a large document never
        closes its reader; the session waits for `drained` before the next one."""
        transport = self._transport
        backlog = self._backlog
        if not backlog:
            if transport.offer(data, frame, self._binary):
                return
        elif transport.closed:
            return
        if backlog is None:
            backlog = self._backlog = deque()
        if not backlog:
            transport.on_drain(self.flush)
        ephemeral = message_type in EPHEMERAL_TYPES
        if ephemeral:
            key = (message_type, sender)
            previous = self._latest.get(key)
            if previous is not None and previous.data is not None:
                # Keep per-sender order: the newest goes to the back, the old one is skipped.
                self._backlog_bytes -= len(previous.data)
                previous.data = None
                self._live -= 1
                self._observer.coalesced(message_type)
        if not reply and (
            self._live >= self._limits.messages
            or self._backlog_bytes + len(data) > self._limits.bytes
        ):
            if ephemeral:
                self._observer.dropped(message_type)
                return
            self._observer.slow_consumer_closed()
            self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer")
            return
        entry = _Entry(data)
        backlog.append(entry)
        self._live += 1
        self._backlog_bytes += len(data)
        if ephemeral:
            self._latest[(message_type, sender)] = entry

    def flush(self) -> None:
        """Write queued messages while the socket takes them (called when its buffer drains)."""
        transport = self._transport
        backlog = self._backlog
        if backlog is None:
            return
        while backlog and transport.can_write and not transport.closed:
            entry = backlog.popleft()
            data = entry.data
            if data is None:
                continue
            # Sent entries must look superseded, or a later coalesce would count them again.
            entry.data = None
            self._live -= 1
            self._backlog_bytes -= len(data)
            transport.send_data(data, self._binary)
        if not backlog:
            self._latest.clear()
            transport.on_drain(None)
            if self._drained:
                self._wake()
        elif transport.closed and self._drained:
            # Nothing more will drain: whoever waits for it must not wait forever.
            self._wake()

    def close(self, code: int, reason: str) -> None:
        """Close the WebSocket; the session's receive loop then sees the disconnect."""
        self._backlog = None
        self._latest.clear()
        self._live = 0
        self._backlog_bytes = 0
        self._wake()
        self._transport.close_with(self.codec.close_code(code), reason)
