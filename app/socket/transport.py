"""uvicorn's sans-I/O WebSocket protocol, extended with sends that never wait.

The ASGI `send` awaits per message and cannot abort a peer that stopped reading, so the
protocol hands connections a `FrameTransport` (under the scope extension
`texflow.transport`): frames are written at once, a full buffer is reported instead of awaited,
and a peer that does not drain its buffer within the write deadline is cut off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import Any, ClassVar, Protocol

from websockets.exceptions import InvalidState
from websockets.protocol import State

from app.errors import CloseCode
from app.socket.client_faults import ClientFaultsProtocol
from app.socket.frames import data_frame
from app.socket.primitives import Flag, Inbox

EXTENSION = "texflow.transport"


class FrameTransport(Protocol):
    """What a connection writes its outgoing frames to."""

    @property
    def can_write(self) -> bool:
        """True while the socket buffer is below its high-water mark."""

    @property
    def closed(self) -> bool:
        """True once a close frame was sent or the peer is gone; sends are then dropped."""

    def send_data(self, data: bytes, binary: bool = False) -> None:
        """Frame `data` (UTF-8 text, or binary) and hand it to the socket now."""

    def offer(self, data: bytes, frame: bytes | None = None, binary: bool = False) -> bool:
        """Send `data` now unless the buffer is full: False then, and nothing was written.
        True when written, or dropped because the connection is closing. `frame` is
        `data_frame(data, binary)`, built once for every recipient of a broadcast."""

    def close_with(self, code: int, reason: str) -> None:
        """Start the closing handshake now, whatever is buffered."""

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` each time the buffer drains below its low-water mark."""

    def limit_frames(self, max_bytes: int) -> None:
        """Accept incoming messages of up to `max_bytes` (the server's limit otherwise)."""


class GatewayProtocol(ClientFaultsProtocol):
    """The WebSocket protocol the service runs on; `app.upgrade.server` configures it."""

    # Set per server by `app.upgrade.server.protocol_class`, since uvicorn builds protocols itself.
    write_wait: ClassVar[float] = 10.0

    # Whether a broadcast frame can go straight to the socket: accepted, no extension to
    # apply (permessage-deflate), buffer below its high-water mark, no close frame sent, peer
    # not gone. One flag kept by every change of those, instead of five checks per recipient.
    _clear = False
    _accepted_plain = False
    _close_sent = False
    _disconnected = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Same interface, a fraction of the memory: these live as long as the connection.
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag(True)  # type: ignore[assignment]
        self._drain_callback: Callable[[], None] | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        # The socket buffer's size when the deadline was armed: a reader that took some of it
        # meanwhile is slow, not stalled, and gets another WS_WRITE_WAIT.
        self._buffered_at_deadline = 0

    @property
    def close_sent(self) -> bool:
        return self._close_sent

    @close_sent.setter
    def close_sent(self, value: bool) -> None:
        # Only ever set to True after __init__, which sets False before `writable` exists.
        self._close_sent = value
        if value:
            self._clear = False

    @property
    def disconnected(self) -> bool:
        return self._disconnected

    @disconnected.setter
    def disconnected(self, value: bool) -> None:
        self._disconnected = value
        if value:
            self._clear = False

    def _update_clear(self) -> None:
        self._clear = (
            self._accepted_plain
            and not self._close_sent
            and not self._disconnected
            and self.writable.is_set()
        )

    async def run_asgi(self) -> None:
        self.scope["extensions"][EXTENSION] = {"transport": self}
        try:
            await super().run_asgi()
        finally:
            # The entry points back at this protocol, which owns the scope: left in place,
            # every closed connection waited for a full collection to be freed
            # (docs/performance.md, memory after a flood).
            self.scope["extensions"].pop(EXTENSION, None)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The upgrade's request and response (headers included) are not read again.
            del self.request, self.response
            self._accepted_plain = not self.conn.extensions and self.conn.state is State.OPEN
            self._update_clear()

    # FrameTransport

    @property
    def can_write(self) -> bool:
        return self.writable.is_set()

    @property
    def closed(self) -> bool:
        return self.close_sent or self.disconnected or self.transport.is_closing()

    def send_data(self, data: bytes, binary: bool = False) -> None:
        if self.closed:
            return
        try:
            if binary:
                self.conn.send_binary(data)
            else:
                self.conn.send_text(data)
        except InvalidState:
            # The peer's close frame arrived first; its disconnect is already queued.
            return
        self.transport.write(b"".join(self.conn.data_to_send()))

    def offer(self, data: bytes, frame: bytes | None = None, binary: bool = False) -> bool:
        if self._clear:
            # Answering the peer's close frame closes the transport but leaves close_sent
            # False, so the flag alone does not prove the connection still takes frames.
            if not self.transport.is_closing():
                # A broadcast is framed once for all its recipients (gorilla's
                # PreparedMessage): a connection without extensions takes it as is.
                self.transport.write(data_frame(data, binary) if frame is None else frame)
            return True
        if self.closed:
            return True
        if not self.writable.is_set():
            return False
        self.send_data(data, binary)
        return True

    def close_with(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        try:
            self.conn.send_close(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
        except InvalidState:
            pass
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        # abort(), not close(): close() waits for the buffer to drain, which a peer that stopped
        # reading never lets happen.
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        self._drain_callback = callback

    def limit_frames(self, max_bytes: int) -> None:
        # uvicorn's ws_max_size holds for every route; this connection's route needs another.
        self.conn.max_message_size = max_bytes

    # asyncio flow control

    def pause_writing(self) -> None:
        super().pause_writing()
        self._clear = False
        if self._write_deadline is None:
            self._arm_write_deadline()

    def _arm_write_deadline(self) -> None:
        self._buffered_at_deadline = self.transport.get_write_buffer_size()
        self._write_deadline = self.loop.call_later(self.write_wait, self._write_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._update_clear()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        if self._drain_callback is not None:
            self._drain_callback()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        callback, self._drain_callback = self._drain_callback, None
        super().connection_lost(exc)
        if callback is not None:
            # The backlog's owner learns that nothing more will drain (a session waiting for
            # its backlog to empty must not wait forever).
            callback()

    def _write_timed_out(self) -> None:
        self._write_deadline = None
        if self.closed:
            return
        if self.transport.get_write_buffer_size() < self._buffered_at_deadline:
            # Progress: a large message (a document's state) on a slow link is not a stall.
            self._arm_write_deadline()
            return
        self.queue.put_nowait(
            {
                "type": "websocket.disconnect",
                "code": CloseCode.TRY_AGAIN_LATER,
                "reason": "write timeout",
            }
        )
        self.close_sent = True
        self.transport.abort()


def transport_of(scope: MutableMapping[str, Any]) -> FrameTransport | None:
    """The FrameTransport of an accepted WebSocket, when the server provides one."""
    extension = scope.get("extensions", {}).get(EXTENSION)
    return None if extension is None else extension["transport"]


def protocol_class(write_wait: float) -> type[GatewayProtocol]:
    """A GatewayProtocol subclass bound to this server's write deadline."""
    return type("ConfiguredGatewayProtocol", (GatewayProtocol,), {"write_wait": write_wait})
