"""Client faults at the protocol level: refused handshakes in the JSON error shape, and logged
as the client's, while the app's own failures still log at error."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.exceptions import (
    InvalidHeader,
    InvalidHeaderFormat,
    InvalidHeaderValue,
    InvalidMethod,
    InvalidUpgrade,
    TooManyHeaders,
)
from websockets.http11 import Request

from app.socket.client_faults import ClientFaultsProtocol, JsonRefusals, refusal_of


def upgrade(**changes: str | None) -> Request:
    headers = {
        "Host": "example.test",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    return Request("/ws/demo", Headers(headers))


@pytest.mark.parametrize(
    ("fault", "code", "message"),
    [
        (
            InvalidHeaderValue("Sec-WebSocket-Version", "8"),
            "unsupported_websocket_version",
            "expected Sec-WebSocket-Version 13, got 8",
        ),
        (
            InvalidHeaderValue("Sec-WebSocket-Version", "7, 8"),
            "unsupported_websocket_version",
            "expected Sec-WebSocket-Version 13, got 7, 8",
        ),
        (
            InvalidHeader("Sec-WebSocket-Version"),
            "unsupported_websocket_version",
            "expected Sec-WebSocket-Version 13, got none",
        ),
        (
            InvalidHeader("Sec-WebSocket-Version", "multiple values"),
            "unsupported_websocket_version",
            "expected Sec-WebSocket-Version 13, got several headers",
        ),
        (
            InvalidHeaderValue("Sec-WebSocket-Version", "<script>" * 10),
            "unsupported_websocket_version",
            "expected Sec-WebSocket-Version 13, got another value",
        ),
        (
            InvalidHeader("Sec-WebSocket-Key"),
            "invalid_handshake",
            "missing Sec-WebSocket-Key header",
        ),
        (
            InvalidHeaderValue("Sec-WebSocket-Key", "SECRET"),
            "invalid_handshake",
            "invalid Sec-WebSocket-Key header",
        ),
        (
            InvalidHeaderFormat("Sec-WebSocket-Protocol", "expected token", "SECRET", 0),
            "invalid_handshake",
            "invalid Sec-WebSocket-Protocol header",
        ),
        (
            InvalidUpgrade("Upgrade", "h2c, websocket"),
            "upgrade_required",
            "expected Upgrade: websocket and Connection: Upgrade",
        ),
        (InvalidMethod("POST"), "method_not_allowed", "a WebSocket upgrade must be a GET"),
        (
            TooManyHeaders("too many"),
            "headers_too_large",
            "expected at most 128 header lines of at most 8192 bytes",
        ),
    ],
)
def test_each_handshake_fault_has_a_code_and_a_message_that_echoes_nothing(
    fault: Exception, code: str, message: str
) -> None:
    assert refusal_of(fault, 400) == (code, message)


@pytest.mark.parametrize(("status", "code"), [(500, "internal_error"), (403, "forbidden")])
def test_refusals_without_a_handshake_fault_are_named_by_status(status: int, code: str) -> None:
    # uvicorn's own: a 500 when the app failed before answering, a 403 for a close before accept.
    response = JsonRefusals().reject(status, "plain text")

    assert response.status_code == status
    assert json.loads(response.body)["error"] == code


def test_version_refusal_is_json_and_names_the_supported_version() -> None:
    response = JsonRefusals().accept(upgrade(Sec_WebSocket_Version="8"))

    assert response.status_code == 400
    assert response.headers["Sec-WebSocket-Version"] == "13"
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Content-Length"] == str(len(response.body))
    assert json.loads(response.body) == {
        "error": "unsupported_websocket_version",
        "message": "expected Sec-WebSocket-Version 13, got 8",
    }


def test_other_refusals_keep_websockets_headers_and_do_not_name_a_version() -> None:
    response = JsonRefusals().accept(upgrade(Upgrade="websocket, h2c"))

    assert response.status_code == 426
    assert response.headers["Upgrade"] == "websocket"
    assert "Sec-WebSocket-Version" not in response.headers
    assert json.loads(response.body)["error"] == "upgrade_required"


def test_a_valid_upgrade_is_accepted_unchanged() -> None:
    assert JsonRefusals().accept(upgrade()).status_code == 101


@pytest.mark.parametrize("compression", [False, True])
def test_the_protocol_keeps_uvicorns_websocket_settings(compression: bool) -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("not called")

    config = Config(app, ws_max_size=4321, ws_per_message_deflate=compression, log_config=None)
    config.load()
    loop = asyncio.new_event_loop()
    try:
        ours = ClientFaultsProtocol(config, ServerState(), {}, _loop=loop)
        uvicorns = WebSocketsSansIOProtocol(config, ServerState(), {}, _loop=loop)
    finally:
        loop.close()

    assert isinstance(ours.conn, JsonRefusals)
    # Extension factories have no equality of their own: compare their settings.
    assert [vars(factory) for factory in ours.conn.available_extensions or []] == [
        vars(factory) for factory in uvicorns.conn.available_extensions or []
    ]
    assert bool(ours.conn.available_extensions) == compression
    assert ours.conn.max_message_size == uvicorns.conn.max_message_size == 4321
    assert ours.conn.max_fragment_size == uvicorns.conn.max_fragment_size


UPGRADE = (
    b"GET /ws/demo HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        addresses = {"peername": ("192.0.2.7", 50000), "sockname": ("127.0.0.1", 8082)}
        return addresses.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def uvicorn_log() -> Iterator[list[logging.LogRecord]]:
    # A handler of our own on uvicorn's logger: whatever configured logging before, and
    # whether or not it propagates, every record it takes is seen.
    log = logging.getLogger("uvicorn.error")
    handler, level = Records(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


async def serve_one_upgrade(app: Any) -> bytes:
    """Run one upgrade request through the protocol with `app`; what it wrote back."""
    config = Config(app, proxy_headers=False, log_config=None)
    config.load()
    state = ServerState()
    protocol = ClientFaultsProtocol(config, state, {}, _loop=asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(UPGRADE)
    await asyncio.gather(*state.tasks)
    assert transport.closing
    return bytes(transport.written)


@pytest.mark.anyio
async def test_the_apps_refusal_is_sent_and_leaves_no_error_nor_a_second_line(
    uvicorn_log: list[logging.LogRecord],
) -> None:
    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        body = b'{"error": "forbidden", "message": "no"}'
        headers = [(b"content-type", b"application/json")]
        await send({"type": "websocket.http.response.start", "status": 403, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})

    written = await serve_one_upgrade(refuse)

    assert written.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert written.endswith(b'{"error": "forbidden", "message": "no"}')
    # The app logs its refusals itself (ws_rejected): uvicorn adds nothing, least of all an error.
    assert [record.getMessage() for record in uvicorn_log] == []


@pytest.mark.anyio
async def test_an_app_that_never_answers_the_handshake_still_logs_an_error(
    uvicorn_log: list[logging.LogRecord],
) -> None:
    async def forget(scope: Any, receive: Any, send: Any) -> None:
        return None

    written = await serve_one_upgrade(forget)

    assert written.startswith(b"HTTP/1.1 500 ")
    errors = [record for record in uvicorn_log if record.levelno >= logging.ERROR]
    assert [record.getMessage() for record in errors] == [
        "ASGI callable returned without completing handshake."
    ]
