"""A client's mistakes at the WebSocket protocol level, answered and logged as the service
answers and logs the rest.

websockets' sans-I/O handshake refuses a request that is not a valid upgrade (bad
`Sec-WebSocket-Version`, missing `Sec-WebSocket-Key`, two `Upgrade` protocols, a POST...)
before the app sees it, with a plain-text body. Here those refusals take the service's
`{"error", "message"}` shape, and a version refusal names the version the server speaks, as
RFC 6455 section 4.2.2 requires. A head websockets refuses while parsing it, which uvicorn
would never answer, is answered too.

Each refusal is logged once, at info, as `ws_rejected` (the app logs its own refusals the same
way), and invalid UTF-8 is closed with 1007 and a reason the disconnect line carries. uvicorn
and websockets logged these at error level, with a traceback for the UTF-8: error level is for
the service's own faults, and those still log there.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers
from websockets.exceptions import (
    HeaderLineTooLong,
    InvalidHandshake,
    InvalidHeader,
    InvalidHeaderValue,
    InvalidMethod,
    InvalidOrigin,
    InvalidUpgrade,
    TooManyHeaders,
)
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request, Response
from websockets.server import ServerProtocol
from websockets.typing import StatusLike

from app.errors import CloseCode

WEBSOCKET_VERSION = "13"

logger = logging.getLogger("texflow.ws")
# uvicorn hands websockets its own error logger, where websockets reports every connection
# opened, refused and closed at info. The service logs each of those itself, with who and
# why; `app.logs` keeps this logger at warning, so websockets' own faults still show.
WEBSOCKETS_LOGGER = logging.getLogger("websockets.server")

# A refused version is quoted back only when it looks like one ("8", "7, 8"), never at length.
_QUOTABLE_VERSION = re.compile(r"[0-9][0-9, ]{0,15}")

# For refusals websockets makes without a handshake fault to explain them (uvicorn's own).
_CODES_BY_STATUS = {403: "forbidden", 500: "internal_error"}


def refusal_of(fault: BaseException | None, status: int) -> tuple[str, str]:
    """The `error` code and client-safe message for a handshake refused with `status`."""
    if isinstance(fault, InvalidHeader) and fault.name.lower() == "sec-websocket-version":
        if fault.value is None:
            got = "none"
        elif not isinstance(fault, InvalidHeaderValue):
            got = "several headers"
        elif _QUOTABLE_VERSION.fullmatch(fault.value):
            got = fault.value
        else:
            got = "another value"
        return (
            "unsupported_websocket_version",
            f"expected Sec-WebSocket-Version {WEBSOCKET_VERSION}, got {got}",
        )
    if isinstance(fault, InvalidUpgrade):
        return "upgrade_required", "expected Upgrade: websocket and Connection: Upgrade"
    if isinstance(fault, InvalidMethod):
        return "method_not_allowed", "a WebSocket upgrade must be a GET"
    if isinstance(fault, InvalidOrigin):
        return "origin_not_allowed", "this Origin may not open WebSockets here"
    if isinstance(fault, InvalidHeader):
        # The header's name, never its value: nothing the client sent is echoed back.
        missing = "missing" if fault.value is None else "invalid"
        return "invalid_handshake", f"{missing} {fault.name} header"
    if isinstance(fault, TooManyHeaders | HeaderLineTooLong):
        return (
            "headers_too_large",
            f"expected at most {MAX_NUM_HEADERS} header lines of at most {MAX_LINE_LENGTH} bytes",
        )
    if isinstance(fault, InvalidHandshake):
        return "invalid_handshake", "the WebSocket upgrade request is malformed"
    return _CODES_BY_STATUS.get(status, "invalid_handshake"), "the WebSocket was not opened"


class JsonRefusals(ServerProtocol):
    """websockets' server handshake, refusing in the service's JSON error shape."""

    # The status and code of the last refusal made, for the log.
    refusal: tuple[int, str] | None = None

    def reject(self, status: StatusLike, text: str) -> Response:
        # Every refusal websockets makes comes through here, with the fault already recorded
        # in `handshake_exc`; `text` is its plain-text explanation, which quotes the request.
        plain = super().reject(status, text)
        code, message = refusal_of(self.handshake_exc, plain.status_code)
        self.refusal = (plain.status_code, code)
        body = json.dumps({"error": code, "message": message}).encode()
        headers = Headers(
            (name, value)
            for name, value in plain.headers.raw_items()
            if name.lower() not in {"content-type", "content-length"}
        )
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(body))
        if code == "unsupported_websocket_version":
            headers["Sec-WebSocket-Version"] = WEBSOCKET_VERSION
        return Response(plain.status_code, plain.reason_phrase, headers, body)


class ClientFaultsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, answering client faults as described above."""

    conn: JsonRefusals

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn builds websockets' protocol itself; this is the same one, with its settings,
        # as the subclass that refuses in JSON.
        built = self.conn
        self.conn = JsonRefusals(
            extensions=built.available_extensions,
            max_size=(built.max_message_size, built.max_fragment_size),
            logger=WEBSOCKETS_LOGGER,
        )

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code != 101:
            self._log_refusal()

    async def send(self, message: ASGISendEvent) -> None:
        if (
            message["type"] == "websocket.http.response.start"
            and not self.handshake_complete
            and self.initial_response is None
        ):
            # What uvicorn does with the start of the app's refusal, less its info line: the
            # app logged the refusal already (ws_rejected), with its reason.
            headers = [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in message.get("headers", [])
            ]
            self.initial_response = (message["status"], headers, b"")
            return
        await super().send(message)
        if (
            message["type"] == "websocket.http.response.body"
            and self.close_sent
            and not self.handshake_complete
        ):
            # The refusal answered the handshake. Left incomplete, uvicorn logs "ASGI callable
            # returned without completing handshake" at error when the app returns, as though
            # the app had failed to answer.
            self.handshake_complete = True

    def send_receive_event_to_app(self) -> None:
        # uvicorn's, except for text that is not UTF-8: the client's fault, closed with 1007
        # and a reason the disconnect log line carries, where uvicorn logs a traceback at error.
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            # Past our close frame: reads go on only until the peer's close arrives.
            return
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self.conn.send_close(CloseCode.INVALID_DATA, "invalid UTF-8")
                self.handle_parser_exception()
                return
            self.queue.put_nowait({"type": "websocket.receive", "text": text})
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def answer_unparsed_request(self) -> None:
        """Answer a request head websockets refused while parsing it.

        uvicorn hands the whole head over in one call, then writes only in answer to the
        request websockets parses from it. When websockets refuses the head instead (more than
        128 header lines, or a line it does not take) it queues its refusal and no request:
        without this the client waits, its socket open, for an answer that never comes.
        """
        if self.handshake_initiated or self.conn.handshake_exc is None:
            return
        answer = b"".join(self.conn.data_to_send())
        if not answer:
            # A head websockets cannot read as HTTP at all: it closes without a word.
            answer = self.conn.reject(400, "").serialize()
        self.handshake_initiated = self.handshake_complete = self.close_sent = True
        self.transport.write(answer)
        self.transport.close()
        self._log_refusal()

    def _log_refusal(self) -> None:
        refusal = self.conn.refusal
        # A 5xx is the service's own fault, which websockets or uvicorn logged at error.
        if refusal is None or refusal[0] >= 500:
            return
        status, code = refusal
        logger.info(
            "upgrade refused",
            extra={
                "event": "ws_rejected",
                "code": code,
                "status": status,
                # The TCP peer: this is before admission, which reads X-Forwarded-For.
                "peer": self.client[0] if self.client else "unknown",
            },
        )
