"""Documents across instances on a real Redis and a real PostgreSQL: every copy complete, and
no acknowledged edit lost through Redis outages, `kill -9` of an instance and a database
outage."""

from __future__ import annotations

import random
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import httpx
import pytest
from pycrdt import Doc, Text
from websockets.exceptions import ConnectionClosed

from app.documents.document import LiveDocument
from app.documents.store.base import DocumentKey
from app.documents.store.postgres import PostgresStore
from tests.support.clients import receive
from tests.support.cluster import cluster, redis_state
from tests.support.postgres_server import PostgresServer, running_postgres
from tests.support.redis_server import RedisServer, running_redis
from tests.support.server import ServerProcess
from tests.support.waiting import eventually
from tests.support.yjs import DOCUMENT_ID, TEXT_NAME, YjsClient, synced_client
from tests.support.ywebsocket import provider, yjs_url

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A Redis of the test's own: tests stop and freeze it."""
    with running_redis() as server:
        yield server


def documents_env(postgres: PostgresServer, **extra: str) -> dict[str, str]:
    return {
        "DOCUMENT_STORE": postgres.dsn(postgres.create_database()),
        "DOCUMENT_GRACE": "0s",
        "DOCUMENT_CATCH_UP_INTERVAL": "200ms",
        "PRESENCE_TTL": "2s",
        **extra,
    }


@asynccontextmanager
async def one_on_each(
    first: ServerProcess, second: ServerProcess
) -> AsyncIterator[tuple[YjsClient, YjsClient]]:
    """ann on the first instance and bob on the second, both synced, in project p."""
    async with (
        synced_client(first.ws_url("p", first.token("ann")), "ann") as ann,
        synced_client(second.ws_url("p", second.token("bob")), "bob") as bob,
    ):
        yield ann, bob


async def text_on(server: ServerProcess, project: str) -> str:
    async with synced_client(server.ws_url(project, server.token("reader")), "reader") as reader:
        return str(reader)


async def type_text(client: YjsClient, text: str) -> None:
    client.text.insert(len(client.text), text)
    await client.flush()
    await client.read_until(lambda: client.saved)


async def converge(*clients: YjsClient, expected: str) -> None:
    """Each client reads until its text is `expected`: no client sends anything."""
    for client in clients:
        await client.read_until(lambda c=client: str(c) == expected)  # type: ignore[misc]


async def test_an_edit_reaches_every_instance_and_a_joiner_anywhere(
    postgres: PostgresServer, redis: RedisServer
) -> None:
    with cluster(redis, 2, **documents_env(postgres)) as (one, two):
        await redis_state(one, two, connected=True)
        async with one_on_each(one, two) as (ann, bob):
            await type_text(ann, "from one")
            await bob.read_until(lambda: str(bob) == "from one")
            await type_text(bob, ", from two")
            await ann.read_until(lambda: str(ann) == "from one, from two")
        assert await text_on(two, "p") == "from one, from two"
        assert await text_on(one, "p") == "from one, from two"


async def test_copies_converge_after_a_redis_outage_with_no_client_action(
    postgres: PostgresServer, redis: RedisServer
) -> None:
    with cluster(redis, 2, **documents_env(postgres)) as (one, two):
        await redis_state(one, two, connected=True)
        async with one_on_each(one, two) as (ann, bob):
            await type_text(ann, "a")
            await bob.read_until(lambda: str(bob) == "a")
            redis.stop()  # everything in flight between the instances is lost
            await redis_state(one, two, connected=False)
            # Each side keeps editing and storing: acknowledged during the outage.
            await type_text(ann, "nn")
            await type_text(bob, "bb")
            redis.start()
            await redis_state(one, two, connected=True)
            # What both sides typed, merged as Yjs would.
            merged: Doc[Text] = Doc()
            merged.apply_update(ann.doc.get_update())
            merged.apply_update(bob.doc.get_update())
            expected = str(merged.get(TEXT_NAME, type=Text))
            assert sorted(expected) == sorted("annbb")
            # Neither client sends anything: the instances catch up from the store.
            await converge(ann, bob, expected=expected)
        assert await text_on(one, "p") == expected


async def test_clients_of_a_killed_instance_sync_elsewhere_and_lose_nothing(
    postgres: PostgresServer, redis: RedisServer
) -> None:
    with cluster(redis, 2, **documents_env(postgres)) as (one, two):
        await redis_state(one, two, connected=True)
        doc: Doc[Text] = Doc()
        acknowledged: list[bytes] = []
        async with synced_client(one.ws_url("p", one.token("ann")), "ann", doc=doc) as ann:
            rng = random.Random(3)
            async with anyio.create_task_group() as tasks:

                async def read() -> None:
                    try:
                        while True:
                            await ann.receive_one()
                    except ConnectionClosed:
                        return

                async def type_until_killed() -> None:
                    try:
                        while True:
                            ann.random_edit(rng)
                            await ann.flush()
                            await anyio.lowlevel.checkpoint()
                    except ConnectionClosed:
                        return

                tasks.start_soon(read)
                tasks.start_soon(type_until_killed)
                await ann.wait_for(lambda: len(ann.acknowledged) >= 100)
                one.signal(signal.SIGKILL)
                one.wait()
            acknowledged = list(ann.acknowledged)
        # Back on the other instance with the same document: its sync step sends what the
        # killed one never stored.
        async with synced_client(two.ws_url("p", two.token("ann")), "ann", doc=doc) as again:
            typed = str(again)
        async with synced_client(two.ws_url("p", two.token("cat")), "cat") as cat:
            before = (str(cat), cat.doc.get_state())
            for update in acknowledged:
                cat.apply_remote(update)
            assert (str(cat), cat.doc.get_state()) == before
            assert str(cat) == typed


async def test_a_database_outage_pauses_acknowledgements_and_loses_nothing(
    redis: RedisServer,
) -> None:
    with (
        running_postgres() as postgres,
        cluster(redis, 2, **documents_env(postgres)) as (
            one,
            two,
        ),
    ):
        await redis_state(one, two, connected=True)
        async with one_on_each(one, two) as (ann, bob):
            postgres.stop()
            ann.text.insert(0, "typed while the database was down")
            await ann.flush()
            # Relayed live meanwhile, and not acknowledged.
            await bob.read_until(lambda: str(bob) == "typed while the database was down")

            async def store_failing() -> bool:
                async with httpx.AsyncClient(base_url=one.http_url) as http:
                    body = (await http.get("/ready")).json()
                return bool(body["document_store"] == "failing")

            await eventually(store_failing, within=30)
            assert not ann.saved
            postgres.start()
            await ann.read_until(lambda: ann.saved)
        assert await text_on(two, "p") == "typed while the database was down"


async def test_a_delete_on_one_instance_ends_the_document_on_every_instance(
    postgres: PostgresServer, redis: RedisServer
) -> None:
    with cluster(redis, 2, **documents_env(postgres)) as (one, two):
        await redis_state(one, two, connected=True)
        async with synced_client(two.ws_url("p", two.token("bob")), "bob") as bob:
            await type_text(bob, "doomed")
            service = one.token("project-service", extra={"roles": ["service"]})
            async with httpx.AsyncClient(base_url=one.http_url) as http:
                path = f"/internal/projects/p/documents/{DOCUMENT_ID}"
                headers = {"Authorization": f"Bearer {service}"}
                assert (await http.delete(path, headers=headers)).status_code == 204
                told = await receive(bob.ws)
                assert told["type"] == "yjs_document_deleted"
                assert told["payload"] == {"document_id": DOCUMENT_ID}
                # An edit made against it on the other instance does not bring it back.
                bob.text.insert(0, "x")
                await bob.flush()
                refused = await receive(bob.ws)
                assert refused["type"] == "error"
                assert refused["payload"]["code"] == "document_deleted"
                assert (await http.get(path, headers=headers)).status_code == 404


async def test_instances_writing_different_wire_versions_share_documents(
    postgres: PostgresServer, redis: RedisServer
) -> None:
    env = documents_env(postgres)
    with cluster(redis, 2, ({"WIRE_VERSION": "0"}, {}), **env) as (old, new):
        await redis_state(old, new, connected=True)
        async with one_on_each(old, new) as (ann, bob):
            await type_text(ann, "old")
            await bob.read_until(lambda: str(bob) == "old")
            await type_text(bob, " new")
            await ann.read_until(lambda: str(ann) == "old new")


class Roamer:
    """A tab that stays open through everything: one Doc, reconnecting to whichever instance
    answers, running the sync step each time, typing between outages. It keeps every update
    the server acknowledged."""

    def __init__(self, name: str, servers: list[ServerProcess], seed: int) -> None:
        self.name = name
        self.servers = servers
        self.doc: Doc[Text] = Doc()
        self.rng = random.Random(seed)
        self.acknowledged: list[bytes] = []
        self.connections = 0
        self.stopping = False
        self.client: YjsClient | None = None

    @property
    def acked(self) -> int:
        """Updates acknowledged so far, the current connection's included."""
        return len(self.acknowledged) + (len(self.client.acknowledged) if self.client else 0)

    async def run(self) -> None:
        index = self.rng.randrange(len(self.servers))
        while not self.stopping:
            server = self.servers[index % len(self.servers)]
            index += 1
            try:
                async with synced_client(
                    server.ws_url("chaos", server.token(self.name)), self.name, doc=self.doc
                ) as client:
                    self.connections += 1
                    await self._type(client)
            except (ConnectionClosed, OSError, TimeoutError):
                pass  # the instance, Redis or the database went away: next instance
            except AssertionError as error:
                if "got an error" not in str(error):
                    raise
                # document_unavailable or store_unavailable mid-outage: try again elsewhere
            # Backoff between attempts, as a client's reconnect has (not a synchronisation).
            await anyio.sleep(0.1)

    async def _type(self, client: YjsClient) -> None:
        self.client = client
        try:
            while not self.stopping:
                for _ in range(3):
                    client.random_edit(self.rng)
                await client.flush()
                await client.read_until(lambda: client.saved)
        finally:
            self.client = None
            self.acknowledged += client.acknowledged

    async def settle(self, server: ServerProcess) -> str:
        """Connect once more, sync, and read until everything sent is acknowledged."""
        async with synced_client(
            server.ws_url("chaos", server.token(self.name)), self.name, doc=self.doc
        ) as client:
            await client.flush()
            await client.read_until(lambda: client.saved)
            self.acknowledged += client.acknowledged
            return str(client)


async def test_nothing_acknowledged_is_lost_through_rounds_of_failures() -> None:
    with running_postgres() as postgres, running_redis() as redis:
        env = documents_env(postgres)
        await _rounds(redis, postgres, env)


async def _rounds(redis: RedisServer, postgres: PostgresServer, env: dict[str, str]) -> None:
    with cluster(redis, 3, **env) as servers:
        await redis_state(*servers, connected=True)
        roamers = [Roamer(name, servers, seed) for seed, name in enumerate(("ann", "bob", "cat"))]
        rng = random.Random(11)

        async def acknowledged_more(than: int) -> None:
            async def more() -> bool:
                return sum(r.acked for r in roamers) > than

            await eventually(more, within=60)

        async with anyio.create_task_group() as tasks:
            for roamer in roamers:
                tasks.start_soon(roamer.run)
            for round_index in range(3):
                victim = servers[rng.randrange(len(servers))]
                victim.signal(signal.SIGKILL)
                victim.wait()
                victim.start()
                await redis_state(victim, connected=True)
                redis.pause()
                await redis_state(*servers, connected=False)
                redis.resume()
                await redis_state(*servers, connected=True)
                redis.stop()
                redis.start()
                await redis_state(*servers, connected=True)
                postgres.stop()
                await eventually(lambda: _store_failing(servers), within=30)
                postgres.start()
                await acknowledged_more(sum(r.acked for r in roamers))
                total = sum(r.acked for r in roamers)
                print(f"round {round_index}: {total} acknowledged")
            for roamer in roamers:
                roamer.stopping = True

        # Twice: the second pass brings each roamer what the others settled after it.
        for roamer in roamers:
            await roamer.settle(servers[0])
        texts = {await roamer.settle(servers[0]) for roamer in roamers}
        assert len(texts) == 1
        (final,) = texts
        async with synced_client(servers[1].ws_url("chaos", servers[1].token("dan")), "dan") as dan:
            # Another instance's copy: complete once it has caught up with the store.
            await dan.read_until(lambda: str(dan) == final)
            state = dan.doc.get_state()
            for roamer in roamers:
                for update in roamer.acknowledged:
                    dan.apply_remote(update)
            # Every acknowledged update was in it already.
            assert (str(dan), dan.doc.get_state()) == (final, state)
        # The clients of the killed instances went elsewhere.
        assert sum(roamer.connections for roamer in roamers) > len(roamers)
        assert sum(len(roamer.acknowledged) for roamer in roamers) > 100
    # And the store itself, read by nobody's copy.
    store = PostgresStore(env["DOCUMENT_STORE"])
    await store.start()
    try:
        stored = await store.load(DocumentKey("chaos", DOCUMENT_ID))
    finally:
        await store.stop()
    assert LiveDocument(DocumentKey("chaos", DOCUMENT_ID), TEXT_NAME, stored).text() == final


async def _store_failing(servers: list[ServerProcess]) -> bool:
    async with httpx.AsyncClient() as http:
        for server in servers:
            try:
                body = (await http.get(f"{server.http_url}/ready")).json()
            except httpx.HTTPError:
                continue
            if body["document_store"] == "failing":
                return True
    return False


async def test_a_joiner_on_another_instance_sees_who_is_already_in_the_document(
    postgres: PostgresServer, redis: RedisServer
) -> None:
    """Awareness is announced once, live: an instance that loads the document later asks the
    others for its states, so its joiners see everyone at once (not at the next renewal)."""
    with cluster(redis, 2, **documents_env(postgres)) as (one, two):
        await redis_state(one, two, connected=True)
        async with synced_client(one.ws_url("aw", one.token("jill")), "jill") as jill:
            await jill.set_awareness({"user": {"name": "Jill"}})
            # Stored and announced before anyone is on the second instance, or in its room.
            address = yjs_url(two.port, "aw", DOCUMENT_ID, two.token("pat"))
            async with provider(address) as pat:
                await pat.read_until(
                    lambda: any(
                        s.get("user", {}).get("name") == "Jill" for s in pat.states().values()
                    )
                )
            # The JSON protocol's joiners too, once the document was unloaded there again.
            async with synced_client(two.ws_url("aw", two.token("kim")), "kim") as kim:
                await kim.read_until(
                    lambda: any(
                        s.get("user", {}).get("name") == "Jill"
                        for s in kim.awareness.states.values()
                    )
                )
