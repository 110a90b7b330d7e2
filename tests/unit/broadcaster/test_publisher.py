"""Publisher against a real redis-server: order, limits, and failures it must notice."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from app.broadcaster.publisher import Publisher
from tests.support.redis_server import RedisServer, running_redis

pytestmark = pytest.mark.anyio

CHANNEL = b"unit:publisher"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=redis_server.port)
    try:
        yield client
    finally:
        await client.aclose()


async def subscribed(client: Redis) -> PubSub:
    pubsub = client.pubsub()
    await pubsub.subscribe(CHANNEL)
    confirmation = await pubsub.get_message(timeout=5)
    assert confirmation is not None
    assert confirmation["type"] == "subscribe"
    return pubsub


async def messages(pubsub: PubSub, count: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < count:
        message = await pubsub.get_message(timeout=5)
        assert message is not None, f"only {len(got)} of {count} arrived"
        got.append(message["data"])
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    return got


@contextlib.asynccontextmanager
async def reading(publisher: Publisher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(publisher.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, RedisConnectionError):
            await task
        await publisher.aclose()


async def test_every_publish_arrives_in_order_and_is_answered(client: Redis) -> None:
    pubsub = await subscribed(client)
    publisher = await Publisher.open(client, "unit-publisher")
    async with reading(publisher):
        assert all(publisher.publish(CHANNEL, b"m%d" % i) for i in range(500))
        await asyncio.wait_for(publisher.flush(), 5)
        assert publisher.pending == 0
    assert await messages(pubsub, 500) == [b"m%d" % i for i in range(500)]


async def test_past_its_limit_it_refuses_without_writing(client: Redis) -> None:
    pubsub = await subscribed(client)
    publisher = await Publisher.open(client, "unit-publisher", limit=3)
    # Replies are not read yet, so all three stay unanswered.
    assert [publisher.publish(CHANNEL, b"%d" % i) for i in range(5)] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert publisher.pending == 3
    async with reading(publisher):
        await asyncio.wait_for(publisher.flush(), 5)
        assert publisher.publish(CHANNEL, b"after")
        await asyncio.wait_for(publisher.flush(), 5)
        assert publisher.publish(CHANNEL, b"end")
    # Everything up to the end marker, in order: the refused two never reached Redis.
    assert await messages(pubsub, 5) == [b"0", b"1", b"2", b"after", b"end"]


async def test_refuses_once_redis_stops_reading_and_recovers_when_it_reads_again(
    client: Redis, redis_server: RedisServer
) -> None:
    publisher = await Publisher.open(client, "unit-paused-publisher", byte_limit=64 * 1024)
    chunk = b"x" * 256 * 1024
    async with reading(publisher):
        redis_server.pause()
        try:
            accepted = 0
            # The kernel's socket buffers take a few MiB first; then our own buffer passes
            # 64 KiB and the next publish is refused, long before the count limit.
            while accepted < 400 and publisher.publish(CHANNEL, chunk):
                accepted += 1
                await asyncio.sleep(0)  # let the transport move what it can to the kernel
            assert 0 < accepted < 400
            assert publisher.pending == accepted
            assert not publisher.publish(CHANNEL, b"small")
        finally:
            redis_server.resume()
        await asyncio.wait_for(publisher.flush(), 10)
        assert publisher.pending == 0
        assert publisher.publish(CHANNEL, b"small")


async def test_stalled_only_when_a_reply_is_overdue(client: Redis) -> None:
    publisher = await Publisher.open(client, "unit-publisher", reply_timeout=2.0)
    now = time.monotonic()
    assert not publisher.stalled(now + 60)  # nothing pending: silence is fine
    assert publisher.publish(CHANNEL, b"x")
    assert not publisher.stalled(time.monotonic())
    assert publisher.stalled(time.monotonic() + 2.5)
    async with reading(publisher):
        await asyncio.wait_for(publisher.flush(), 5)
        assert not publisher.stalled(time.monotonic() + 60)


async def test_a_closed_connection_is_noticed_while_idle(
    client: Redis, redis_server: RedisServer
) -> None:
    publisher = await Publisher.open(client, "unit-idle-publisher")
    async with reading(publisher) as task:
        assert redis_server.kill_clients_named("unit-idle-publisher") == 1
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(task, 5)
        assert publisher.closed
        assert not publisher.publish(CHANNEL, b"into the void")


async def test_the_connection_is_named_for_operators(client: Redis) -> None:
    publisher = await Publisher.open(client, "texflow-ws:unit:publisher")
    try:
        names = [c["name"] for c in await client.client_list()]
        assert "texflow-ws:unit:publisher" in names
    finally:
        await publisher.aclose()


async def test_a_user_whose_acl_forbids_client_still_publishes(
    client: Redis, redis_server: RedisServer
) -> None:
    await client.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", "publisher-only", "on", ">secret", "~*", "&*", "+@all", "-client"
    )
    limited = Redis(
        host="127.0.0.1", port=redis_server.port, username="publisher-only", password="secret"
    )
    try:
        pubsub = await subscribed(client)
        publisher = await Publisher.open(limited, "texflow-ws:acl:publisher")
        async with reading(publisher):
            assert publisher.publish(CHANNEL, b"allowed")
            await asyncio.wait_for(publisher.flush(), 5)
        assert await messages(pubsub, 1) == [b"allowed"]
    finally:
        await limited.aclose()
        await client.execute_command("ACL", "DELUSER", "publisher-only")  # type: ignore[no-untyped-call]
