"""The load generator: lean WebSocket clients on one asyncio (uvloop) event loop.

A `websockets` client costs more per message than the server it measures, so clients here are
bare `asyncio.Protocol`s: the opening handshake is written by hand, server frames (unmasked)
are parsed with offsets into the received bytes, pings are answered with masked pongs, and
text frames go to a shared `Sink` that counts them and, when asked, reads the send time the
sender put in the message to record latencies (binary frames, which only the y-websocket
protocol of scenario E sends, go to the sink's `binary`). The sender writes masked frames
(RFC 6455).

Time is `time.perf_counter_ns()` (CLOCK_MONOTONIC on Linux, one clock for every process).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import random
import socket
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from websockets.speedups import apply_mask

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MESSAGE_SIZE = 100
STAMP = b'"t='
STAMP_DIGITS = 20
now_ns = time.perf_counter_ns


class Meter:
    """Totals over every sink of a run: deliveries, the last arrival, and one progress waiter."""

    __slots__ = ("_target", "_waiter", "last_rx", "received")

    def __init__(self) -> None:
        self.received = 0
        self.last_rx = 0
        self._target = 0
        self._waiter: asyncio.Future[None] | None = None

    def hit(self, now: int) -> None:
        self.received += 1
        self.last_rx = now
        if self._waiter is not None and self.received >= self._target:
            waiter, self._waiter = self._waiter, None
            if not waiter.done():
                waiter.set_result(None)

    async def reach(self, target: int, within: float) -> bool:
        """Wait until `received >= target`; False if `within` seconds pass first."""
        if self.received >= target:
            return True
        self._target = target
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._waiter, within)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiter = None


class Sink:
    """Where clients' text frames go. With `record` set, each frame's latency is kept (ns), and
    `rooms` (shared by the sinks of one room) keeps the time the last of `recipients` got it."""

    __slots__ = ("meter", "recipients", "record", "room_samples", "rooms", "samples")

    def __init__(self, meter: Meter, recipients: int = 0) -> None:
        self.meter = meter
        self.record = False
        self.recipients = recipients
        self.samples = array("q")
        self.rooms: dict[int, int] = {}
        self.room_samples = array("q")

    def share_room(self, other: Sink) -> None:
        self.rooms = other.rooms
        self.room_samples = other.room_samples

    def reset(self, record: bool) -> None:
        self.record = record
        del self.samples[:]
        del self.room_samples[:]
        self.rooms.clear()

    def text(self, data: bytes, start: int, end: int, now: int) -> None:
        self.meter.hit(now)
        if not self.record:
            return
        at = data.find(STAMP, start, end)
        if at < 0:
            return
        sent = int(data[at + 3 : at + 3 + STAMP_DIGITS])
        self.samples.append(now - sent)
        rooms = self.rooms
        count = rooms.get(sent, 0) + 1
        rooms[sent] = count
        if count == self.recipients:
            self.room_samples.append(now - sent)

    def binary(self, data: bytes, start: int, end: int, now: int) -> None:
        """A binary frame: the JSON servers send none; a subclass that expects them counts
        them (bench.yjsload)."""


@dataclass
class Health:
    """What happened to the clients of a run, beyond the messages."""

    connected: int = 0
    failed: int = 0
    dropped: int = 0
    pings_answered: int = 0
    close_codes: dict[int, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.failures[reason] = self.failures.get(reason, 0) + 1


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame: masked, as RFC 6455 requires of clients."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    key = random.getrandbits(32).to_bytes(4, "big")
    return header + key + apply_mask(payload, key)


class Client(asyncio.Protocol):
    """One WebSocket connection; text frames go to `sink`.

    `ready` resolves on the first text frame (the service's `presence_state`) or, with
    `ready_on_pong`, on the answer to a ping sent right after the handshake (the reference
    says nothing to a new member).
    """

    __slots__ = (
        "_buffer",
        "_handshake",
        "_request",
        "closing",
        "health",
        "open",
        "ready",
        "ready_on_pong",
        "sink",
        "transport",
        "writable",
    )

    def __init__(
        self, request: bytes, sink: Sink, health: Health, ready_on_pong: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        self._request = request
        self._buffer = b""
        self._handshake = True
        self.sink = sink
        self.health = health
        self.ready_on_pong = ready_on_pong
        self.ready: asyncio.Future[None] = loop.create_future()
        self.open = False
        self.closing = False
        self.transport: asyncio.Transport | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open and not self.closing:
            self.health.dropped += 1
        self.open = False
        self.writable.set()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("connection lost before it was ready"))

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        now = now_ns()
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        position = 0
        if self._handshake:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = data
                return
            status = data[: data.find(b"\r\n")]
            self._handshake = False
            if b" 101 " not in status + b" ":
                reason = status.decode("latin-1").partition(" ")[2] or "bad response"
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(reason))
                assert self.transport is not None
                self.transport.close()
                return
            self.open = True
            self.health.connected += 1
            if self.ready_on_pong:
                self.send_frame(0x9, b"ready?")
            position = end + 4
        size = len(data)
        sink = self.sink
        while size - position >= 2:
            second = data[position + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if size - position < 4:
                    break
                length = int.from_bytes(data[position + 2 : position + 4], "big")
                header = 4
            elif length == 127:
                if size - position < 10:
                    break
                length = int.from_bytes(data[position + 2 : position + 10], "big")
                header = 10
            if second & 0x80:
                header += 4  # servers do not mask, but a masked frame is still skipped whole
            end = position + header + length
            if end > size:
                break
            opcode = data[position] & 0x0F
            if opcode == 0x1:
                sink.text(data, position + header, end, now)
                if not self.ready.done() and not self.ready_on_pong:
                    self.ready.set_result(None)
            elif opcode == 0x2:
                sink.binary(data, position + header, end, now)
            elif opcode == 0x9:
                self.send_frame(0xA, data[position + header : end])
                self.health.pings_answered += 1
            elif opcode == 0xA:
                if not self.ready.done() and self.ready_on_pong:
                    self.ready.set_result(None)
            elif opcode == 0x8:
                code = int.from_bytes(data[position + header : position + header + 2], "big")
                self._closed_by_server(code)
                return
            position = end
        if position < size:
            self._buffer = data[position:]

    # Sending

    def send_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(mask_frame(opcode, payload))

    def send_text(self, payload: bytes) -> None:
        self.send_frame(0x1, payload)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _closed_by_server(self, code: int) -> None:
        self.health.close_codes[code] = self.health.close_codes.get(code, 0) + 1
        if self.open and not self.closing:
            self.health.dropped += 1
        self.open = False
        self.closing = True
        assert self.transport is not None
        self.transport.close()


def handshake(host: str, port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode("ascii")


@dataclass(frozen=True)
class Target:
    """Where clients connect and how a new connection shows it has joined."""

    host: str
    port: int
    ready_on_pong: bool
    token: Callable[[int], str] | None = None
    # The service's y-websocket route, `/yjs/{room}/{document}`, instead of `/ws/{room}`.
    document: str | None = None

    def path(self, room: str, index: int) -> str:
        path = f"/ws/{room}" if self.document is None else f"/yjs/{room}/{self.document}"
        if self.token is None:
            return path
        return f"{path}?token={self.token(index)}"


async def connect(
    target: Target,
    rooms: Sequence[str],
    sinks: Sequence[Sink],
    health: Health,
    *,
    first_index: int = 0,
    concurrency: int = 64,
    source_ips: Sequence[str] = ("127.0.0.1",),
    ready_within: float = 60.0,
) -> list[Client]:
    """Open one client per entry of `rooms` (with its sink), at most `concurrency` handshakes
    in flight, and wait until each is ready. Failures are counted in `health`, not raised."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    sources = itertools.cycle(source_ips)
    clients: list[Client | None] = [None] * len(rooms)

    async def open_one(slot: int, room: str, sink: Sink, source: str) -> None:
        async with gate:
            index = first_index + slot
            request = handshake(target.host, target.port, target.path(room, index))
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if source != "127.0.0.1":
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.bind((source, 0))
                await asyncio.wait_for(loop.sock_connect(sock, (target.host, target.port)), 10)
                _, client = await loop.create_connection(
                    lambda: Client(request, sink, health, target.ready_on_pong), sock=sock
                )
            except (OSError, TimeoutError) as exc:
                sock.close()
                health.fail(type(exc).__name__)
                return
            try:
                await asyncio.wait_for(asyncio.shield(client.ready), ready_within)
            except (OSError, TimeoutError, ConnectionError) as exc:
                health.fail(str(exc)[:60] or type(exc).__name__)
                client.close()
                return
            clients[slot] = client

    await asyncio.gather(
        *(
            open_one(slot, room, sink, next(sources))
            for slot, (room, sink) in enumerate(zip(rooms, sinks, strict=True))
        )
    )
    return [client for client in clients if client is not None]


def close_all(clients: Iterable[Client]) -> None:
    for client in clients:
        client.close()


async def quiet(meter: Meter, silence: float = 0.5, limit: float = 120.0) -> float:
    """Wait until no text frame has arrived for `silence` seconds (join announcements
    drained); returns how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        last = meter.last_rx
        await asyncio.sleep(silence)
        if meter.last_rx == last:
            break
    return time.monotonic() - started


def cursor_message(seq: int, sent: int) -> bytes:
    """A `cursor_update` of MESSAGE_SIZE bytes carrying its send time in `document_id`
    (the only free-text field a cursor payload keeps)."""
    head = f'{{"type":"cursor_update","payload":{{"line":{seq},"column":0,"document_id":"t='
    text = f"{head}{sent:0{STAMP_DIGITS}d}"
    tail = '"}}'
    pad = MESSAGE_SIZE - len(text) - len(tail)
    return (text + ";" + "x" * (pad - 1) + tail if pad > 0 else text + tail).encode("ascii")


# Makes message `seq`, sent at `now` (ns): its payload.
MessageMaker = Callable[[int, int], bytes]


async def blast(
    sender: Client,
    meter: Meter,
    count: int,
    recipients: int,
    window: int,
    seconds: float,
    message: MessageMaker = cursor_message,
    opcode: int = 0x1,
) -> tuple[int, int]:
    """Send up to `count` messages (for at most `seconds`) as fast as the server takes them,
    keeping at most `window` messages not yet delivered to every recipient, so that nothing
    piles up in socket buffers. Returns the time of the first send and the messages sent.
    `message` makes each one (default: a stamped cursor update), sent as `opcode` frames."""
    first = now_ns()
    deadline = first + int(seconds * 1e9)
    base = meter.received
    sent = 0
    for seq in range(count):
        if seq - (meter.received - base) // recipients >= window:
            await meter.reach(base + (seq - window // 2) * recipients, 5.0)
        if not sender.writable.is_set():
            await sender.writable.wait()
        now = now_ns()
        if now > deadline:
            break
        sender.send_frame(opcode, message(seq, now))
        sent += 1
        if seq % 32 == 31:
            await asyncio.sleep(0)
    return first, sent


async def settle(meter: Meter, target: int, idle: float = 2.0) -> bool:
    """Wait until `target` deliveries, or until none arrives for `idle` seconds."""
    while True:
        before = meter.received
        if await meter.reach(target, idle):
            return True
        if meter.received == before:
            return False


async def paced(
    sender: Client,
    rate: float,
    count: int,
    spin: bool = True,
    message: MessageMaker = cursor_message,
    opcode: int = 0x1,
) -> float:
    """Send `count` messages at `rate` per second on a fixed schedule (late sends are not
    skipped, so queueing shows up as latency); returns the achieved rate. `message` and
    `opcode` as for `blast`.

    With `spin` the loop never sleeps: it polls for I/O (`sleep(0)`) until each send is due,
    so the load core never goes idle and the time a sleeping CPU takes to wake up (large on
    a virtual machine) is not added to every delivery by the load generator itself.
    Without it, it sleeps until a millisecond before each send."""
    interval = 1e9 / rate
    start = now_ns()
    for seq in range(count):
        due = start + int(seq * interval)
        while True:
            now = now_ns()
            if now >= due:
                break
            wait = (due - now) / 1e9
            await asyncio.sleep(0 if spin or wait <= 0.0015 else wait - 0.001)
        sender.send_frame(opcode, message(seq, now_ns()))
    elapsed = (now_ns() - start) / 1e9
    return count / elapsed if elapsed > 0 else rate
