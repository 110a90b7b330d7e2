"""uvicorn's HTTP protocol with limits on the request head, which uvicorn leaves unbounded.

A client that opens a connection and never finishes its request (or upgrade) is answered 408
and dropped after the handshake timeout; a request head larger than the limit, or with a line
longer than 8 KB, gets 431 before the parser sees it. (websockets refuses such lines during the
upgrade, and uvicorn's sans-I/O protocol then never answers: the client would hang.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.socket.client_faults import ClientFaultsProtocol

MAX_LINE_BYTES = 8192


def _response(status: int, phrase: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": code, "message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GatewayHttpProtocol(HttpToolsProtocol):
    handshake_timeout: ClassVar[float] = 10.0
    max_head_bytes: ClassVar[int] = 16384

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head = bytearray()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            head = self._head if end < 0 else self._head[:end]
            if len(head) > self.max_head_bytes or any(
                len(line) > MAX_LINE_BYTES for line in head.split(b"\r\n")
            ):
                self._refuse(
                    _response(
                        431,
                        "Request Header Fields Too Large",
                        "headers_too_large",
                        f"expected a request head of at most {self.max_head_bytes} bytes "
                        f"and lines of at most {MAX_LINE_BYTES}",
                    )
                )
                return
            if end >= 0:
                self._head = bytearray()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # The HTTP parser refused the request; in the shape of every other refusal.
        self._refuse(
            _response(400, "Bad Request", "invalid_request", "the request is not valid HTTP/1.1")
        )

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # The WebSocket protocol has the whole head now, and the transport: if websockets
        # refused the head while parsing it, nothing else would answer.
        protocol = self.transport.get_protocol()
        if isinstance(protocol, ClientFaultsProtocol):
            protocol.answer_unparsed_request()

    def _start_head_timer(self) -> None:
        self._head = bytearray()
        self._head_timer = self.loop.call_later(self.handshake_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._refuse(
            _response(408, "Request Timeout", "request_timeout", "the request was not completed")
        )

    def _refuse(self, response: bytes) -> None:
        self._stop_head_timer()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()


def http_protocol_class(handshake_timeout: float, max_head_bytes: int) -> type[GatewayHttpProtocol]:
    """A GatewayHttpProtocol subclass bound to this server's limits."""
    return type(
        "ConfiguredGatewayHttpProtocol",
        (GatewayHttpProtocol,),
        {"handshake_timeout": handshake_timeout, "max_head_bytes": max_head_bytes},
    )
