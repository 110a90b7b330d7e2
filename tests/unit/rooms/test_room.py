"""A room's lifecycle through the registry: one load for concurrent first joins, hooks on every
event, a grace period before the flush, and a failed load that refuses without keeping a room."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from app.broadcaster import MemoryBroadcaster
from app.errors import Refusal
from app.metrics import Metrics
from app.rooms.events import RoomEvent
from app.rooms.registry import RoomRegistry
from app.rooms.room import Room
from tests.unit.rooms.test_registry import Client

pytestmark = pytest.mark.anyio


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until `condition` holds (a bounded number of loop turns)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)  # one turn of the event loop, not a wait for time
    raise AssertionError("the condition never held")


def room_of(registry: RoomRegistry, project_id: str = "p1") -> Room:
    return registry._rooms[project_id]


# A room closed, then the project's next one opened.
REOPENED = ["subscribe p1", "load p1", "flush p1", "unsubscribe p1", "subscribe p1", "load p1"]


async def last_leaves(registry: RoomRegistry, metrics: Metrics) -> asyncio.Task[None]:
    """Alice joins and leaves: the room's close is under way when this returns."""
    alice = Client(metrics, "a1", "alice")
    await registry.join(alice.connection)
    leaving = asyncio.create_task(registry.leave(alice.connection))
    await until(lambda: "p1" in registry._closing)
    return leaving


async def waiting_to_join(registry: RoomRegistry, client: Client) -> asyncio.Task[None]:
    """`client` joining, and waiting at the room's door."""
    joining = asyncio.create_task(registry.join(client.connection))
    await until(lambda: "p1" in registry._rooms and room_of(registry).joining == 1)
    return joining


class RecordingHooks:
    """RoomHooks that log every call; `gate` holds loads until the test opens it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.applied: list[RoomEvent] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_load = False
        self.refuse: str | None = None
        self.flushed = asyncio.Event()

    async def load(self, room: Room) -> None:
        self.calls.append(f"load {room.project_id}")
        await self.gate.wait()
        if self.fail_load:
            raise OSError("the store is down")

    def apply(self, room: Room, event: RoomEvent) -> None:
        if event.type == self.refuse:
            raise Refusal("invalid_update", "expected a Yjs update")
        self.applied.append(event)

    async def flush(self, room: Room) -> None:
        self.calls.append(f"flush {room.project_id}")
        self.flushed.set()


class Subscriptions(MemoryBroadcaster):
    """Records subscribe and unsubscribe, in order with the hooks' calls."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    async def subscribe(self, project_id: str) -> None:
        self.calls.append(f"subscribe {project_id}")
        await super().subscribe(project_id)

    async def unsubscribe(self, project_id: str) -> None:
        self.calls.append(f"unsubscribe {project_id}")
        await super().unsubscribe(project_id)


@pytest.fixture
def hooks() -> RecordingHooks:
    return RecordingHooks()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


async def registry_with(
    hooks: RecordingHooks, metrics: Metrics, grace: float
) -> AsyncIterator[RoomRegistry]:
    registry = RoomRegistry(Subscriptions(hooks.calls), metrics, hooks=hooks, grace=grace)
    await registry.start()
    yield registry
    await registry.stop(grace=0)


@pytest.fixture
async def registry(hooks: RecordingHooks, metrics: Metrics) -> AsyncIterator[RoomRegistry]:
    async for registry in registry_with(hooks, metrics, grace=0):
        yield registry


@pytest.fixture
async def lingering(hooks: RecordingHooks, metrics: Metrics) -> AsyncIterator[RoomRegistry]:
    # Long enough never to run out by itself within a test, unless the test waits for it.
    async for registry in registry_with(hooks, metrics, grace=3600):
        yield registry


async def test_concurrent_first_joins_share_one_load(
    registry: RoomRegistry, hooks: RecordingHooks, metrics: Metrics
) -> None:
    hooks.gate.clear()
    clients = [Client(metrics, f"c{n}", f"user{n}") for n in range(3)]
    joins = [asyncio.create_task(registry.join(c.connection)) for c in clients]
    await until(lambda: "p1" in registry._rooms and room_of(registry).joining == 3)
    hooks.gate.set()
    await asyncio.gather(*joins)

    assert hooks.calls == ["subscribe p1", "load p1"]
    assert all(client.types[0] == "presence_state" for client in clients)
    assert registry.connection_count == 3


async def test_the_room_is_subscribed_before_it_is_loaded_and_flushed_before_unsubscribed(
    registry: RoomRegistry, hooks: RecordingHooks, metrics: Metrics
) -> None:
    alice = Client(metrics, "a1", "alice")
    await registry.join(alice.connection)
    await registry.leave(alice.connection)

    assert hooks.calls == ["subscribe p1", "load p1", "flush p1", "unsubscribe p1"]


async def test_a_failed_load_refuses_every_waiting_joiner_and_the_next_one_retries(
    registry: RoomRegistry, hooks: RecordingHooks, metrics: Metrics
) -> None:
    hooks.fail_load = True
    hooks.gate.clear()
    first, second = Client(metrics, "a1", "alice"), Client(metrics, "b1", "bob")
    joins = [asyncio.create_task(registry.join(c.connection)) for c in (first, second)]
    await until(lambda: "p1" in registry._rooms and room_of(registry).joining == 2)
    hooks.gate.set()
    results = await asyncio.gather(*joins, return_exceptions=True)

    assert [getattr(result, "code", result) for result in results] == ["room_unavailable"] * 2
    assert first.types == second.types == []
    assert registry.connection_count == 0
    # Never flushed: a room whose load failed holds nothing that could be stored.
    assert "flush p1" not in hooks.calls

    hooks.fail_load = False
    third = Client(metrics, "c1", "carol")
    await registry.join(third.connection)
    assert hooks.calls.count("load p1") == 2
    assert third.types == ["presence_state"]


async def test_every_relayed_event_is_applied_before_anyone_gets_it(
    registry: RoomRegistry, hooks: RecordingHooks, metrics: Metrics
) -> None:
    alice, bob = Client(metrics, "a1", "alice"), Client(metrics, "b1", "bob")
    await registry.join(alice.connection)
    await registry.join(bob.connection)
    hooks.applied.clear()
    bob.take()

    registry.relay(alice.connection, "yjs_update", {"update": "AQID"})

    assert [event.type for event in hooks.applied] == ["yjs_update"]
    assert [frame["type"] for frame in bob.take()] == ["yjs_update"]


async def test_an_event_a_hook_refuses_reaches_nobody(
    registry: RoomRegistry, hooks: RecordingHooks, metrics: Metrics
) -> None:
    alice, bob = Client(metrics, "a1", "alice"), Client(metrics, "b1", "bob")
    await registry.join(alice.connection)
    await registry.join(bob.connection)
    bob.take()
    hooks.refuse = "yjs_update"

    with pytest.raises(Refusal):
        registry.relay(alice.connection, "yjs_update", {"update": "AQID"})

    assert bob.take() == []


async def test_a_rejoin_within_the_grace_period_finds_the_room_open(
    lingering: RoomRegistry, hooks: RecordingHooks, metrics: Metrics
) -> None:
    alice = Client(metrics, "a1", "alice")
    await lingering.join(alice.connection)
    await lingering.leave(alice.connection)
    again = Client(metrics, "a2", "alice")
    await lingering.join(again.connection)

    assert hooks.calls == ["subscribe p1", "load p1"]


async def test_an_empty_room_is_flushed_and_dropped_when_its_grace_period_ends(
    hooks: RecordingHooks, metrics: Metrics
) -> None:
    async for registry in registry_with(hooks, metrics, grace=0.01):
        alice = Client(metrics, "a1", "alice")
        await registry.join(alice.connection)
        await registry.leave(alice.connection)
        assert registry.room_counts() == {}
        assert "flush p1" not in hooks.calls

        await hooks.flushed.wait()
        await registry.stop(grace=0)
        assert hooks.calls == ["subscribe p1", "load p1", "flush p1", "unsubscribe p1"]


@pytest.mark.parametrize("left", [True, False], ids=["in its grace period", "with members"])
async def test_stopping_flushes_every_room(
    lingering: RoomRegistry, hooks: RecordingHooks, metrics: Metrics, left: bool
) -> None:
    alice = Client(metrics, "a1", "alice")
    await lingering.join(alice.connection)
    if left:
        await lingering.leave(alice.connection)
    # Otherwise the session never leaves in time (its transport is a fake nobody reads).

    await lingering.stop(grace=0)

    assert hooks.calls[-2:] == ["flush p1", "unsubscribe p1"]


async def test_a_new_room_loads_only_after_the_previous_one_finished_flushing(
    registry: RoomRegistry, hooks: RecordingHooks, metrics: Metrics
) -> None:
    release = slow_flushes(hooks)
    leaving = await last_leaves(registry, metrics)
    bob = Client(metrics, "b1", "bob")
    joining = await waiting_to_join(registry, bob)
    assert hooks.calls.count("load p1") == 1

    release.set()
    await leaving
    await joining

    assert hooks.calls == REOPENED


async def test_a_join_with_nothing_to_wait_for_completes_without_yielding(
    registry: RoomRegistry, metrics: Metrics
) -> None:
    # So that joins on one instance complete in the order they came: a second client never
    # joins, and announces itself, before the first is a member.
    alice = Client(metrics, "a1", "alice")
    joining = registry.join(alice.connection)

    with pytest.raises(StopIteration):
        joining.send(None)
    assert alice.types == ["presence_state"]


async def test_an_opener_that_gives_up_leaves_the_opening_to_the_next_entrant(
    registry: RoomRegistry, hooks: RecordingHooks, metrics: Metrics
) -> None:
    hooks.gate.clear()
    first, second = Client(metrics, "a1", "alice"), Client(metrics, "b1", "bob")
    opener = asyncio.create_task(registry.join(first.connection))
    await until(lambda: "load p1" in hooks.calls)
    waiter = asyncio.create_task(registry.join(second.connection))
    await until(lambda: room_of(registry).joining == 2)
    opener.cancel()
    hooks.gate.set()
    await waiter

    assert opener.cancelled()
    assert second.types == ["presence_state"]
    assert hooks.calls.count("load p1") == 2
    # Subscribing is idempotent; what matters is that the room ends unsubscribed.
    await registry.leave(second.connection)
    assert hooks.calls[-2:] == ["flush p1", "unsubscribe p1"]


def slow_flushes(hooks: RecordingHooks) -> asyncio.Event:
    """Make flushes wait for the returned event."""
    release = asyncio.Event()
    flush = hooks.flush

    async def slow_flush(room: Room) -> None:
        await release.wait()
        await flush(room)

    hooks.flush = slow_flush  # type: ignore[method-assign]
    return release


async def test_a_joiner_cancelled_while_the_last_room_closes_does_not_cancel_that_close(
    registry: RoomRegistry, hooks: RecordingHooks, metrics: Metrics
) -> None:
    release = slow_flushes(hooks)
    leaving = await last_leaves(registry, metrics)
    bob = Client(metrics, "b1", "bob")
    joining = await waiting_to_join(registry, bob)

    joining.cancel()  # as uvicorn cancels sessions at shutdown
    await asyncio.gather(joining, return_exceptions=True)
    release.set()
    await leaving  # alice's own leave ends normally, not with bob's cancellation

    assert hooks.calls[:4] == ["subscribe p1", "load p1", "flush p1", "unsubscribe p1"]
    assert hooks.calls.count("unsubscribe p1") == hooks.calls.count("subscribe p1")


async def test_every_earlier_close_ends_before_the_next_room_opens(
    registry: RoomRegistry, hooks: RecordingHooks, metrics: Metrics
) -> None:
    release = slow_flushes(hooks)
    leaving = await last_leaves(registry, metrics)
    # A second room waits for the first close, and is abandoned while it waits.
    bob = Client(metrics, "b1", "bob")
    joining = await waiting_to_join(registry, bob)
    joining.cancel()
    await asyncio.gather(joining, return_exceptions=True)
    # A third room must still wait for the first close, not only for the second.
    carol = Client(metrics, "c1", "carol")
    carol_joins = await waiting_to_join(registry, carol)
    assert hooks.calls.count("load p1") == 1

    release.set()
    await leaving
    await carol_joins

    assert hooks.calls == REOPENED
    assert carol.types == ["presence_state"]


async def test_presence_announcements_bypass_the_hooks(
    registry: RoomRegistry, hooks: RecordingHooks, metrics: Metrics
) -> None:
    alice, bob = Client(metrics, "a1", "alice"), Client(metrics, "b1", "bob")
    await registry.join(alice.connection)
    hooks.refuse = "user_joined"
    await registry.join(bob.connection)
    hooks.refuse = "user_left"
    await registry.leave(bob.connection)

    assert [frame["type"] for frame in alice.take()] == [
        "presence_state",
        "user_joined",
        "user_left",
    ]
    assert hooks.applied == []


async def test_events_that_come_while_the_room_opens_are_applied_once_it_is_loaded(
    registry: RoomRegistry, hooks: RecordingHooks, metrics: Metrics
) -> None:
    hooks.gate.clear()
    alice = Client(metrics, "a1", "alice")
    joining = asyncio.create_task(registry.join(alice.connection))
    await until(lambda: "load p1" in hooks.calls)
    registry.publish_event("p1", "compilation_started", {}, user_id="svc", username="Service")
    assert hooks.applied == []

    hooks.gate.set()
    await joining

    assert [event.type for event in hooks.applied] == ["compilation_started"]
