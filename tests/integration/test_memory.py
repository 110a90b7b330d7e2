"""Memory after a connection flood: held at the same level by a second flood, not grown, and
given back once the connections are gone (docs/performance.md, "Memory after a connection
flood").

A real server and 1,000 real clients, twice. The server runs with PYTHONMALLOC=malloc, so
that the reclaim after the drop can give nearly everything back; with pymalloc (the default)
arenas held by a few free-listed blocks keep most of it: +17-20% instead of +23% without the
reclaim, too close for a test to tell a reclaim that works from one that never ran.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Iterator

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.support.clients import open_ws, receive, receive_type, send
from tests.support.server import ServerProcess, running_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

CONNECTIONS = 1000
ROOMS = 50
WARM_UP = 20
# Measured with this test's clients, five runs: after the first flood and its reclaim VmRSS
# was 3.8-4.2% above the baseline, and the second flood added 0.2-0.8% of the baseline. Without
# the reclaim (MEMORY_RECLAIM_INTERVAL=0) the first flood left it 23.8% above.
WITHIN_BASELINE = 0.12
SECOND_FLOOD_ADDS = 0.03


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * CONNECTIONS  # the clients' sockets here and the server's, which inherits it
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    env = {
        "PYTHONMALLOC": "malloc",
        "MAX_CONNECTIONS_PER_IP": str(2 * CONNECTIONS),
        # Each flood is reclaimed as soon as it is over (60 s apart by default).
        "MEMORY_RECLAIM_INTERVAL": "1s",
    }
    try:
        with running_server(env) as running:
            yield running
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def rss_kib(server: ServerProcess) -> int:
    assert server.process is not None
    with open(f"/proc/{server.process.pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def reclaims(server: ServerProcess) -> list[dict[str, object]]:
    lines = (json.loads(line) for line in server.logs().splitlines() if "memory_reclaimed" in line)
    return [line for line in lines if line.get("event") == "memory_reclaimed"]


async def connections_gone(server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {server.token('observer')}"}
    async with httpx.AsyncClient(base_url=server.http_url, headers=headers) as http:

        async def empty() -> bool:
            body = (await http.get("/stats")).json()
            return bool(body["total_clients"] == 0 and body["total_rooms"] == 0)

        await eventually(empty, within=60)


async def flood(server: ServerProcess, count: int, first_user: int) -> None:
    """Open `count` connections over ROOMS projects, each joined and answered a ping, all at
    once; then close them all and wait until the server counts none."""
    clients: list[ClientConnection] = []
    limiter = anyio.CapacityLimiter(64)

    async def join(index: int) -> None:
        async with limiter:
            url = server.ws_url(f"flood-{index % ROOMS}", server.token(f"u{first_user + index}"))
            ws = await open_ws(url)
            clients.append(ws)
            await receive_type(ws, "presence_state")
            await send(ws, "cursor_update", {"line": index, "column": 1})
            await send(ws, "ping")
            while (await receive(ws))["type"] != "pong":
                pass  # the room's user_joined and cursor_update

    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                for index in range(count):
                    group.start_soon(join, index)
    finally:
        async with anyio.create_task_group() as group:
            for ws in clients:
                group.start_soon(ws.close)
    await connections_gone(server)


async def reclaimed(server: ServerProcess, times: int) -> int:
    """VmRSS once the server has logged its `times`-th reclaim."""

    async def logged() -> bool:
        return len(reclaims(server)) >= times

    await eventually(logged, within=60)
    return rss_kib(server)


async def test_memory_is_given_back_after_a_flood_and_held_level_by_a_second(
    server: ServerProcess,
) -> None:
    await flood(server, WARM_UP, 900_000)  # lazy imports and caches belong to the process
    assert reclaims(server) == []  # 20 closed connections are not worth a reclaim
    baseline = rss_kib(server)

    await flood(server, CONNECTIONS, 0)
    first = await reclaimed(server, 1)
    await flood(server, CONNECTIONS, 100_000)
    second = await reclaimed(server, 2)

    figures = f"baseline {baseline} KiB, after one flood {first}, after two {second}"
    print(figures)  # shown with -s: the figures the bounds above were set from
    # A reclaim can run while the last closed connections are still being torn down (seen
    # once in a full run: +22% after the first flood, +5% after the second), so each bound
    # takes the better of the two where one late teardown could spoil it. With no working
    # reclaim both stay above +23%; memory that grows from flood to flood fails the first.
    given_back = baseline * (1 + WITHIN_BASELINE)
    assert second <= max(first, given_back) + SECOND_FLOOD_ADDS * baseline, figures
    assert min(first, second) <= given_back, figures
    assert [line["connections"] for line in reclaims(server)] == [0, 0]
