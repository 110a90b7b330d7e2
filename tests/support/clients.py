"""Clients for the tests: JSON helpers over `websockets`, and raw sockets for misbehaving peers."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import SocketStream
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

HeaderList = list[tuple[str, str]]

# A guard against a hung test, not a synchronisation: every wait below ends on a message.
RECEIVE_TIMEOUT = 10.0


def open_ws(url: str, **kwargs: Any) -> connect:
    kwargs.setdefault("compression", None)
    kwargs.setdefault("open_timeout", RECEIVE_TIMEOUT)
    kwargs.setdefault("max_size", 4 * 1024 * 1024)
    return connect(url, **kwargs)


async def receive(ws: ClientConnection) -> dict[str, Any]:
    with anyio.fail_after(RECEIVE_TIMEOUT):
        raw = await ws.recv()
    assert isinstance(raw, str), f"expected a text frame, got {type(raw).__name__}"
    message: dict[str, Any] = json.loads(raw)
    return message


async def receive_type(ws: ClientConnection, message_type: str) -> dict[str, Any]:
    """The next message, asserting its type."""
    message = await receive(ws)
    assert message["type"] == message_type, f"expected {message_type}, got {message}"
    return message


async def pong_after_acks(ws: ClientConnection) -> None:
    """Read up to the pong of a ping just sent: only acknowledgements (`yjs_ack`, which come
    when the store has the update, before or after the pong) may come first."""
    while (message := await receive(ws))["type"] != "pong":
        assert message["type"] == "yjs_ack", f"expected pong, got {message}"


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes the connection; the close code it sent."""
    with anyio.fail_after(RECEIVE_TIMEOUT):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None


async def send(ws: ClientConnection, message_type: str, payload: Any = None) -> None:
    body: dict[str, Any] = {"type": message_type}
    if payload is not None:
        body["payload"] = payload
    await ws.send(json.dumps(body))


@asynccontextmanager
async def member(url: str, **kwargs: Any) -> AsyncIterator[tuple[ClientConnection, dict[str, Any]]]:
    """A joined connection and the presence_state it received first."""
    async with open_ws(url, **kwargs) as ws:
        state = await receive_type(ws, "presence_state")
        yield ws, state


def upgrade_headers(port: int, changes: Mapping[str, str | None] | None = None) -> HeaderList:
    """The headers of a valid upgrade request, with `changes` applied (None removes one)."""
    headers: dict[str, str | None] = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        **(changes or {}),
    }
    return [(name, value) for name, value in headers.items() if value is not None]


def exchange(
    port: int, path: str, headers: HeaderList, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """Send one request head exactly as given; the response's status, headers (names in lower
    case) and body, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=RECEIVE_TIMEOUT) as sock:
        lines = [f"{method} {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split(" ", 2)[1]), fields, body


class RawClient:
    """A WebSocket client by hand, for what well-behaved libraries refuse to do: never answer
    pings, send invalid UTF-8, or vanish without a close frame."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=RECEIVE_TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during handshake")
            response += chunk
        head, _, self._buffer = response.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.response_head = head.decode("latin-1")
        # RSV1 of the last frame read: set on a message compressed with permessage-deflate.
        self.last_rsv1 = False

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        mask = os.urandom(4)
        header = bytes([(0x80 if fin else 0) | opcode])
        length = len(payload)
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def read_frame(self) -> tuple[int, bytes]:
        """The next frame (opcode, payload); pings are returned, not answered."""
        first, second = self._read(2)
        self.last_rsv1 = bool(first & 0x40)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        return first & 0x0F, self._read(length)

    def read_until_close(self) -> int | None:
        """Read until a close frame (its code) or the end of the stream (None)."""
        try:
            while True:
                opcode, payload = self.read_frame()
                if opcode == 0x8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        except (ConnectionError, OSError):
            return None

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawHttp:
    """An HTTP/1.1 request by hand, for what HTTP clients never do: stop part way through a
    body, trickle it, or declare far more than they send."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self._buffer = b""

    async def send_head(self, method: str, path: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *map(": ".join, headers.items())]
        await self.stream.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def send_chunk(self, data: bytes) -> None:
        await self.stream.send(b"%x\r\n%s\r\n" % (len(data), data))

    async def _receive(self) -> bytes:
        with anyio.fail_after(RECEIVE_TIMEOUT):
            return await self.stream.receive(65536)

    async def response(self) -> RawResponse:
        """The next response; fails if none arrives within RECEIVE_TIMEOUT."""
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += await self._receive()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            self._buffer += await self._receive()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return RawResponse(int(status_line.split(" ", 2)[1]), headers, body)

    async def closed_by_server(self) -> bool:
        """Whether the server closes the connection (or resets it) rather than send more."""
        if self._buffer:
            return False
        try:
            await self._receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return True
        return False


@asynccontextmanager
async def raw_http(port: int) -> AsyncIterator[RawHttp]:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        yield RawHttp(stream)
