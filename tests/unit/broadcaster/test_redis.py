"""RedisBroadcaster presence against a real redis-server: who counts as a user's first and
last connection."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from app.broadcaster import Member
from app.broadcaster.redis import RedisBroadcaster
from app.metrics import Metrics
from app.rooms.events import InstanceEvent
from tests.support.redis_server import RedisServer, running_redis
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


class QuietListener:
    def on_remote(self, event: InstanceEvent) -> None:
        pass

    def on_remote_member_gone(self, project_id: str, member: Member, user_gone: bool) -> None:
        pass

    def room_counts(self) -> dict[str, int]:
        return {}

    def on_reconnected(self) -> None:
        pass


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
async def broadcaster(redis_server: RedisServer) -> AsyncIterator[RedisBroadcaster]:
    client = Redis(host="127.0.0.1", port=redis_server.port)
    broadcaster = RedisBroadcaster(
        client, Metrics(), prefix=f"unit-{uuid.uuid4().hex[:8]}:", presence_ttl=30.0
    )
    await broadcaster.start(QuietListener())

    async def connected() -> bool:
        return broadcaster.status().connected

    await eventually(connected)
    try:
        yield broadcaster
    finally:
        await broadcaster.stop()


async def test_a_member_already_written_by_a_refresh_is_still_the_users_first(
    broadcaster: RedisBroadcaster,
) -> None:
    # The heartbeat refreshes every local member, including one whose join is still on its
    # way to Redis: the join must not then count the member's own entry as another tab.
    tab = Member("tab-1", "ann", "Ann")
    assert await broadcaster.add_member("p", tab) is True
    assert await broadcaster.add_member("p", tab) is True


async def test_only_another_connection_of_the_user_makes_a_join_not_the_first(
    broadcaster: RedisBroadcaster,
) -> None:
    assert await broadcaster.add_member("p", Member("tab-1", "ann", "Ann")) is True
    assert await broadcaster.add_member("p", Member("tab-2", "ann", "Ann")) is False
    assert await broadcaster.add_member("p", Member("tab-3", "bob", "Bob")) is True
    assert await broadcaster.remove_member("p", Member("tab-1", "ann", "Ann")) is False
    assert await broadcaster.remove_member("p", Member("tab-2", "ann", "Ann")) is True
