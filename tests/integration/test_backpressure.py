"""Slow readers never slow their room: coalescing while backed up, 1013 past the limit."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.integration.test_limits import document_update_of_size
from tests.support.clients import RawClient, member, receive, receive_type, send
from tests.support.server import ServerProcess, running_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


async def handled(ws: ClientConnection) -> dict[str, Any]:
    """Ping and wait for the pong: the server has handled everything sent before.

    Returns the first non-pong message if one arrives first (the caller decides)."""
    await send(ws, "ping")
    return await receive(ws)


async def until_pong(ws: ClientConnection) -> None:
    """Ping and read until the pong: the server has handled everything this client sent."""
    await send(ws, "ping")
    while (await receive(ws))["type"] != "pong":
        pass


async def metric(server: ServerProcess, name: str, labels: dict[str, str]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(base_url=server.http_url) as http:
        text = (await http.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def read_messages(raw: RawClient, until: int) -> list[dict[str, Any]]:
    """Text messages from a raw client until `until` document_update ends have arrived."""
    messages: list[dict[str, Any]] = []
    ends = 0
    while ends < until:
        opcode, payload = raw.read_frame()
        if opcode != 0x1:
            continue
        message = json.loads(payload)
        messages.append(message)
        if message["type"] == "document_update" and "end" in message["payload"]:
            ends += 1
    return messages


async def test_stalled_reader_is_closed_with_1013_and_the_room_gets_everything() -> None:
    with running_server() as server:
        token = server.token("stalled")
        stalled = await anyio.to_thread.run_sync(
            lambda: RawClient(server.port, f"/ws/busy?token={token}")
        )
        async with (
            member(server.ws_url("busy", server.token("sender"))) as (sender, _),
            member(server.ws_url("busy", server.token("r1"))) as (r1, _),
            member(server.ws_url("busy", server.token("r2"))) as (r2, _),
        ):
            await receive_type(sender, "user_joined")
            await receive_type(sender, "user_joined")
            await receive_type(r1, "user_joined")
            received: dict[str, list[int]] = {"r1": [], "r2": []}

            async def collect(name: str, ws: ClientConnection) -> None:
                while True:
                    message = await receive(ws)
                    if message["type"] != "document_update":
                        continue
                    if message["payload"].get("end"):
                        return
                    received[name].append(message["payload"]["seq"])

            pad = "x" * 16_000
            sent = 0
            async with anyio.create_task_group() as readers:
                readers.start_soon(collect, "r1", r1)
                readers.start_soon(collect, "r2", r2)
                for seq in range(20_000):
                    await send(sender, "document_update", {"seq": seq, "pad": pad})
                    sent += 1
                    reply = await handled(sender)
                    if reply["type"] == "user_left":
                        assert reply["user_id"] == "stalled"
                        await receive_type(sender, "pong")
                        break
                    assert reply["type"] == "pong"
                else:
                    pytest.fail("the stalled reader was never closed")
                await send(sender, "document_update", {"end": True})
            # Nothing durable was lost for anyone who kept reading.
            assert received == {"r1": list(range(sent)), "r2": list(range(sent))}
        # What the stalled client finds once it reads: everything queued, then 1013.
        code = await anyio.to_thread.run_sync(stalled.read_until_close)
        stalled.close()
        assert code == 1013
        assert await metric(server, "websocket_slow_consumer_closes_total", {}) == 1

        def stalled_disconnects() -> list[dict[str, Any]]:
            events = [json.loads(line) for line in server.logs().splitlines()]
            return [
                e
                for e in events
                if e.get("event") == "ws_disconnected" and e["user_id"] == "stalled"
            ]

        async def logged() -> bool:
            return bool(stalled_disconnects())

        await eventually(logged)
        [gone] = stalled_disconnects()
        assert (gone["close_code"], gone["close_reason"]) == (1013, "slow consumer")


async def test_briefly_slow_reader_gets_every_durable_and_the_latest_cursor_of_each_sender() -> (
    None
):
    env = {
        # Room enough that this reader is only backed up, never closed.
        "WS_SEND_QUEUE_LIMIT": "100000",
        "WS_SEND_QUEUE_BYTES": str(256 * 1024 * 1024),
        "WS_WRITE_WAIT": "60s",
    }
    with running_server(env) as server:
        token = server.token("slow")
        slow = await anyio.to_thread.run_sync(
            lambda: RawClient(server.port, f"/ws/cursors?token={token}")
        )
        async with (
            member(server.ws_url("cursors", server.token("s1"))) as (s1, _),
            member(server.ws_url("cursors", server.token("s2"))) as (s2, _),
        ):
            await receive_type(s1, "user_joined")
            # 400 x 64 KB: far more than loopback socket buffers hold, so the slow reader's
            # buffer is full and later messages wait in its backlog.
            filler = document_update_of_size(64 * 1024)
            for _ in range(400):
                await s1.send(filler)
            assert (await handled(s1))["type"] == "pong"
            for sender in (s1, s2):
                for line in range(100):
                    await send(sender, "cursor_update", {"line": line, "column": 0})
            for name, sender in (("s1", s1), ("s2", s2)):
                await send(sender, "document_update", {"end": name})
                await until_pong(sender)
            coalesced = await metric(
                server, "websocket_backlog_coalesced_total", {"type": "cursor_update"}
            )
            assert coalesced >= 198, "the reader was never backed up; the test proves nothing"

            messages = await anyio.to_thread.run_sync(lambda: read_messages(slow, 2))
            slow.close()
        fillers = [m for m in messages if m["type"] == "document_update" and "pad" in m["payload"]]
        assert len(fillers) == 400
        # It never read while they were sent, so each sender's cursors waited as one: the last.
        for name in ("s1", "s2"):
            lines = [
                m["payload"]["line"]
                for m in messages
                if m["type"] == "cursor_update" and m["user_id"] == name
            ]
            assert lines == [99], f"expected only {name}'s latest cursor, got {lines}"
        # Per-sender order holds: s1's fillers, then its latest cursor, then its end marker.
        from_s1 = [
            "filler" if "pad" in m["payload"] else m["type"] if "line" in m["payload"] else "end"
            for m in messages
            if m["user_id"] == "s1" and m["type"] in {"document_update", "cursor_update"}
        ]
        assert from_s1 == ["filler"] * 400 + ["cursor_update", "end"]
