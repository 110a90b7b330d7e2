"""Several real instances on one real Redis, and waiting for their view of Redis."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping, Sequence

import httpx

from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess
from tests.support.waiting import eventually


@contextlib.contextmanager
def cluster(
    redis: RedisServer,
    size: int = 2,
    each: Sequence[Mapping[str, str]] = (),
    /,
    **env: str,
) -> Iterator[list[ServerProcess]]:
    """`size` instances on `redis`, under a key prefix of their own, named instance-0, 1, ...;
    `each` adds settings of its own to the instance at the same index."""
    shared = {
        "REDIS_ADDR": redis.addr,
        "REDIS_CHANNEL_PREFIX": f"test-{uuid.uuid4().hex[:8]}:",
        **env,
    }
    own = [*each, *([{}] * (size - len(each)))]
    servers = [
        ServerProcess({**shared, "INSTANCE_ID": f"instance-{i}", **own[i]}) for i in range(size)
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.close()


async def redis_state(*servers: ServerProcess, connected: bool) -> None:
    """Wait until every server's /ready reports Redis as connected (or not)."""
    for server in servers:

        async def reached(server: ServerProcess = server) -> bool:
            async with httpx.AsyncClient(base_url=server.http_url) as http:
                body = (await http.get("/ready")).json()
            return bool(body["broadcaster_connected"] is connected)

        await eventually(reached, within=20)
