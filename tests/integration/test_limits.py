"""Limits enforced by the server: message size, per-IP cap, Origin, heartbeat, write deadline."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from tests.support.clients import RawClient, member, open_ws, receive, receive_type, send
from tests.support.server import ServerProcess, running_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

MAX_SIZE = 524_288


def document_update_of_size(size: int) -> str:
    """A valid document_update whose JSON text is exactly `size` bytes."""
    empty = json.dumps({"type": "document_update", "payload": {"pad": ""}})
    text = json.dumps({"type": "document_update", "payload": {"pad": "x" * (size - len(empty))}})
    assert len(text.encode()) == size
    return text


async def test_message_at_the_size_limit_is_relayed(server: ServerProcess) -> None:
    async with (
        member(server.ws_url("size", server.token("ann"))) as (ann, _),
        member(server.ws_url("size", server.token("bob"))) as (bob, _),
    ):
        await receive_type(ann, "user_joined")
        await ann.send(document_update_of_size(MAX_SIZE))
        relayed = await receive_type(bob, "document_update")
        assert len(relayed["payload"]["pad"]) > MAX_SIZE - 100


async def test_message_over_the_size_limit_closes_with_1009(server: ServerProcess) -> None:
    async with (
        member(server.ws_url("oversize", server.token("ann"))) as (ann, _),
        member(server.ws_url("oversize", server.token("bob"))) as (bob, _),
    ):
        await receive_type(ann, "user_joined")
        await ann.send(document_update_of_size(MAX_SIZE + 1))
        with pytest.raises(ConnectionClosedError) as closed:
            await receive(ann)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
        assert (await receive_type(bob, "user_left"))["user_id"] == "ann"


async def test_per_ip_connection_cap() -> None:
    with running_server({"MAX_CONNECTIONS_PER_IP": "3"}) as server:
        async with (
            member(server.ws_url("cap", server.token("watcher"))) as (watcher, _),
            member(server.ws_url("cap", server.token("ann"))),
        ):
            await receive_type(watcher, "user_joined")
            async with member(server.ws_url("cap", server.token("bob"))):
                await receive_type(watcher, "user_joined")
                with pytest.raises(InvalidStatus) as refused:
                    async with open_ws(server.ws_url("cap", server.token("cat"))):
                        pass
                response = refused.value.response
                assert response.status_code == 429
                assert json.loads(response.body or b"")["error"] == "too_many_connections"
            # Once bob is gone (the watcher is told), his slot is free again.
            assert (await receive_type(watcher, "user_left"))["user_id"] == "bob"
            async with member(server.ws_url("cap", server.token("cat"))) as (_, state):
                assert len(state["payload"]["users"]) == 3


async def test_origin_allow_list() -> None:
    allowed = "https://app.example.com,https://X.Example/"
    with running_server({"ALLOWED_ORIGINS": allowed}) as server:
        url = server.ws_url("origin", server.token("ann"))
        for origin in ("https://evil.example.com", "http://app.example.com", "null"):
            with pytest.raises(InvalidStatus) as refused:
                async with open_ws(url, origin=origin):
                    pass
            assert refused.value.response.status_code == 403
            body = json.loads(refused.value.response.body or b"")
            assert body["error"] == "origin_not_allowed"
        accepted: tuple[str | None, ...] = ("https://app.example.com", "https://x.example", None)
        for allowed_origin in accepted:
            async with member(url, origin=allowed_origin) as (_, state):
                assert state["type"] == "presence_state"
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            ok = await http.get("/health", headers={"Origin": "https://app.example.com"})
            assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
            evil = await http.get("/health", headers={"Origin": "https://evil.example.com"})
            assert "access-control-allow-origin" not in evil.headers


async def test_production_default_is_same_origin_only() -> None:
    with running_server({"ENVIRONMENT": "production", "HOST": "127.0.0.1"}) as server:
        url = server.ws_url("origin", server.token("ann"))
        with pytest.raises(InvalidStatus) as refused:
            async with open_ws(url, origin="https://elsewhere.example.com"):
                pass
        assert refused.value.response.status_code == 403
        same = f"http://127.0.0.1:{server.port}"
        async with member(url, origin=same) as (_, state):
            assert state["type"] == "presence_state"


async def test_client_that_stops_answering_pings_is_closed_and_leaves() -> None:
    env = {"WS_PING_INTERVAL": "100ms", "WS_PONG_WAIT": "300ms"}
    with running_server(env) as server:
        async with member(server.ws_url("heartbeat", server.token("ann"))) as (ann, _):
            token = server.token("ghost")
            ghost = await anyio.to_thread.run_sync(
                lambda: RawClient(server.port, f"/ws/heartbeat?token={token}")
            )
            assert (await receive_type(ann, "user_joined"))["user_id"] == "ghost"
            # The ghost reads nothing and answers nothing; ann's library answers every ping.
            assert (await receive_type(ann, "user_left"))["user_id"] == "ghost"
            frames = []
            try:
                while True:
                    frames.append(await anyio.to_thread.run_sync(ghost.read_frame))
            except (ConnectionError, OSError):
                pass
            opcodes = [opcode for opcode, _ in frames]
            assert 0x9 in opcodes, "the server never pinged"
            assert opcodes[-1] == 0x8
            assert frames[-1][1][:2] == (1011).to_bytes(2, "big")
            ghost.close()
            await send(ann, "ping")
            await receive_type(ann, "pong")


async def test_peer_that_stops_reading_is_cut_off_at_the_write_deadline() -> None:
    env = {
        "WS_WRITE_WAIT": "300ms",
        # Backlog limits high enough that the deadline, not the backlog, ends the connection.
        "WS_SEND_QUEUE_LIMIT": "100000",
        "WS_SEND_QUEUE_BYTES": str(1024 * 1024 * 1024),
    }
    with running_server(env) as server:
        token = server.token("stalled")
        stalled = await anyio.to_thread.run_sync(
            lambda: RawClient(server.port, f"/ws/stall?token={token}")
        )
        async with member(server.ws_url("stall", server.token("ann"))) as (ann, state):
            assert [u["user_id"] for u in state["payload"]["users"]] == ["stalled", "ann"]
            big = document_update_of_size(64 * 1024)
            # Each round trip proves the server handled the update before the next is sent, so
            # the flood lasts until the stalled peer is cut off rather than racing past it.
            for _ in range(20_000):
                await ann.send(big)
                await send(ann, "ping")
                reply = await receive(ann)
                if reply["type"] == "user_left":
                    break
                assert reply["type"] == "pong"
            else:
                pytest.fail("the stalled peer was never cut off")
            assert reply["user_id"] == "stalled"
            await send(ann, "ping")
            await receive_type(ann, "pong")
        stalled.close()

        def disconnects() -> list[dict[str, object]]:
            events = [json.loads(line) for line in server.logs().splitlines()]
            return [e for e in events if e.get("event") == "ws_disconnected"]

        async def logged() -> bool:
            return any(e["user_id"] == "stalled" for e in disconnects())

        # The log line follows the user_left broadcast, so wait for it to be written.
        await eventually(logged)
        [gone] = [e for e in disconnects() if e["user_id"] == "stalled"]
        assert (gone["close_code"], gone["close_reason"]) == (1013, "write timeout")
