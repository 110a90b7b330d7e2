"""Test doubles shared by the unit tests: a frame transport and a backlog observer that record."""

from __future__ import annotations

from collections.abc import Callable


class FakeTransport:
    """A FrameTransport whose buffer the test fills and drains by hand.

    `room` is how many more frames fit before the buffer reports full; None means unlimited.
    """

    def __init__(self, *, can_write: bool = True, room: int | None = None) -> None:
        self.can_write = can_write
        self.closed = False
        self.room = room
        self.sent: list[bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.drain_callback: Callable[[], None] | None = None
        self.drain_registrations: list[Callable[[], None] | None] = []
        self.frame_limit: int | None = None

    def send_data(self, data: bytes, binary: bool = False) -> None:
        assert not self.closed, "a frame was written to a closed transport"
        assert self.can_write, "a frame was written while the buffer was full"
        self.sent.append(data)
        if self.room is not None:
            self.room -= 1
            if self.room <= 0:
                self.can_write = False

    def offer(self, data: bytes, frame: bytes | None = None, binary: bool = False) -> bool:
        assert frame is None or frame.endswith(data), "the prepared frame does not carry the data"
        if self.closed:
            return True
        if not self.can_write:
            return False
        self.send_data(data, binary)
        return True

    def close_with(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))
        self.closed = True

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        self.drain_callback = callback
        self.drain_registrations.append(callback)

    def limit_frames(self, max_bytes: int) -> None:
        self.frame_limit = max_bytes

    def drain(self, room: int | None = None) -> None:
        """Make the buffer writable again (for `room` frames) and call the drain callback."""
        self.can_write = True
        self.room = room
        if self.drain_callback is not None:
            self.drain_callback()


class RecordingObserver:
    """A BacklogObserver that remembers every decision."""

    def __init__(self) -> None:
        self.coalesced_types: list[str] = []
        self.dropped_types: list[str] = []
        self.slow_closes = 0

    def coalesced(self, message_type: str) -> None:
        self.coalesced_types.append(message_type)

    def dropped(self, message_type: str) -> None:
        self.dropped_types.append(message_type)

    def slow_consumer_closed(self) -> None:
        self.slow_closes += 1
