"""RoomRegistry: presence on join and leave, relay fan-out, room lifecycle, cross-instance relay."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from app.broadcaster import MemoryBroadcaster, MemoryBus
from app.errors import CloseCode
from app.fanout.connection import BacklogLimits, Connection
from app.metrics import Metrics
from app.protocols.json.codec import JsonCodec
from app.rooms.events import InstanceEvent
from app.rooms.registry import RoomRegistry
from tests.unit.fakes import FakeTransport

pytestmark = pytest.mark.anyio

LIMITS = BacklogLimits(messages=100, bytes=1_000_000)
JSON = JsonCodec()


class Client:
    """A connection with its fake transport, and the frames it received, decoded."""

    def __init__(
        self, metrics: Metrics, client_id: str, user_id: str, project_id: str = "p1"
    ) -> None:
        self.transport = FakeTransport()
        self.connection = Connection(
            client_id=client_id,
            user_id=user_id,
            username=user_id.title(),
            project_id=project_id,
            ip="10.0.0.1",
            transport=self.transport,
            codec=JSON,
            limits=LIMITS,
            observer=metrics,
        )

    @property
    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(data) for data in self.transport.sent]

    @property
    def types(self) -> list[str]:
        return [frame["type"] for frame in self.frames]

    def take(self) -> list[dict[str, Any]]:
        """The frames received since the last take."""
        frames = self.frames
        self.transport.sent.clear()
        return frames


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def registry(metrics: Metrics) -> AsyncIterator[RoomRegistry]:
    registry = RoomRegistry(MemoryBroadcaster(), metrics)
    await registry.start()
    yield registry
    await registry.stop(grace=0)


def sent(metrics: Metrics, message_type: str) -> float:
    value = metrics.registry.get_sample_value(
        "websocket_messages_sent_total", {"type": message_type}
    )
    return value or 0.0


async def joined(
    registry: RoomRegistry,
    metrics: Metrics,
    client_id: str,
    user_id: str,
    project_id: str = "p1",
) -> Client:
    client = Client(metrics, client_id, user_id, project_id)
    await registry.join(client.connection)
    return client


# Joining


async def test_start_makes_the_registry_accept(metrics: Metrics) -> None:
    registry = RoomRegistry(MemoryBroadcaster(), metrics)
    assert not registry.accepting

    await registry.start()
    assert registry.accepting

    await registry.stop(grace=0)
    assert not registry.accepting


async def test_join_sends_presence_state_listing_the_user(
    registry: RoomRegistry, metrics: Metrics
) -> None:
    alice = await joined(registry, metrics, "a1", "alice")

    [frame] = alice.frames
    assert frame["type"] == "presence_state"
    assert frame["payload"] == {
        "users": [{"user_id": "alice", "username": "Alice", "connections": 1}]
    }
    assert (frame["user_id"], frame["username"], frame["client_id"]) == ("alice", "Alice", "a1")


async def test_presence_state_counts_connections_per_user(
    registry: RoomRegistry, metrics: Metrics
) -> None:
    await joined(registry, metrics, "a1", "alice")
    await joined(registry, metrics, "b1", "bob")

    alice_again = await joined(registry, metrics, "a2", "alice")

    frame = alice_again.frames[0]
    assert frame["type"] == "presence_state"
    users = {user["user_id"]: user for user in frame["payload"]["users"]}
    assert users == {
        "alice": {"user_id": "alice", "username": "Alice", "connections": 2},
        "bob": {"user_id": "bob", "username": "Bob", "connections": 1},
    }


async def test_presence_state_comes_before_any_relay(
    registry: RoomRegistry, metrics: Metrics
) -> None:
    alice = await joined(registry, metrics, "a1", "alice")
    bob = await joined(registry, metrics, "b1", "bob")

    registry.relay(alice.connection, "cursor_update", {"line": 1, "column": 1})

    assert bob.types == ["presence_state", "cursor_update"]


async def test_user_joined_is_announced_for_a_users_first_connection_only(
    registry: RoomRegistry, metrics: Metrics
) -> None:
    alice = await joined(registry, metrics, "a1", "alice")
    alice.take()

    bob = await joined(registry, metrics, "b1", "bob")
    [announcement] = alice.take()
    assert announcement["type"] == "user_joined"
    assert announcement["payload"] == {"user_id": "bob", "username": "Bob"}
    assert (announcement["user_id"], announcement["client_id"]) == ("bob", "b1")
    assert bob.types == ["presence_state"]

    await joined(registry, metrics, "b2", "bob")
    assert alice.take() == []
    assert bob.types == ["presence_state"]


async def test_user_left_is_announced_when_the_users_last_connection_leaves(
    registry: RoomRegistry, metrics: Metrics
) -> None:
    alice = await joined(registry, metrics, "a1", "alice")
    bob_1 = await joined(registry, metrics, "b1", "bob")
    bob_2 = await joined(registry, metrics, "b2", "bob")
    alice.take()

    await registry.leave(bob_1.connection)
    assert alice.take() == []

    await registry.leave(bob_2.connection)
    [announcement] = alice.take()
    assert announcement["type"] == "user_left"
    assert announcement["payload"] == {"user_id": "bob", "username": "Bob"}


async def test_leaving_twice_announces_once(registry: RoomRegistry, metrics: Metrics) -> None:
    alice = await joined(registry, metrics, "a1", "alice")
    bob = await joined(registry, metrics, "b1", "bob")
    alice.take()

    await registry.leave(bob.connection)
    await registry.leave(bob.connection)

    assert [frame["type"] for frame in alice.take()] == ["user_left"]


async def test_leaving_an_unknown_room_does_nothing(
    registry: RoomRegistry, metrics: Metrics
) -> None:
    stranger = Client(metrics, "s1", "sam", project_id="nowhere")

    await registry.leave(stranger.connection)

    assert registry.snapshot() == []


# Relay


async def test_relay_reaches_everyone_but_the_sender(
    registry: RoomRegistry, metrics: Metrics
) -> None:
    alice_1 = await joined(registry, metrics, "a1", "alice")
    alice_2 = await joined(registry, metrics, "a2", "alice")
    bob = await joined(registry, metrics, "b1", "bob")
    for client in (alice_1, alice_2, bob):
        client.take()

    registry.relay(alice_1.connection, "document_update", {"ops": [1]})

    assert alice_1.take() == []
    for client in (alice_2, bob):
        [frame] = client.take()
        assert frame["type"] == "document_update"
        assert frame["payload"] == {"ops": [1]}
        assert (frame["user_id"], frame["username"], frame["client_id"]) == (
            "alice",
            "Alice",
            "a1",
        )


async def test_other_instances_get_a_relay_before_the_local_fan_out(metrics: Metrics) -> None:
    local_frames_at_publish: list[int] = []
    watched: list[Client] = []

    class Recording(MemoryBroadcaster):
        def publish(self, event: InstanceEvent) -> None:
            local_frames_at_publish.extend(len(c.transport.sent) for c in watched)
            super().publish(event)

    registry = RoomRegistry(Recording(), metrics)
    await registry.start()
    alice = await joined(registry, metrics, "a1", "alice")
    bob = await joined(registry, metrics, "b1", "bob")
    bob.take()
    watched.append(bob)

    registry.relay(alice.connection, "document_update", {"ops": [1]})

    assert local_frames_at_publish == [0]
    assert bob.types == ["document_update"]
    await registry.stop(grace=0)


async def test_relay_stays_in_its_project(registry: RoomRegistry, metrics: Metrics) -> None:
    alice = await joined(registry, metrics, "a1", "alice", project_id="p1")
    bob = await joined(registry, metrics, "b1", "bob", project_id="p2")
    bob.take()

    registry.relay(alice.connection, "cursor_update", {"line": 0, "column": 0})

    assert bob.take() == []


async def test_send_reaches_one_connection_only(registry: RoomRegistry, metrics: Metrics) -> None:
    alice = await joined(registry, metrics, "a1", "alice")
    bob = await joined(registry, metrics, "b1", "bob")
    alice.take()
    bob.take()

    registry.send(alice.connection, "pong", {})

    assert [frame["type"] for frame in alice.take()] == ["pong"]
    assert bob.take() == []


# Rooms


async def test_snapshot_lists_rooms_with_their_client_counts(
    registry: RoomRegistry, metrics: Metrics
) -> None:
    await joined(registry, metrics, "a1", "alice", project_id="p1")
    await joined(registry, metrics, "a2", "alice", project_id="p1")
    await joined(registry, metrics, "b1", "bob", project_id="p2")

    counts = {room.room_id: room.client_count for room in registry.snapshot()}
    assert counts == {"p1": 2, "p2": 1}
    assert registry.connection_count == 3
    assert metrics.registry.get_sample_value("websocket_total_rooms") == 2


async def test_rooms_are_removed_when_empty(registry: RoomRegistry, metrics: Metrics) -> None:
    alice = await joined(registry, metrics, "a1", "alice", project_id="p1")
    bob = await joined(registry, metrics, "b1", "bob", project_id="p2")

    await registry.leave(alice.connection)
    assert [room.room_id for room in registry.snapshot()] == ["p2"]

    await registry.leave(bob.connection)
    assert registry.snapshot() == []
    assert registry.connection_count == 0
    assert metrics.registry.get_sample_value("websocket_total_rooms") == 0


async def test_a_removed_room_can_be_joined_again(registry: RoomRegistry, metrics: Metrics) -> None:
    alice = await joined(registry, metrics, "a1", "alice")
    await registry.leave(alice.connection)

    bob = await joined(registry, metrics, "b1", "bob")

    assert bob.frames[0]["payload"] == {
        "users": [{"user_id": "bob", "username": "Bob", "connections": 1}]
    }
    assert [room.client_count for room in registry.snapshot()] == [1]


async def test_stop_closes_every_connection_with_1012(metrics: Metrics) -> None:
    registry = RoomRegistry(MemoryBroadcaster(), metrics)
    await registry.start()
    alice = await joined(registry, metrics, "a1", "alice", project_id="p1")
    bob = await joined(registry, metrics, "b1", "bob", project_id="p2")

    await registry.stop(grace=0)

    assert not registry.accepting
    assert alice.transport.closes == [(CloseCode.SERVICE_RESTART, "service restart")]
    assert bob.transport.closes == [(CloseCode.SERVICE_RESTART, "service restart")]


async def test_drain_stops_accepting_and_closes_every_connection(
    registry: RoomRegistry, metrics: Metrics
) -> None:
    clients = [await joined(registry, metrics, f"c{i}", f"user{i}") for i in range(3)]

    await registry.drain(window=0)

    assert not registry.accepting
    for client in clients:
        assert client.transport.closes == [(CloseCode.SERVICE_RESTART, "service restart")]


async def test_room_counts_lists_connections_per_project(
    registry: RoomRegistry, metrics: Metrics
) -> None:
    await joined(registry, metrics, "a1", "alice", project_id="p1")
    bob = await joined(registry, metrics, "b1", "bob", project_id="p1")
    await joined(registry, metrics, "c1", "carol", project_id="p2")
    assert registry.room_counts() == {"p1": 2, "p2": 1}

    await registry.leave(bob.connection)
    assert registry.room_counts() == {"p1": 1, "p2": 1}


# Metrics


async def test_metrics_count_one_message_per_recipient(
    registry: RoomRegistry, metrics: Metrics
) -> None:
    alice = await joined(registry, metrics, "a1", "alice")
    await joined(registry, metrics, "b1", "bob")
    await joined(registry, metrics, "c1", "carol")
    assert sent(metrics, "presence_state") == 3
    assert sent(metrics, "user_joined") == 1 + 2  # bob's reaches alice; carol's reaches two

    registry.relay(alice.connection, "cursor_update", {"line": 1, "column": 1})
    assert sent(metrics, "cursor_update") == 2

    registry.relay(alice.connection, "cursor_update", {"line": 2, "column": 1})
    assert sent(metrics, "cursor_update") == 4


async def test_metrics_count_nothing_for_a_relay_without_recipients(
    registry: RoomRegistry, metrics: Metrics
) -> None:
    alice = await joined(registry, metrics, "a1", "alice")

    registry.relay(alice.connection, "document_update", {})

    assert sent(metrics, "document_update") == 0


# Several instances


class Cluster:
    """Two registries, as on two instances, sharing one MemoryBus."""

    def __init__(self) -> None:
        self.bus = MemoryBus()
        self.metrics_a = Metrics()
        self.metrics_b = Metrics()
        self.a = RoomRegistry(MemoryBroadcaster(self.bus, instance_id="a"), self.metrics_a)
        self.b = RoomRegistry(MemoryBroadcaster(self.bus, instance_id="b"), self.metrics_b)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    cluster = Cluster()
    await cluster.a.start()
    await cluster.b.start()
    yield cluster
    await cluster.a.stop(grace=0)
    await cluster.b.stop(grace=0)


async def test_relay_crosses_instances_exactly_once(cluster: Cluster) -> None:
    alice = await joined(cluster.a, cluster.metrics_a, "a1", "alice")
    bob = await joined(cluster.b, cluster.metrics_b, "b1", "bob")
    carol = await joined(cluster.b, cluster.metrics_b, "c1", "carol")
    for client in (alice, bob, carol):
        client.take()

    cluster.a.relay(alice.connection, "document_update", {"n": 1})
    cluster.b.relay(bob.connection, "document_update", {"n": 2})

    assert [(f["client_id"], f["payload"]) for f in alice.take()] == [("b1", {"n": 2})]
    assert [(f["client_id"], f["payload"]) for f in bob.take()] == [("a1", {"n": 1})]
    assert [(f["client_id"], f["payload"]) for f in carol.take()] == [
        ("a1", {"n": 1}),
        ("b1", {"n": 2}),
    ]
    assert sent(cluster.metrics_a, "document_update") == 1
    assert sent(cluster.metrics_b, "document_update") == 3


async def test_presence_is_shared_across_instances(cluster: Cluster) -> None:
    alice_a = await joined(cluster.a, cluster.metrics_a, "a1", "alice")
    bob_b = await joined(cluster.b, cluster.metrics_b, "b1", "bob")
    assert [f["type"] for f in alice_a.take()] == ["presence_state", "user_joined"]
    bob_b.take()

    alice_b = await joined(cluster.b, cluster.metrics_b, "a2", "alice")

    users = {u["user_id"]: u["connections"] for u in alice_b.frames[0]["payload"]["users"]}
    assert users == {"alice": 2, "bob": 1}
    assert alice_a.take() == []
    assert bob_b.take() == []


async def test_user_joined_fires_once_across_instances(cluster: Cluster) -> None:
    bob_a = await joined(cluster.a, cluster.metrics_a, "b1", "bob")
    bob_b = await joined(cluster.b, cluster.metrics_b, "b2", "bob")
    bob_a.take()
    bob_b.take()

    await joined(cluster.a, cluster.metrics_a, "a1", "alice")
    await joined(cluster.b, cluster.metrics_b, "a2", "alice")

    joins = [f for f in bob_a.take() + bob_b.take() if f["type"] == "user_joined"]
    assert len(joins) == 2  # one user_joined, seen by each of bob's two connections
    assert {f["client_id"] for f in joins} == {"a1"}


async def test_user_left_fires_when_the_last_connection_anywhere_leaves(
    cluster: Cluster,
) -> None:
    bob = await joined(cluster.a, cluster.metrics_a, "b1", "bob")
    alice_a = await joined(cluster.a, cluster.metrics_a, "a1", "alice")
    alice_b = await joined(cluster.b, cluster.metrics_b, "a2", "alice")
    bob.take()

    await cluster.a.leave(alice_a.connection)
    assert bob.take() == []

    await cluster.b.leave(alice_b.connection)
    [announcement] = bob.take()
    assert announcement["type"] == "user_left"
    assert announcement["payload"] == {"user_id": "alice", "username": "Alice"}


async def test_instance_without_local_members_gets_no_relay(cluster: Cluster) -> None:
    alice = await joined(cluster.a, cluster.metrics_a, "a1", "alice")
    bob = await joined(cluster.b, cluster.metrics_b, "b1", "bob")
    await cluster.b.leave(bob.connection)
    bob.take()

    cluster.a.relay(alice.connection, "document_update", {})

    assert bob.take() == []
    assert cluster.bus.subscribers.get("p1") is not None
    assert cluster.b.snapshot() == []


async def test_stop_waits_for_sessions_to_leave() -> None:
    cluster = Cluster()
    await cluster.a.start()
    await cluster.b.start()
    alice = await joined(cluster.a, cluster.metrics_a, "a1", "alice")
    bob = await joined(cluster.b, cluster.metrics_b, "b1", "bob")
    stopped = anyio.Event()

    async def stop_a() -> None:
        await cluster.a.stop(grace=30)
        stopped.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(stop_a)
            await anyio.wait_all_tasks_blocked()
            assert alice.transport.closed
            assert not stopped.is_set()  # still waiting for alice's session to leave
            bob.take()

            await cluster.a.leave(alice.connection)  # what the session does once closed

    assert stopped.is_set()
    assert [frame["type"] for frame in bob.take()] == ["user_left"]
    await cluster.b.stop(grace=0)


async def test_reconnection_refreshes_presence_on_every_instance(cluster: Cluster) -> None:
    alice = await joined(cluster.a, cluster.metrics_a, "a1", "alice")
    bob = await joined(cluster.b, cluster.metrics_b, "b1", "bob")
    lonely = await joined(cluster.b, cluster.metrics_b, "c1", "carol", project_id="p2")
    for client in (alice, bob, lonely):
        client.take()

    cluster.a.on_reconnected()
    await cluster.a.refreshed()
    await cluster.b.refreshed()

    expected = {"alice", "bob"}
    for client in (alice, bob):
        [frame] = client.take()
        assert frame["type"] == "presence_state"
        assert frame["payload"]["resync"] is True
        assert {u["user_id"] for u in frame["payload"]["users"]} == expected
        assert frame["client_id"] == client.connection.client_id
    # Instance a has no member in p2: nothing was refreshed there.
    assert lonely.take() == []


async def test_refresh_requests_before_the_state_is_read_coalesce(cluster: Cluster) -> None:
    alice = await joined(cluster.a, cluster.metrics_a, "a1", "alice")
    alice.take()

    cluster.a.on_reconnected()
    cluster.a.on_reconnected()
    cluster.a.on_reconnected()
    await cluster.a.refreshed()

    # One read of the shared state answers all three: one presence_state, not three.
    assert [f["type"] for f in alice.take()] == ["presence_state"]


async def test_relay_from_someone_alone_frames_nothing(
    registry: RoomRegistry, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.fanout.broadcast

    alice = await joined(registry, metrics, "a1", "alice")
    alice.take()
    framed: list[bytes] = []

    def recording_frame(data: bytes, binary: bool = False) -> bytes:
        framed.append(data)
        return data

    monkeypatch.setattr(app.fanout.broadcast, "data_frame", recording_frame)

    registry.relay(alice.connection, "yjs_update", {"update": "AQID"})
    assert framed == []
    assert alice.take() == []

    bob = await joined(registry, metrics, "b1", "bob")
    bob.take()
    framed.clear()  # bob's user_joined, framed for alice
    registry.relay(alice.connection, "yjs_update", {"update": "AQID"})
    assert len(framed) == 1
    assert [f["type"] for f in bob.take()] == ["yjs_update"]
