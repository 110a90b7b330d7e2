"""MemoryBroadcaster: delivery to subscribed peers only, and cluster presence on a shared bus."""

from __future__ import annotations

import pytest

from app.broadcaster import Member, MemoryBroadcaster, MemoryBus
from app.rooms.events import Author, InstanceEvent, RoomEvent

pytestmark = pytest.mark.anyio


class RecordingListener:
    """A Listener that remembers the events it was handed."""

    def __init__(self) -> None:
        self.events: list[InstanceEvent] = []
        self.gone: list[tuple[str, Member, bool]] = []

    def on_remote(self, event: InstanceEvent) -> None:
        self.events.append(event)

    def on_remote_member_gone(self, project_id: str, member: Member, user_gone: bool) -> None:
        self.gone.append((project_id, member, user_gone))

    def room_counts(self) -> dict[str, int]:
        return {}

    def on_reconnected(self) -> None:
        pass


AUTHOR = Author("u1", "User One", "c1")


def event(project_id: str = "p1", data: bytes = b"{}") -> RoomEvent:
    return RoomEvent(project_id, "cursor_update", data, AUTHOR, 0.0, exclude="c1")


ALICE_1 = Member("a1", "alice", "Alice")
ALICE_2 = Member("a2", "alice", "Alice")
BOB = Member("b1", "bob", "Bob")


async def started(bus: MemoryBus, instance_id: str) -> tuple[MemoryBroadcaster, RecordingListener]:
    broadcaster = MemoryBroadcaster(bus, instance_id=instance_id)
    listener = RecordingListener()
    await broadcaster.start(listener)
    return broadcaster, listener


async def test_publish_reaches_subscribed_peers_but_not_itself() -> None:
    bus = MemoryBus()
    a, a_listener = await started(bus, "a")
    b, b_listener = await started(bus, "b")
    await a.subscribe("p1")
    await b.subscribe("p1")

    a.publish(event(data=b"1"))

    assert a_listener.events == []
    assert b_listener.events == [event(data=b"1")]


async def test_publish_skips_peers_not_subscribed_to_the_project() -> None:
    bus = MemoryBus()
    a, _ = await started(bus, "a")
    b, b_listener = await started(bus, "b")
    await b.subscribe("p2")

    a.publish(event("p1"))

    assert b_listener.events == []


async def test_unsubscribe_stops_delivery_and_forgets_empty_projects() -> None:
    bus = MemoryBus()
    a, _ = await started(bus, "a")
    b, b_listener = await started(bus, "b")
    await b.subscribe("p1")

    await b.unsubscribe("p1")
    a.publish(event())

    assert b_listener.events == []
    assert "p1" not in bus.subscribers


async def test_unsubscribe_from_an_unknown_project_is_harmless() -> None:
    broadcaster, _ = await started(MemoryBus(), "a")

    await broadcaster.unsubscribe("never-subscribed")


async def test_stop_removes_the_instance_from_every_project() -> None:
    bus = MemoryBus()
    a, _ = await started(bus, "a")
    b, b_listener = await started(bus, "b")
    await b.subscribe("p1")
    await b.subscribe("p2")

    await b.stop()
    a.publish(event("p1"))
    a.publish(event("p2"))

    assert b_listener.events == []


async def test_presence_reports_a_users_first_and_last_connection() -> None:
    broadcaster, _ = await started(MemoryBus(), "a")

    assert await broadcaster.add_member("p1", ALICE_1) is True
    assert await broadcaster.add_member("p1", ALICE_2) is False
    assert await broadcaster.add_member("p1", BOB) is True
    assert set(await broadcaster.members("p1")) == {ALICE_1, ALICE_2, BOB}

    assert await broadcaster.remove_member("p1", ALICE_1) is False
    assert await broadcaster.remove_member("p1", ALICE_2) is True
    assert await broadcaster.remove_member("p1", BOB) is True
    assert await broadcaster.members("p1") == []


async def test_removing_an_unknown_member_is_not_a_last_leave() -> None:
    broadcaster, _ = await started(MemoryBus(), "a")
    await broadcaster.add_member("p1", ALICE_1)

    assert await broadcaster.remove_member("p1", BOB) is False
    assert await broadcaster.remove_member("p2", BOB) is False


async def test_presence_is_per_project() -> None:
    broadcaster, _ = await started(MemoryBus(), "a")
    await broadcaster.add_member("p1", ALICE_1)

    assert await broadcaster.add_member("p2", ALICE_2) is True
    assert await broadcaster.members("p2") == [ALICE_2]


async def test_presence_is_shared_through_the_bus() -> None:
    bus = MemoryBus()
    a, _ = await started(bus, "a")
    b, _ = await started(bus, "b")

    assert await a.add_member("p1", ALICE_1) is True
    assert await b.add_member("p1", ALICE_2) is False
    assert set(await a.members("p1")) == {ALICE_1, ALICE_2}
    assert await a.remove_member("p1", ALICE_1) is False
    assert await b.remove_member("p1", ALICE_2) is True


async def test_there_are_no_cluster_stats_in_memory() -> None:
    assert await MemoryBroadcaster().cluster_stats() is None


def test_instances_get_distinct_ids_and_report_connected() -> None:
    first, second = MemoryBroadcaster(), MemoryBroadcaster()

    assert first.instance_id != second.instance_id
    assert MemoryBroadcaster(instance_id="fixed").instance_id == "fixed"
    status = first.status()
    assert (status.connected, status.detail) == (True, "in-memory")
