"""Client faults at the protocol level: refused handshakes in the JSON error shape."""

from __future__ import annotations

import asyncio
import json

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

    config = Config(app, ws_max_size=4321, ws_per_message_deflate=compression)
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
