"""uvicorn's HTTP protocol with limits on the request head and body, which uvicorn leaves unbounded.

A client that opens a connection and never finishes its request (or upgrade) is answered 408
and dropped after the handshake timeout; a request head larger than the limit, or with a line
longer than 8 KB, gets 431 before the parser sees it. (websockets refuses such lines during the
upgrade, and uvicorn's sans-I/O protocol then never answers: the client would hang.)

Bodies are limited here too, while they arrive, so that no layer above (the app reads a whole
body before it validates it) can be made to hold more: a declared Content-Length over the limit
gets 413 before a byte of the body is read, and a chunked body as soon as its running total
passes the limit. A body must also arrive whole within the body timeout, or the client gets 408:
trickled, it would otherwise hold the connection, and the request waiting on it, forever. Either
way the connection is closed, as the rest of such a body is not worth reading.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.socket.client_faults import ClientFaultsProtocol

MAX_LINE_BYTES = 8192

logger = logging.getLogger("texflow.http")


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
    body_timeout: ClassVar[float] = 10.0
    max_body_bytes: ClassVar[int] = 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head = bytearray()
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_bytes = 0
        # Set once the connection is refused: the parser may still call back for the rest of
        # the data it was fed, and none of it may reach the app.
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._start_head_timer()

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._stop_head_timer()
        declared, chunked = self._body_framing()
        if declared > self.max_body_bytes:
            # No cycle exists for this request yet: answer only if no earlier one is under way.
            self._refuse_too_large(answer=self._idle())
            return
        super().on_headers_complete()
        self._body_bytes = 0
        if (declared or chunked) and not self._upgrading():
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        # Counted even once the app has answered: uvicorn then reads the rest of the body only
        # to discard it, and that too must end.
        self._body_bytes += len(body)
        if self._body_bytes > self.max_body_bytes:
            self._refuse_too_large(answer=self._own_answer_pending())
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._stop_body_timer()
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            head = self._head if end < 0 else self._head[:end]
            if len(head) > self.max_head_bytes or any(
                len(line) > MAX_LINE_BYTES for line in head.split(b"\r\n")
            ):
                response = _response(
                    431,
                    "Request Header Fields Too Large",
                    "headers_too_large",
                    f"expected a request head of at most {self.max_head_bytes} bytes "
                    f"and lines of at most {MAX_LINE_BYTES}",
                )
                self._refuse(response if self._idle() else None)
                return
            if end >= 0:
                self._head = bytearray()
        super().data_received(data)

    def handle_websocket_upgrade(self) -> None:
        if self._refused:  # the parser reports an upgrade even for a head refused above
            return
        self._stop_body_timer()
        super().handle_websocket_upgrade()
        # The WebSocket protocol has the whole head now, and the transport: if websockets
        # refused the head while parsing it, nothing else would answer.
        protocol = self.transport.get_protocol()
        if isinstance(protocol, ClientFaultsProtocol):
            protocol.answer_unparsed_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_body_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # The HTTP parser refused the request; in the shape of every other refusal, and, like
        # them, written only when no other response is under way on the connection.
        response = _response(
            400, "Bad Request", "invalid_request", "the request is not valid HTTP/1.1"
        )
        self._refuse(response if self._idle() else None)

    def _body_framing(self) -> tuple[int, bool]:
        """The declared Content-Length (0 if none) and whether the body is chunked."""
        declared, chunked = 0, False
        for name, value in self.headers:
            if name == b"content-length":
                # llhttp has already refused anything but digits (and spaces around them).
                declared = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        return declared, chunked

    def _upgrading(self) -> bool:
        return bool(self.parser.should_upgrade()) and self._should_upgrade()

    def _idle(self) -> bool:
        """No response is under way or queued: a refusal written now answers the newest request."""
        return not self.pipeline and (self.cycle is None or self.cycle.response_complete)

    def _own_answer_pending(self) -> bool:
        """The request whose body is arriving is being served and has not begun its response."""
        return not self.pipeline and not self.cycle.response_started

    def _start_head_timer(self) -> None:
        self._head = bytearray()
        self._head_timer = self.loop.call_later(self.handshake_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        response = _response(
            408, "Request Timeout", "request_timeout", "the request was not completed"
        )
        self._refuse(response if self._idle() else None)

    def _body_timed_out(self) -> None:
        self._body_timer = None
        self._refuse_body(
            408,
            "Request Timeout",
            "request_timeout",
            f"expected the whole body within {self.body_timeout:g} s, "
            f"got {self._body_bytes} bytes of it",
            answer=self._own_answer_pending(),
        )

    def _refuse_too_large(self, *, answer: bool) -> None:
        self._refuse_body(
            413,
            "Content Too Large",
            "payload_too_large",
            f"expected at most {self.max_body_bytes} bytes",
            answer=answer,
        )

    def _refuse_body(
        self, status: int, phrase: str, code: str, message: str, *, answer: bool
    ) -> None:
        # A client's mistake, but a backend service running into a limit needs to be noticed.
        logger.info(
            "request body refused",
            extra={
                "event": "http_body_refused",
                "status": status,
                "method": self.parser.get_method().decode("ascii", "replace"),
                "ip": self.client[0] if self.client else None,
            },
        )
        self._refuse(_response(status, phrase, code, message) if answer else None)

    def _refuse(self, response: bytes | None) -> None:
        """Write `response`, if any, and close; the app's request, if any, sees a disconnect."""
        self._stop_head_timer()
        self._stop_body_timer()
        self._refused = True
        if response is not None and not self.transport.is_closing():
            self.transport.write(response)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # What uvicorn does when the connection is lost, now rather than once the socket
            # has closed: a response the app writes meanwhile must not follow ours.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def http_protocol_class(
    *,
    handshake_timeout: float,
    max_head_bytes: int,
    body_timeout: float,
    max_body_bytes: int,
) -> type[GatewayHttpProtocol]:
    """A GatewayHttpProtocol subclass bound to this server's limits."""
    return type(
        "ConfiguredGatewayHttpProtocol",
        (GatewayHttpProtocol,),
        {
            "handshake_timeout": handshake_timeout,
            "max_head_bytes": max_head_bytes,
            "body_timeout": body_timeout,
            "max_body_bytes": max_body_bytes,
        },
    )
