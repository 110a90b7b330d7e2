"""Instances of different releases on one Redis: a field added by a newer release is ignored, a
newer version is counted and skipped, and neither costs anyone a connection."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import close_code, member, receive_type, send
from tests.support.cluster import cluster
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def servers(redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    with cluster(redis_server, 2) as running:
        yield running


async def skipped(server: ServerProcess, reason: str) -> float:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        text = (await http.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "websocket_instance_events_skipped_total" and sample.labels == {
                "reason": reason
            }:
                return float(sample.value)
    return 0.0


def newer_release_publishes(
    redis_server: RedisServer, server: ServerProcess, project: str, version: int, line: int
) -> None:
    """What an instance of a newer release sends: an extra header field, and a version."""
    header = {
        "v": version,
        "origin": "instance-from-the-future",
        "kind": "event",
        "type": "cursor_update",
        "author": {"user_id": "zoe", "username": "Zoe", "client_id": "z1"},
        "ts": time.time(),
        "exclude": None,
        "seq": None,
        "priority": "high",
    }
    channel = f"{server.env['REDIS_CHANNEL_PREFIX']}room:{project}"
    body = json.dumps({"line": line, "column": 0}).encode()
    with redis_server.client() as client:
        assert client.publish(channel, json.dumps(header).encode() + b"\n" + body) == 2


async def test_a_newer_field_is_read_and_a_newer_version_skipped_on_both_instances(
    redis_server: RedisServer, servers: list[ServerProcess]
) -> None:
    one, two = servers
    async with (
        member(one.ws_url("mixed", one.token("a"))) as (a, _),
        member(two.ws_url("mixed", two.token("b"))) as (b, _),
    ):
        await receive_type(a, "user_joined")

        newer_release_publishes(redis_server, one, "mixed", version=2, line=2)
        newer_release_publishes(redis_server, one, "mixed", version=1, line=1)

        for ws in (a, b):
            # The version 2 event never arrives: the first cursor is the version 1 one.
            cursor = await receive_type(ws, "cursor_update")
            assert cursor["payload"] == {"line": 1, "column": 0}
            assert (cursor["user_id"], cursor["client_id"]) == ("zoe", "z1")
        assert await skipped(one, "unknown_version") == 1
        assert await skipped(two, "unknown_version") == 1

        # Both instances still relay between themselves.
        await send(b, "cursor_update", {"line": 3, "column": 4})
        cursor = await receive_type(a, "cursor_update")
        assert (cursor["payload"], cursor["user_id"]) == ({"line": 3, "column": 4}, "b")


@pytest.fixture(scope="module")
def rolling(redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    """Mid-rollout from a release before version 1: the new instance still writes version 0."""
    with cluster(redis_server, 2, [{"WIRE_VERSION": "0"}]) as running:
        yield running


async def test_version_0_writers_and_version_1_writers_relay_and_revoke_both_ways(
    rolling: list[ServerProcess],
) -> None:
    old, new = rolling
    service = new.token("compile-service", extra={"roles": ["service"]})
    async with (
        member(old.ws_url("roll", old.token("a"))) as (a, _),
        member(new.ws_url("roll", new.token("b"))) as (b, _),
    ):
        await receive_type(a, "user_joined")
        await send(a, "cursor_update", {"line": 1, "column": 1})
        assert (await receive_type(b, "cursor_update"))["user_id"] == "a"
        await send(b, "cursor_update", {"line": 2, "column": 2})
        assert (await receive_type(a, "cursor_update"))["user_id"] == "b"

        async with httpx.AsyncClient(base_url=new.http_url) as http:
            response = await http.post(
                "/internal/projects/roll/disconnect",
                json={"user_id": "a"},
                headers={"Authorization": f"Bearer {service}"},
            )
        assert response.json() == {"closed_locally": 0}
        assert (await receive_type(a, "error"))["payload"]["code"] == "access_revoked"
        assert await close_code(a) == 4003
    for server in rolling:
        assert await skipped(server, "malformed") == 0
