"""Several instances on one real Redis behave, for every client, like one instance."""

from __future__ import annotations

import contextlib
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.test_ws_contract import RELAYS
from tests.support.clients import (
    close_code,
    member,
    open_ws,
    pong_after_acks,
    receive,
    receive_type,
    send,
)
from tests.support.cluster import cluster as shared_cluster
from tests.support.cluster import redis_state
from tests.support.redis_server import RedisServer, running_redis
from tests.support.server import ServerProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def cluster(redis: RedisServer, size: int = 2, **env: str) -> Iterator[list[ServerProcess]]:
    """Instances whose presence expires after 1 s, so a killed one's users leave quickly."""
    with shared_cluster(redis, size, **{"PRESENCE_TTL": "1s", **env}) as servers:
        yield servers


async def ready(server: ServerProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        body: dict[str, Any] = (await http.get("/ready")).json()
        return body


async def metric(server: ServerProcess, name: str) -> float:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        text = (await http.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no metric {name}")


async def receive_data(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not a (repeated) resync presence_state."""
    while True:
        message = await receive(ws)
        if message["type"] != "presence_state" or not message["payload"].get("resync"):
            return message


@contextlib.asynccontextmanager
async def joined_across(
    one: ServerProcess, two: ServerProcess, project: str
) -> AsyncIterator[tuple[ClientConnection, ClientConnection, ClientConnection]]:
    """a and b on the first instance, c on the second, every join announcement read."""
    async with (
        member(one.ws_url(project, one.token("a"))) as (a, _),
        member(one.ws_url(project, one.token("b"))) as (b, _),
        member(two.ws_url(project, two.token("c"))) as (c, _),
    ):
        await receive_type(a, "user_joined")
        await receive_type(a, "user_joined")
        await receive_type(b, "user_joined")
        yield a, b, c


async def receive_after(ws: ClientConnection, message_type: str) -> dict[str, Any]:
    """The next message of `message_type`, past resyncs and a cursor that Redis may deliver
    late once it runs again."""
    while True:
        message = await receive(ws)
        if message["type"] == message_type:
            return message
        assert message["type"] in {"presence_state", "cursor_update"}, message


@pytest.fixture(scope="module")
def pair(redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    with cluster(redis_server) as servers:
        yield servers


@pytest.fixture(autouse=True)
async def connected(pair: list[ServerProcess]) -> None:
    await redis_state(*pair, connected=True)


@pytest.mark.parametrize(
    ("message_type", "payload", "changed"),
    RELAYS,
    ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(RELAYS)],
)
async def test_every_type_crosses_instances(
    pair: list[ServerProcess],
    message_type: str,
    payload: dict[str, Any] | None,
    changed: dict[str, Any],
) -> None:
    one, two = pair
    project = f"x-{message_type}-{uuid.uuid4().hex[:6]}"
    async with (
        member(one.ws_url(project, one.token("ann", username="Ann"))) as (ann, ann_state),
        member(two.ws_url(project, two.token("bob"))) as (bob, _),
    ):
        # Bob's join reached ann through Redis, so both instances are subscribed.
        assert (await receive_type(ann, "user_joined"))["user_id"] == "bob"
        await send(ann, message_type, payload)
        relayed = await receive(bob)
        assert relayed["type"] == message_type
        assert relayed["payload"] == {**(payload or {}), **changed}
        assert (relayed["user_id"], relayed["username"]) == ("ann", "Ann")
        assert relayed["client_id"] == ann_state["client_id"]
        await send(ann, "ping")
        await pong_after_acks(ann)


async def collect(ws: ClientConnection, senders: int) -> dict[str, list[int]]:
    """Sequence numbers per sender until every sender's `done` arrived."""
    seen: dict[str, list[int]] = {}
    done = 0
    while done < senders:
        message = await receive(ws)
        assert message["type"] == "document_update"
        if message["payload"].get("done"):
            done += 1
        else:
            seen.setdefault(message["user_id"], []).append(message["payload"]["seq"])
    return seen


async def test_no_duplicates_and_sender_order_across_instances(pair: list[ServerProcess]) -> None:
    one, two = pair
    project = f"seq-{uuid.uuid4().hex[:6]}"
    count = 1000
    async with (
        member(one.ws_url(project, one.token("s1"))) as (s1, _),
        member(two.ws_url(project, two.token("s2"))) as (s2, _),
        member(one.ws_url(project, one.token("r1"))) as (r1, _),
        member(two.ws_url(project, two.token("r2"))) as (r2, _),
    ):
        for ws, later in ((s1, 3), (s2, 2), (r1, 1)):
            for _ in range(later):
                await receive_type(ws, "user_joined")
        results: dict[str, dict[str, list[int]]] = {}

        async def sender(ws: ClientConnection) -> None:
            for seq in range(count):
                await send(ws, "document_update", {"seq": seq})
            await send(ws, "document_update", {"done": True})

        async def receiver(name: str, ws: ClientConnection, senders: int) -> None:
            results[name] = await collect(ws, senders)

        async with anyio.create_task_group() as group:
            group.start_soon(receiver, "r1", r1, 2)
            group.start_soon(receiver, "r2", r2, 2)
            group.start_soon(receiver, "s1", s1, 1)
            group.start_soon(receiver, "s2", s2, 1)
            group.start_soon(sender, s1)
            group.start_soon(sender, s2)
        expected = list(range(count))
        assert results["r1"] == {"s1": expected, "s2": expected}
        assert results["r2"] == {"s1": expected, "s2": expected}
        assert results["s1"] == {"s2": expected}
        assert results["s2"] == {"s1": expected}


async def test_cluster_presence_with_tabs_on_two_instances(pair: list[ServerProcess]) -> None:
    one, two = pair
    project = f"tabs-{uuid.uuid4().hex[:6]}"
    async with (
        member(one.ws_url(project, one.token("watcher"))) as (watcher, _),
        member(two.ws_url(project, two.token("other"))) as (other, _),
    ):
        assert (await receive_type(watcher, "user_joined"))["user_id"] == "other"
        async with member(one.ws_url(project, one.token("ann", username="Ann"))) as (tab1, _):
            assert (await receive_type(watcher, "user_joined"))["user_id"] == "ann"
            async with member(two.ws_url(project, two.token("ann", username="Ann"))) as (
                tab2,
                state,
            ):
                users = {u["user_id"]: u["connections"] for u in state["payload"]["users"]}
                assert users == {"watcher": 1, "other": 1, "ann": 2}
                # The second tab was no news to the watcher: its next message is a cursor.
                await send(tab2, "cursor_update", {"line": 1, "column": 1})
                assert (await receive(watcher))["type"] == "cursor_update"
                await tab1.close()
                # Closing one of two tabs is no news either.
                await send(other, "cursor_update", {"line": 2, "column": 2})
                assert (await receive(watcher))["type"] == "cursor_update"
                assert (await receive(tab2))["type"] == "cursor_update"
        left = await receive_type(watcher, "user_left")
        assert left["payload"] == {"user_id": "ann", "username": "Ann"}
        # Exactly once: the next message is other's cursor, not a second user_left.
        await send(other, "cursor_update", {"line": 3, "column": 3})
        assert (await receive(watcher))["type"] == "cursor_update"


async def test_stats_add_cluster_totals_and_instance_id(pair: list[ServerProcess]) -> None:
    one, two = pair
    project = f"stats-{uuid.uuid4().hex[:6]}"
    headers = {"Authorization": f"Bearer {one.token('ops')}"}
    async with (
        member(one.ws_url(project, one.token("a"))) as (a, _),
        member(two.ws_url(project, two.token("b"))),
        member(two.ws_url(project, two.token("c"))),
    ):
        await receive_type(a, "user_joined")
        await receive_type(a, "user_joined")
        async with httpx.AsyncClient(base_url=one.http_url, headers=headers) as http:

            async def totals_seen() -> bool:
                body = (await http.get("/stats")).json()
                cluster = body["cluster"]
                return bool(cluster) and cluster["total_clients"] >= 3

            await eventually(totals_seen)
            body = (await http.get("/stats")).json()
        assert body["instance_id"] == "instance-0"
        assert body["total_clients"] == 1
        assert body["cluster"]["instances"] == 2
        assert body["cluster"]["total_rooms"] >= 1


async def test_instance_killed_with_sigkill_leaves_no_ghosts(redis_server: RedisServer) -> None:
    with cluster(redis_server) as (doomed, survivor):
        await redis_state(doomed, survivor, connected=True)
        project = f"ghost-{uuid.uuid4().hex[:6]}"
        async with member(survivor.ws_url(project, survivor.token("watcher"))) as (watcher, _):
            ghost = open_ws(doomed.ws_url(project, doomed.token("ghost")))
            ghost_ws = await ghost.__aenter__()
            await receive_type(ghost_ws, "presence_state")
            assert (await receive_type(watcher, "user_joined"))["user_id"] == "ghost"
            doomed.signal(signal.SIGKILL)
            doomed.wait()
            # Nobody cleaned up: the survivor's sweep finds the expired member (TTL 1s).
            left = await receive_type(watcher, "user_left")
            assert left["user_id"] == "ghost"
            async with member(survivor.ws_url(project, survivor.token("late"))) as (_, state):
                assert {u["user_id"] for u in state["payload"]["users"]} == {"watcher", "late"}
            with contextlib.suppress(ConnectionClosed, OSError):
                await ghost.__aexit__(None, None, None)


async def test_redis_outage_keeps_local_rooms_and_recovers_without_reconnects() -> None:
    with running_redis() as redis, cluster(redis) as (one, two):
        await redis_state(one, two, connected=True)
        project = "outage"
        async with joined_across(one, two, project) as (a, b, c):
            redis.stop()
            await redis_state(one, two, connected=False)
            # Local relay keeps working during the outage, and so does joining.
            await send(a, "cursor_update", {"line": 1, "column": 1})
            assert (await receive(b))["payload"] == {"line": 1, "column": 1}
            async with member(one.ws_url(project, one.token("d"))) as (_, state):
                assert "d" in {u["user_id"] for u in state["payload"]["users"]}
                assert (await receive_type(a, "user_joined"))["user_id"] == "d"
                assert (await receive_type(b, "user_joined"))["user_id"] == "d"
            assert (await receive_type(a, "user_left"))["user_id"] == "d"
            assert (await receive_type(b, "user_left"))["user_id"] == "d"

            redis.start()
            await redis_state(one, two, connected=True)
            # Nobody reconnects; each is told the cluster's presence again once both instances
            # are back (earlier copies may be partial while the other instance restores).
            for ws in (a, b, c):
                while True:
                    state = await receive_type(ws, "presence_state")
                    assert state["payload"]["resync"] is True
                    if {u["user_id"] for u in state["payload"]["users"]} == {"a", "b", "c"}:
                        break
            # The same connections talk across instances again.
            await send(a, "document_update", {"after": "outage"})
            assert (await receive_data(c))["payload"] == {"after": "outage"}
            assert (await receive_data(b))["payload"] == {"after": "outage"}
            await send(c, "document_update", {"back": True})
            assert (await receive_data(a))["payload"] == {"back": True}
            assert (await receive_data(b))["payload"] == {"back": True}
            # Presence was re-registered: a newcomer sees everyone still connected.
            async with member(two.ws_url(project, two.token("e"))) as (_, state):
                assert {u["user_id"] for u in state["payload"]["users"]} == {"a", "b", "c", "e"}
        for server in (one, two):
            assert await metric(server, "websocket_redis_reconnects_total") >= 1
            events = [json.loads(line).get("event") for line in server.logs().splitlines()]
            assert events.count("redis_disconnected") == 1, "the outage was not logged once"
            assert events.count("redis_reconnected") == 1


async def test_frozen_redis_is_noticed_and_survived_without_reconnects() -> None:
    """Redis that stops answering without closing anything (SIGSTOP: a stuck host, a
    partition with no reset) must be detected by the timeouts alone."""
    with running_redis() as redis, cluster(redis) as (one, two):
        await redis_state(one, two, connected=True)
        project = "frozen"
        async with joined_across(one, two, project) as (a, b, c):
            redis.pause()
            try:
                # Local relay does not wait for a Redis that never answers.
                await send(a, "cursor_update", {"line": 7, "column": 7})
                assert (await receive(b))["payload"] == {"line": 7, "column": 7}
                await redis_state(one, two, connected=False)
            finally:
                redis.resume()
            await redis_state(one, two, connected=True)
            for ws in (a, b, c):
                while True:
                    state = await receive_type(ws, "presence_state")
                    if {u["user_id"] for u in state["payload"]["users"]} == {"a", "b", "c"}:
                        break
            await send(a, "document_update", {"after": "freeze"})
            assert (await receive_after(c, "document_update"))["payload"] == {"after": "freeze"}
            await send(c, "document_update", {"back": True})
            assert (await receive_after(a, "document_update"))["payload"] == {"back": True}


async def test_startup_with_redis_unreachable_serves_locally_then_joins() -> None:
    with running_redis() as redis:
        redis.stop()
        with cluster(redis, size=1) as (alone,):
            body = await ready(alone)
            assert body["status"] == "ready"
            assert body["broadcaster_connected"] is False
            async with (
                member(alone.ws_url("solo", alone.token("a"))) as (a, _),
                member(alone.ws_url("solo", alone.token("b"))) as (b, _),
            ):
                await receive_type(a, "user_joined")
                await send(b, "cursor_update", {"line": 4, "column": 2})
                assert (await receive(a))["payload"] == {"line": 4, "column": 2}
                redis.start()
                await redis_state(alone, connected=True)


@pytest.mark.parametrize(
    "kill",
    [RedisServer.kill_pubsub_clients, lambda redis: redis.kill_clients_named(":publisher")],
    ids=["pubsub", "publisher"],
)
async def test_killed_redis_connections_are_repaired(
    pair: list[ServerProcess], redis_server: RedisServer, kill: Callable[[RedisServer], int]
) -> None:
    one, two = pair
    project = f"killed-{uuid.uuid4().hex[:6]}"
    async with (
        member(one.ws_url(project, one.token("a"))) as (a, _),
        member(two.ws_url(project, two.token("c"))) as (c, _),
    ):
        await receive_type(a, "user_joined")
        before = [await metric(s, "websocket_redis_reconnects_total") for s in pair]
        assert kill(redis_server) == 2  # one per instance

        for server, count in zip(pair, before, strict=True):

            async def reconnected(server: ServerProcess = server, count: float = count) -> bool:
                return await metric(server, "websocket_redis_reconnects_total") > count

            await eventually(reconnected, within=20)
        await redis_state(one, two, connected=True)
        await send(a, "document_update", {"repaired": True})
        assert (await receive_data(c))["payload"] == {"repaired": True}
        await send(c, "document_update", {"both": "ways"})
        assert (await receive_data(a))["payload"] == {"both": "ways"}


async def test_sigterm_drains_with_1012_and_flips_readiness(redis_server: RedisServer) -> None:
    with cluster(redis_server, SHUTDOWN_DRAIN="2s") as (leaving, staying):
        await redis_state(leaving, staying, connected=True)
        project = f"drain-{uuid.uuid4().hex[:6]}"
        async with (
            member(staying.ws_url(project, staying.token("watcher"))) as (watcher, _),
            member(leaving.ws_url(project, leaving.token("a"))) as (a, _),
            member(leaving.ws_url(project, leaving.token("b"))) as (b, _),
        ):
            await receive_type(watcher, "user_joined")
            await receive_type(watcher, "user_joined")
            started = time.monotonic()
            leaving.signal(signal.SIGTERM)

            async def not_ready() -> bool:
                async with httpx.AsyncClient(base_url=leaving.http_url) as http:
                    return (await http.get("/ready")).status_code == 503

            await eventually(not_ready, within=5)
            with pytest.raises(InvalidStatus) as refused:
                async with open_ws(leaving.ws_url(project, leaving.token("late"))):
                    pass
            assert refused.value.response.status_code == 503
            assert json.loads(refused.value.response.body or b"")["error"] == "shutting_down"

            assert [await close_code(a), await close_code(b)] == [1012, 1012]
            gone = {(await receive_type(watcher, "user_left"))["user_id"] for _ in range(2)}
            assert gone == {"a", "b"}
            # uvicorn re-raises the SIGTERM it captured once its graceful shutdown is complete.
            assert leaving.wait(timeout=15) in {0, -signal.SIGTERM}
            # Generous bound against a hang, not a performance check: the window is 2 s.
            assert time.monotonic() - started < 10
        events = [json.loads(line) for line in leaving.logs().splitlines()]
        [drain] = [e for e in events if e.get("event") == "drain_started"]
        assert drain["connections"] == 2
        assert events[-2]["message"] == "Application shutdown complete."


async def test_service_event_and_revoke_reach_every_instance(pair: list[ServerProcess]) -> None:
    one, two = pair
    project = f"svc-{uuid.uuid4().hex[:6]}"
    service = one.token("compile-service", extra={"roles": ["service"]})
    headers = {"Authorization": f"Bearer {service}"}
    async with (
        member(one.ws_url(project, one.token("ann"))) as (ann, _),
        member(two.ws_url(project, two.token("bob"))) as (bob, _),
        member(two.ws_url(project, two.token("cat"))) as (cat, _),
    ):
        await receive_type(ann, "user_joined")
        await receive_type(ann, "user_joined")
        await receive_type(bob, "user_joined")
        async with httpx.AsyncClient(base_url=one.http_url, headers=headers) as http:
            event = {"type": "compilation_failed", "payload": {"error": "Undefined control"}}
            response = await http.post(f"/internal/projects/{project}/events", json=event)
            assert response.json() == {"local_recipients": 1}
            for ws in (ann, bob, cat):
                assert (await receive_type(ws, "compilation_failed"))["payload"] == event["payload"]
            # Revoked through instance one, bob's connection on instance two closes.
            revoke = await http.post(
                f"/internal/projects/{project}/disconnect", json={"user_id": "bob"}
            )
            assert revoke.json() == {"closed_locally": 0}
        assert (await receive_type(bob, "error"))["payload"]["code"] == "access_revoked"
        assert await close_code(bob) == 4003
        assert (await receive_type(ann, "user_left"))["user_id"] == "bob"
        assert (await receive_type(cat, "user_left"))["user_id"] == "bob"
