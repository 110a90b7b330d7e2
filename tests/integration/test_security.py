"""Security in depth against a real server: token lifetime, abuse limits, proxies, hygiene."""

from __future__ import annotations

import json
import socket
import zlib
from typing import Any

import anyio
import pytest
from websockets.exceptions import InvalidStatus

from tests.support.clients import (
    HeaderList,
    RawClient,
    close_code,
    exchange,
    member,
    open_ws,
    receive,
    receive_type,
    send,
    upgrade_headers,
)
from tests.support.server import ServerProcess, running_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


async def test_token_in_the_bearer_subprotocol_is_accepted_and_selected() -> None:
    with running_server() as server:
        async with member(
            server.ws_url("subprotocol"), subprotocols=["bearer", server.token("sub")]
        ) as (ws, state):
            assert state["user_id"] == "sub"
            assert ws.subprotocol == "bearer"
        logs = server.output()
        assert server.token("sub").split(".")[2] not in logs


async def test_connection_expires_with_its_token_after_a_warning() -> None:
    env = {"TOKEN_EXPIRY_WARNING": "1s", "JWT_LEEWAY": "0s"}
    with running_server(env) as server:
        token = server.token("brief", ttl=2)
        async with member(server.ws_url("expiry", token)) as (ws, _):
            warning = await receive_type(ws, "error")
            assert warning["payload"]["code"] == "token_expiring"
            assert warning["payload"]["expires_at"].endswith("Z")
            expired = await receive_type(ws, "error")
            assert expired["payload"]["code"] == "token_expired"
            assert await close_code(ws) == 4001


async def test_auth_refresh_extends_the_connection() -> None:
    env = {"TOKEN_EXPIRY_WARNING": "1s", "JWT_LEEWAY": "0s"}
    with running_server(env) as server:
        short = server.token("ann", ttl=2)
        # `clock` holds the same short token and never refreshes: its expiry marks the moment
        # the refreshed connection would have been closed.
        async with (
            member(server.ws_url("refresh", short)) as (ws, _),
            member(server.ws_url("refresh", short)) as (clock, _),
        ):
            assert (await receive_type(ws, "error"))["payload"]["code"] == "token_expiring"
            await send(ws, "auth_refresh", {"token": server.token("ann", ttl=3600)})
            refreshed = await receive_type(ws, "auth_refreshed")
            assert refreshed["payload"]["expires_at"].endswith("Z")
            assert (await receive_type(clock, "error"))["payload"]["code"] == "token_expiring"
            assert (await receive_type(clock, "error"))["payload"]["code"] == "token_expired"
            assert await close_code(clock) == 4001
            await send(ws, "ping")
            await receive_type(ws, "pong")


@pytest.mark.parametrize(
    ("user", "claims"),
    [("mallory", {}), ("ann", {"projects": ["elsewhere"]})],
    ids=["another-user", "another-project"],
)
async def test_refresh_with_a_token_for_someone_else_closes_with_4003(
    user: str, claims: dict[str, object]
) -> None:
    with running_server() as server:
        async with member(server.ws_url("refuse", server.token("ann"))) as (ws, _):
            await send(ws, "auth_refresh", {"token": server.token(user, extra=claims)})
            refused = await receive_type(ws, "error")
            assert refused["payload"]["code"] == "forbidden"
            assert await close_code(ws) == 4003


async def test_invalid_refresh_token_is_an_error_and_the_connection_stays() -> None:
    with running_server() as server:
        async with member(server.ws_url("bad-refresh", server.token("ann"))) as (ws, _):
            await send(ws, "auth_refresh", {"token": "forged.token.value"})
            error = await receive_type(ws, "error")
            assert error["payload"]["code"] == "invalid_token"
            assert "forged" not in json.dumps(error)
            await send(ws, "ping")
            await receive_type(ws, "pong")


async def test_rate_limit_drops_excess_messages_for_the_sender_only() -> None:
    env = {"RATE_LIMIT_PER_SECOND": "1", "RATE_LIMIT_BURST": "5", "ABUSE_MAX_STRIKES": "1000"}
    with running_server(env) as server:
        async with (
            member(server.ws_url("rate", server.token("fast"))) as (fast, _),
            member(server.ws_url("rate", server.token("calm"))) as (calm, _),
        ):
            await receive_type(fast, "user_joined")
            for line in range(8):
                await send(fast, "cursor_update", {"line": line, "column": 0})
            errors = [await receive(fast) for _ in range(3)]
            assert [e["payload"]["code"] for e in errors] == ["rate_limited"] * 3
            relayed = [(await receive(calm))["payload"]["line"] for _ in range(5)]
            assert relayed == [0, 1, 2, 3, 4]
            # The calm user is not limited by the fast one's bucket.
            await send(calm, "cursor_update", {"line": 42, "column": 0})
            assert (await receive(fast))["payload"]["line"] == 42


async def test_flood_of_invalid_messages_closes_with_1008() -> None:
    env = {"ABUSE_MAX_STRIKES": "5", "ABUSE_WINDOW": "1m"}
    with running_server(env) as server:
        async with (
            member(server.ws_url("flood", server.token("bad"))) as (bad, _),
            member(server.ws_url("flood", server.token("good"))) as (good, _),
        ):
            await receive_type(bad, "user_joined")
            for _ in range(5):
                await bad.send("{not json")
            assert await close_code(bad) == 1008
            assert (await receive_type(good, "user_left"))["user_id"] == "bad"


async def test_per_user_cap() -> None:
    with running_server({"MAX_CONNECTIONS_PER_USER": "2"}) as server:
        url = server.ws_url("per-user", server.token("ann"))
        async with member(url), member(url):
            with pytest.raises(InvalidStatus) as refused:
                async with open_ws(url):
                    pass
            assert refused.value.response.status_code == 429
            async with member(server.ws_url("per-user", server.token("bob"))) as (_, state):
                assert state["user_id"] == "bob"


async def test_forwarded_for_counts_only_from_trusted_proxies() -> None:
    for trusted, expect_separate in (("127.0.0.1", True), ("10.9.9.9", False)):
        env = {"MAX_CONNECTIONS_PER_IP": "1", "TRUSTED_PROXIES": trusted}
        with running_server(env) as server:
            url = server.ws_url("xff", server.token("ann"))
            first = {"X-Forwarded-For": "198.51.100.1"}
            second = {"X-Forwarded-For": "198.51.100.2"}
            async with member(url, additional_headers=first):
                if expect_separate:
                    async with member(url, additional_headers=second) as (_, state):
                        assert state["type"] == "presence_state"
                else:
                    with pytest.raises(InvalidStatus) as refused:
                        async with open_ws(url, additional_headers=second):
                            pass
                    assert refused.value.response.status_code == 429


async def test_slow_upgrade_request_is_dropped() -> None:
    with running_server({"HANDSHAKE_TIMEOUT": "500ms"}) as server:

        def linger() -> bytes:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(b"GET /ws/slow HTTP/1.1\r\nHost: x\r\n")  # never finishes
                return sock.recv(4096)

        answer = await anyio.to_thread.run_sync(linger)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


async def test_oversized_request_head_is_refused() -> None:
    with running_server() as server:
        headers = {"X-Padding": "p" * 20_000}
        with pytest.raises(InvalidStatus) as refused:
            async with open_ws(
                server.ws_url("big", server.token("ann")), additional_headers=headers
            ):
                pass
        assert refused.value.response.status_code == 431


async def test_oversized_token_is_refused() -> None:
    with running_server() as server:
        token = server.token("ann", extra={"pad": "x" * 9000})
        with pytest.raises(InvalidStatus) as refused:
            async with open_ws(server.ws_url("big-token"), subprotocols=["bearer", token]):
                pass
        # The line carrying it is over 8 KB: refused before the upgrade is parsed.
        assert refused.value.response.status_code == 431
        assert json.loads(refused.value.response.body or b"")["error"] == "headers_too_large"


async def test_invalid_utf8_closes_with_1007() -> None:
    with running_server() as server:
        async with member(server.ws_url("utf8", server.token("watch"))) as (watcher, _):
            token = server.token("raw")
            raw = await anyio.to_thread.run_sync(
                lambda: RawClient(server.port, f"/ws/utf8?token={token}")
            )
            await receive_type(watcher, "user_joined")
            raw.send_frame(0x1, b"\xff\xfe not utf-8")
            code = await anyio.to_thread.run_sync(raw.read_until_close)
            raw.close()
            assert code == 1007
            assert (await receive_type(watcher, "user_left"))["user_id"] == "raw"

        def raw_disconnects() -> list[dict[str, Any]]:
            events = [json.loads(line) for line in server.logs().splitlines()]
            return [
                e for e in events if e.get("event") == "ws_disconnected" and e["user_id"] == "raw"
            ]

        async def raw_disconnect_logged() -> bool:
            return bool(raw_disconnects())

        # The client's fault, logged by its disconnect line: not at error, with no traceback.
        await eventually(raw_disconnect_logged)
        [left] = raw_disconnects()
        assert (left["close_code"], left["close_reason"]) == (1007, "invalid UTF-8")
        assert '"level": "error"' not in server.logs()
        assert "Traceback" not in server.output()


async def test_deflate_bomb_closes_with_1009() -> None:
    with running_server({"WS_COMPRESSION": "true", "MAX_MESSAGE_SIZE": "65536"}) as server:
        url = server.ws_url("bomb", server.token("ann"))
        async with open_ws(url, compression="deflate") as ws:
            await receive_type(ws, "presence_state")
            # 64 MB of one byte compresses to ~64 KB: the server must stop inflating at 64 KB.
            bomb = json.dumps({"type": "document_update", "payload": {"p": "a" * (64 << 20)}})
            assert len(zlib.compress(bomb.encode())) < 1 << 20
            await ws.send(bomb)
            assert await close_code(ws) == 1009
        with anyio.fail_after(5):
            async with member(url, compression="deflate") as (_, state):
                assert state["type"] == "presence_state"


# Handshakes that are not valid WebSocket upgrades are refused by the protocol layer, before the
# app: each is named by its mistake, with headers built from a valid upgrade.
HANDSHAKE_FAULTS: dict[str, tuple[str, dict[str, str | None], HeaderList, int, str]] = {
    "version 8": ("GET", {"Sec-WebSocket-Version": "8"}, [], 400, "unsupported_websocket_version"),
    "no version": (
        "GET",
        {"Sec-WebSocket-Version": None},
        [],
        400,
        "unsupported_websocket_version",
    ),
    "two versions": (
        "GET",
        {},
        [("Sec-WebSocket-Version", "8")],
        400,
        "unsupported_websocket_version",
    ),
    "no key": ("GET", {"Sec-WebSocket-Key": None}, [], 400, "invalid_handshake"),
    "short key": ("GET", {"Sec-WebSocket-Key": "c2hvcnQ="}, [], 400, "invalid_handshake"),
    "bad subprotocol header": (
        "GET",
        {"Sec-WebSocket-Protocol": "bearer, =x"},
        [],
        400,
        "invalid_handshake",
    ),
    # uvicorn reads the last Upgrade header; websockets refuses two protocols.
    "two upgrades": ("GET", {}, [("Upgrade", "h2c")], 426, "upgrade_required"),
    "POST": ("POST", {}, [], 405, "method_not_allowed"),
}


@pytest.mark.parametrize("fault", HANDSHAKE_FAULTS)
async def test_malformed_handshakes_are_refused_in_the_json_error_shape(
    server: ServerProcess, fault: str
) -> None:
    method, changes, extra, status, code = HANDSHAKE_FAULTS[fault]
    headers = [*extra, *upgrade_headers(server.port, changes)]
    path = f"/ws/handshake?token={server.token('ann')}"
    got, fields, body = await anyio.to_thread.run_sync(
        lambda: exchange(server.port, path, headers, method)
    )
    assert got == status
    assert fields["content-type"] == "application/json"
    refusal = json.loads(body)
    assert refusal.keys() == {"error", "message"}
    assert refusal["error"] == code
    assert refusal["message"]


async def test_unsupported_websocket_version_names_the_supported_one(
    server: ServerProcess,
) -> None:
    # RFC 6455 4.2.2: the refusal carries the versions the server understands.
    headers = upgrade_headers(server.port, {"Sec-WebSocket-Version": "8"})
    path = f"/ws/version?token={server.token('ann')}"
    status, fields, body = await anyio.to_thread.run_sync(
        lambda: exchange(server.port, path, headers)
    )
    assert status == 400
    assert fields["sec-websocket-version"] == "13"
    assert json.loads(body) == {
        "error": "unsupported_websocket_version",
        "message": "expected Sec-WebSocket-Version 13, got 8",
    }


# websockets refuses these while parsing the head, and uvicorn, which writes only in answer to
# a parsed request, never sent its refusal: the client waited with its socket open.
UNPARSED_HEADS: dict[str, tuple[HeaderList, int, str]] = {
    "129+ header lines": ([(f"X-Filler-{i}", "x") for i in range(130)], 431, "headers_too_large"),
    "a request body": ([("Transfer-Encoding", "chunked")], 400, "invalid_handshake"),
}


@pytest.mark.parametrize("fault", UNPARSED_HEADS)
async def test_upgrade_heads_websockets_cannot_parse_are_answered(
    server: ServerProcess, fault: str
) -> None:
    extra, status, code = UNPARSED_HEADS[fault]
    headers = upgrade_headers(server.port) + extra
    path = f"/ws/unparsed?token={server.token('ann')}"
    got, fields, body = await anyio.to_thread.run_sync(lambda: exchange(server.port, path, headers))
    assert got == status
    assert fields["content-type"] == "application/json"
    assert json.loads(body)["error"] == code


async def test_a_request_that_is_not_http_is_refused_in_the_json_error_shape(
    server: ServerProcess,
) -> None:
    # A control character in a header value: the HTTP parser refuses it before anything else.
    headers = [*upgrade_headers(server.port), ("X-Control", "a\x01b")]
    status, fields, body = await anyio.to_thread.run_sync(
        lambda: exchange(server.port, "/ws/not-http", headers)
    )
    assert status == 400
    assert fields["content-type"] == "application/json"
    assert json.loads(body)["error"] == "invalid_request"
