"""PostgresStore beyond the contract: several instances on one database, the schema, bounds,
and a server that stops, freezes or comes back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest

from app.container import store_for
from app.documents.store import (
    DocumentKey,
    PostgresStore,
    SchemaTooNew,
    StoreBusy,
    StoredDocument,
    StoreError,
)
from app.documents.store.postgres import SCHEMA_VERSION
from app.settings import Settings
from tests.support.postgres_server import PostgresServer
from tests.support.server import free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

KEY = DocumentKey("p1", "main.tex")
# Short, so that the tests of a server that does not answer take seconds.
TIMEOUT = 1.0


@contextlib.asynccontextmanager
async def running(store: PostgresStore) -> AsyncIterator[PostgresStore]:
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


async def fetch(dsn: str, query: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetch(query)
    finally:
        await connection.close()


# Several instances


async def test_two_instances_appending_to_one_document_get_unique_gap_free_seqs(
    postgres_dsn: str,
) -> None:
    async with (
        running(PostgresStore(postgres_dsn)) as one,
        running(PostgresStore(postgres_dsn)) as two,
    ):

        async def appender(store: PostgresStore, name: str) -> list[tuple[int, bytes]]:
            acknowledged = []
            for i in range(60):
                update = f"{name} {i}".encode()
                acknowledged.append((await store.append(KEY, update), update))
            return acknowledged

        results = await asyncio.gather(
            *(appender(store, f"{name}{w}") for name, store in [("one", one), ("two", two)]
              for w in range(10))
        )  # fmt: skip

        acknowledged = dict(pair for result in results for pair in result)
        assert sorted(acknowledged) == list(range(1, 1201))
        # The instances really raced: their seqs interleave, neither took one block.
        ones = sorted(seq for result in results[:10] for seq, _ in result)
        assert ones != list(range(ones[0], ones[0] + len(ones)))
        for store in (one, two):
            document = await store.load(KEY)
            assert document == StoredDocument(
                None, 0, [acknowledged[seq] for seq in range(1, 1201)], 1200
            )
        # Each appender's own updates are stored in the order it made them.
        for result in results:
            seqs = [seq for seq, _ in result]
            assert seqs == sorted(seqs)


async def test_compaction_racing_appends_from_another_instance_loses_nothing(
    postgres_dsn: str,
) -> None:
    async with (
        running(PostgresStore(postgres_dsn)) as appending,
        running(PostgresStore(postgres_dsn)) as compacting,
    ):
        await appending.append(KEY, b"first")
        acknowledged: dict[int, bytes] = {}
        done = asyncio.Event()

        async def appender(name: str) -> None:
            for i in range(150):
                update = f"{name} {i}".encode()
                acknowledged[await appending.append(KEY, update)] = update
            done.set()

        compactions = 0

        async def compactor() -> None:
            nonlocal compactions
            while not done.is_set():
                document = await compacting.load(KEY)
                assert document is not None
                # A snapshot that says which seq it covers; the later updates must survive.
                await compacting.compact(KEY, b"snapshot %d" % document.last_seq, document.last_seq)
                compactions += 1

        await asyncio.gather(*(appender(f"a{w}") for w in range(8)), compactor())

        document = await compacting.load(KEY)
        assert document is not None
        assert compactions > 3
        assert document.last_seq == 1 + 8 * 150
        assert document.snapshot == b"snapshot %d" % document.snapshot_seq
        assert document.updates == [
            acknowledged[seq] for seq in range(document.snapshot_seq + 1, document.last_seq + 1)
        ]
        (info,) = await appending.documents("p1")
        assert info.stored_bytes == len(document.snapshot) + sum(map(len, document.updates))
        # Nothing below the snapshot was left behind in the table either.
        rows = await fetch(postgres_dsn, "SELECT min(seq) AS low, count(*) AS n FROM yjs_updates")
        assert rows[0]["n"] == len(document.updates)
        if document.updates:
            assert rows[0]["low"] == document.snapshot_seq + 1


async def test_an_append_to_a_document_another_instance_deletes_starts_it_over(
    postgres_dsn: str,
) -> None:
    async with (
        running(PostgresStore(postgres_dsn)) as one,
        running(PostgresStore(postgres_dsn)) as two,
    ):
        await one.append(KEY, b"u1")
        await one.compact(KEY, b"s1", 1)

        assert await two.delete(KEY) is True
        assert await one.append(KEY, b"again") == 1

        assert await two.load(KEY) == StoredDocument(None, 0, [b"again"], 1)
        rows = await fetch(postgres_dsn, "SELECT count(*) AS n FROM yjs_updates")
        assert rows[0]["n"] == 1


# Batching, bounds and keys


async def test_concurrent_appends_share_statements_and_keep_each_documents_order(
    postgres_dsn: str,
) -> None:
    async with running(PostgresStore(postgres_dsn)) as store:
        before = store.commits
        keys = [DocumentKey("p1", f"doc-{i % 7}") for i in range(300)]

        seqs = await asyncio.gather(*(store.append(key, b"u%d" % i) for i, key in enumerate(keys)))

        for document in range(7):
            mine = [seq for key, seq in zip(keys, seqs, strict=True) if key == keys[document]]
            assert mine == list(range(1, len(mine) + 1))
        assert store.commits - before < 30


async def test_a_key_postgresql_cannot_hold_is_refused_alone(postgres_dsn: str) -> None:
    async with running(PostgresStore(postgres_dsn)) as store:
        outcomes = await asyncio.gather(
            store.append(KEY, b"u1"),
            store.append(DocumentKey("p1", "nul\x00.tex"), b"u1"),
            store.append(DocumentKey("p1", "surrogate\ud800.tex"), b"u1"),
            store.append(KEY, b"u2"),
            return_exceptions=True,
        )

        assert outcomes[0] == 1
        assert outcomes[3] == 2
        assert isinstance(outcomes[1], ValueError)
        assert isinstance(outcomes[2], ValueError)
        with pytest.raises(ValueError, match="NUL"):
            await store.load(DocumentKey("p1", "nul\x00.tex"))


async def test_a_full_backlog_refuses_at_once(own_postgres: PostgresServer) -> None:
    dsn = own_postgres.dsn()
    async with running(PostgresStore(dsn, timeout=TIMEOUT, max_backlog=5)) as store:
        await store.append(KEY, b"u1")
        own_postgres.freeze()
        try:
            waiting = [asyncio.ensure_future(store.append(KEY, b"u")) for _ in range(5)]

            async def full() -> bool:
                return store.backlog == 5

            await eventually(full)
            with pytest.raises(StoreBusy, match="store backlog full"):
                await store.append(KEY, b"one too many")
            # The frozen server fails them all, within the timeout.
            outcomes = await asyncio.gather(*waiting, return_exceptions=True)
            assert all(isinstance(outcome, StoreError) for outcome in outcomes)
        finally:
            own_postgres.thaw()
        assert store.backlog == 0
        seq = await store.append(KEY, b"u2")
        # What the server had received before it froze may have been committed once it
        # thawed, though its callers were told it failed: it is there whole, or not at all.
        document = await store.load(KEY)
        assert document is not None
        middle = document.updates[1:-1]
        assert document.updates[0] == b"u1"
        assert set(middle) <= {b"u"}
        assert len(middle) <= 5
        assert document.updates[-1] == b"u2"
        assert document.last_seq == seq


# Schema


async def test_the_schema_is_created_once_and_stamped(postgres_dsn: str) -> None:
    # Several instances starting at once on an empty database: one creates, the others wait.
    stores = [PostgresStore(postgres_dsn) for _ in range(4)]
    await asyncio.gather(*(store.start() for store in stores))
    for store in stores:
        await store.stop()

    rows = await fetch(postgres_dsn, "SELECT version FROM yjs_store_schema")
    assert [row["version"] for row in rows] == [SCHEMA_VERSION]


async def test_a_newer_schema_is_refused_and_left_alone(postgres_dsn: str) -> None:
    async with running(PostgresStore(postgres_dsn)) as store:
        await store.append(KEY, b"u1")
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute("UPDATE yjs_store_schema SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await connection.close()

    with pytest.raises(SchemaTooNew, match=rf"schema version {SCHEMA_VERSION + 1}.* up to 1"):
        await PostgresStore(postgres_dsn).start()

    rows = await fetch(postgres_dsn, "SELECT version FROM yjs_store_schema")
    assert [row["version"] for row in rows] == [SCHEMA_VERSION + 1]


async def test_its_sessions_commit_durably_even_if_the_database_says_otherwise(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    database = postgres_dsn.rsplit("/", 1)[1]
    postgres_server.execute(f"ALTER DATABASE {database} SET synchronous_commit = off")
    store = PostgresStore(postgres_dsn)

    connection = await store._connect()
    try:
        assert await connection.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await connection.close()


# Failures


async def test_a_server_that_cannot_be_reached_fails_start_without_the_password() -> None:
    dsn = f"postgresql://texflow:the-password@127.0.0.1:{free_port()}/texflow"
    store = PostgresStore(dsn, timeout=TIMEOUT)

    with anyio.fail_after(TIMEOUT * 3), pytest.raises(StoreError) as refused:
        await store.start()

    assert "the-password" not in str(refused.value)
    assert "the-password" not in repr(store)
    with pytest.raises(StoreError, match="not running"):
        await store.append(KEY, b"u1")


async def test_a_stopped_server_fails_calls_at_once_and_the_store_recovers_when_it_is_back(
    own_postgres: PostgresServer,
) -> None:
    async with running(PostgresStore(own_postgres.dsn(), timeout=TIMEOUT)) as store:
        assert await store.append(KEY, b"u1") == 1
        await anyio.to_thread.run_sync(own_postgres.stop)

        started = time.monotonic()
        with pytest.raises(StoreError, match="document store write failed"):
            await store.append(KEY, b"lost")
        with pytest.raises(StoreError, match="document store read failed"):
            await store.load(KEY)
        assert time.monotonic() - started < TIMEOUT * 3

        await anyio.to_thread.run_sync(own_postgres.start)

        # The same instance, never restarted: it connects again on the next call.
        assert await store.append(KEY, b"u2") == 2
        assert await store.load(KEY) == StoredDocument(None, 0, [b"u1", b"u2"], 2)


async def test_a_frozen_server_fails_calls_within_the_timeout_and_the_store_recovers(
    own_postgres: PostgresServer,
) -> None:
    async with running(PostgresStore(own_postgres.dsn(), timeout=TIMEOUT)) as store:
        assert await store.append(KEY, b"u1") == 1
        assert await store.load(KEY) is not None  # a reader connection is open too
        own_postgres.freeze()
        try:
            started = time.monotonic()
            outcomes = await asyncio.gather(
                store.append(KEY, b"lost 1"),
                store.load(KEY),
                store.append(KEY, b"lost 2"),
                return_exceptions=True,
            )
            elapsed = time.monotonic() - started
        finally:
            own_postgres.thaw()

        assert all(isinstance(outcome, StoreError) for outcome in outcomes), outcomes
        assert "no answer within" in str(outcomes[0])
        assert TIMEOUT * 0.9 < elapsed < TIMEOUT * 3
        # The frozen connections were dropped; new ones work. What the server had received
        # before it froze may have been committed once it thawed: seqs never repeat.
        seq = await store.append(KEY, b"u2")
        document = await store.load(KEY)
        assert document is not None
        assert document.last_seq == seq
        assert document.updates[-1] == b"u2"
        assert document.updates[0] == b"u1"


async def test_stop_writes_everything_accepted_and_later_calls_fail(postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn)
    await store.start()
    waiting = [asyncio.ensure_future(store.append(KEY, b"u%d" % i)) for i in range(1, 51)]
    await asyncio.sleep(0)

    await store.stop()

    assert [future.result() for future in waiting] == list(range(1, 51))
    with pytest.raises(StoreError, match="not running"):
        await store.append(KEY, b"late")
    with pytest.raises(StoreError, match="not running"):
        await store.load(KEY)
    async with running(PostgresStore(postgres_dsn)) as again:
        document = await again.load(KEY)
        assert document is not None
        assert document.last_seq == 50


def test_the_container_builds_it_for_a_postgresql_url() -> None:
    settings = Settings.from_env({"DOCUMENT_STORE": "postgres://texflow:pw-123@db:5432/texflow"})

    store = store_for(settings)

    assert isinstance(store, PostgresStore)
    assert repr(store) == "PostgresStore('postgres://texflow:***@db:5432/texflow')"
