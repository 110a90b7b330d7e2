"""SqliteStore beyond the contract: the file, group commit, bounds, failures and threads."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from app.documents.store import (
    DocumentKey,
    SchemaTooNew,
    SqliteStore,
    StoredDocument,
    StoreError,
)
from app.documents.store.sqlite import SCHEMA_VERSION, _Operation
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

Store = TypeVar("Store", bound=SqliteStore)

KEY = DocumentKey("p1", "main.tex")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "documents.sqlite3"


@contextlib.asynccontextmanager
async def running(store: Store) -> AsyncIterator[Store]:
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another process's writer, as the store sees it: the database's write lock, held."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("document-store-")]


async def backlog_reaches(store: SqliteStore, count: int) -> None:
    async def check() -> bool:
        return store.backlog == count

    await eventually(check)


class FillableStore(SqliteStore):
    """A SqliteStore whose disk can be declared full: while `full` is set, the writer caps the
    file at its current size before each batch, so SQLite itself fails the batch with
    SQLITE_FULL part-way through its inserts."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.full = threading.Event()

    def _commit(
        self, connection: sqlite3.Connection, batch: list[_Operation]
    ) -> list[object] | str:
        if self.full.is_set():
            (pages,) = connection.execute("PRAGMA page_count").fetchone()
            connection.execute(f"PRAGMA max_page_count = {pages}")
        else:
            connection.execute("PRAGMA max_page_count = 1073741823")
        return super()._commit(connection, batch)


async def test_everything_survives_a_restart(path: Path) -> None:
    other = DocumentKey("p1", "other.tex")
    async with running(SqliteStore(path)) as store:
        for i in range(1, 6):
            await store.append(KEY, b"u%d" % i)
        await store.compact(KEY, b"s3", 3)
        await store.create(other, b"seed")
        listed = await store.documents("p1")

    async with running(SqliteStore(path)) as store:
        assert await store.load(KEY) == StoredDocument(b"s3", 3, [b"u4", b"u5"], 5)
        assert await store.load(other) == StoredDocument(b"seed", 1, [], 1)
        assert await store.documents("p1") == listed
        assert await store.append(KEY, b"u6") == 6


async def test_the_file_is_in_wal_mode_with_this_releases_schema(path: Path) -> None:
    async with running(SqliteStore(path)) as store:
        await store.append(KEY, b"u1")
        with contextlib.closing(sqlite3.connect(path)) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_a_file_from_a_newer_release_is_refused_untouched(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        connection.commit()

    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}"):
        await SqliteStore(path).start()

    assert store_threads() == []
    with contextlib.closing(sqlite3.connect(path)) as connection:
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)


async def test_a_file_that_cannot_be_opened_is_a_store_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    with pytest.raises(StoreError, match="cannot open"):
        await SqliteStore(not_a_folder / "documents.sqlite3").start()
    assert store_threads() == []


async def test_a_missing_folder_is_made(tmp_path: Path) -> None:
    path = tmp_path / "data" / "documents.sqlite3"
    async with running(SqliteStore(path)) as store:
        assert await store.append(KEY, b"u") == 1
    assert path.exists()


async def test_concurrent_appends_are_committed_together(path: Path) -> None:
    async with running(SqliteStore(path)) as store:
        # The write lock held elsewhere keeps the writer in its first transaction until all
        # 200 appends are queued: then it needs at most one more.
        with locked(path):
            tasks = [asyncio.create_task(store.append(KEY, b"u%d" % i)) for i in range(200)]
            await backlog_reaches(store, 200)
        seqs = await asyncio.gather(*tasks)

        assert sorted(seqs) == list(range(1, 201))
        assert 1 <= store.commits <= 2
        document = await store.load(KEY)
        assert document is not None
        assert document.updates == [b"u%d" % i for i in range(200)]


async def test_without_a_lock_many_appenders_still_share_transactions(path: Path) -> None:
    async with running(SqliteStore(path)) as store:
        await asyncio.gather(*(store.append(KEY, b"u%d" % i) for i in range(1000)))
        assert store.commits < 1000


async def test_stop_commits_what_was_accepted_then_refuses(path: Path) -> None:
    store = SqliteStore(path)
    await store.start()
    appends = [asyncio.create_task(store.append(KEY, b"u%d" % i)) for i in range(100)]
    # Tasks first run in the order they were created: every append is queued before stop.
    await asyncio.create_task(store.stop())
    seqs = [await append for append in appends]

    assert sorted(seqs) == list(range(1, 101))
    assert store_threads() == []
    with pytest.raises(StoreError, match="not running"):
        await store.append(KEY, b"late")
    with pytest.raises(StoreError, match="not running"):
        await store.load(KEY)
    async with running(SqliteStore(path)) as reopened:
        document = await reopened.load(KEY)
        assert document is not None
        assert document.last_seq == 100


async def test_a_locked_database_fails_the_pending_appends_and_the_store_recovers(
    path: Path,
) -> None:
    async with running(SqliteStore(path, busy_timeout=0.05)) as store:
        await store.append(KEY, b"u1")
        with locked(path):
            results = await asyncio.gather(
                *(store.append(KEY, b"lost%d" % i) for i in range(20)), return_exceptions=True
            )
            assert all(isinstance(result, StoreError) for result in results), results
            assert "database is locked" in str(results[0])
            # Reads do not wait for the writer.
            assert await store.load(KEY) == StoredDocument(None, 0, [b"u1"], 1)

        assert await store.append(KEY, b"u2") == 2
        assert await store.load(KEY) == StoredDocument(None, 0, [b"u1", b"u2"], 2)
        assert store.backlog == 0
        assert store.backlog_bytes == 0


async def test_a_full_disk_fails_the_whole_batch_and_the_store_recovers(path: Path) -> None:
    async with running(FillableStore(path)) as store:
        await store.append(KEY, b"u1")
        store.full.set()
        # Big enough to need new pages: the batch fails in the middle of its inserts.
        results = await asyncio.gather(
            *(store.append(KEY, bytes([i]) * 5000) for i in range(10)),
            store.create(DocumentKey("p1", "new.tex"), b"seed"),
            return_exceptions=True,
        )
        assert all(isinstance(result, StoreError) for result in results), results
        assert "full" in str(results[0])
        assert await store.load(KEY) == StoredDocument(None, 0, [b"u1"], 1)
        assert await store.load(DocumentKey("p1", "new.tex")) is None

        store.full.clear()
        assert await store.append(KEY, b"u2") == 2
        assert await store.create(DocumentKey("p1", "new.tex"), b"seed") is True

    async with running(SqliteStore(path)) as reopened:
        assert await reopened.load(KEY) == StoredDocument(None, 0, [b"u1", b"u2"], 2)


async def test_a_refused_operation_does_not_fail_its_batch(path: Path) -> None:
    async with running(SqliteStore(path)) as store:
        await store.append(KEY, b"u1")
        with locked(path):
            tasks = [
                asyncio.create_task(store.append(KEY, b"u2")),
                asyncio.create_task(store.compact(KEY, b"s9", 9)),
                asyncio.create_task(store.append(KEY, b"u3")),
            ]
            await backlog_reaches(store, 3)
        results = await asyncio.gather(*tasks, return_exceptions=True)

        assert results[0] == 2
        assert isinstance(results[1], ValueError)
        assert results[2] == 3
        assert await store.load(KEY) == StoredDocument(None, 0, [b"u1", b"u2", b"u3"], 3)


async def test_the_backlog_is_bounded_by_count(path: Path) -> None:
    async with running(SqliteStore(path, max_backlog=10)) as store:
        with locked(path):
            tasks = [asyncio.create_task(store.append(KEY, b"u%d" % i)) for i in range(10)]
            await backlog_reaches(store, 10)
            with pytest.raises(StoreError, match="store backlog full"):
                await store.append(KEY, b"one too many")
        assert sorted(await asyncio.gather(*tasks)) == list(range(1, 11))
        assert await store.append(KEY, b"u11") == 11


async def test_the_backlog_is_bounded_by_bytes(path: Path) -> None:
    async with running(SqliteStore(path, max_backlog_bytes=100)) as store:
        # An operation alone is accepted whatever its size.
        assert await store.append(KEY, b"x" * 1000) == 1
        with locked(path):
            tasks = [asyncio.create_task(store.append(KEY, b"y" * 40)) for _ in range(2)]
            await backlog_reaches(store, 2)
            with pytest.raises(StoreError, match="store backlog full"):
                await store.append(KEY, b"z" * 21)
            tasks.append(asyncio.create_task(store.append(KEY, b"z" * 20)))
            await backlog_reaches(store, 3)
            assert store.backlog_bytes == 100
        assert sorted(await asyncio.gather(*tasks)) == [2, 3, 4]


async def test_a_cancelled_append_does_not_disturb_the_others(path: Path) -> None:
    async with running(SqliteStore(path)) as store:
        with locked(path):
            tasks = [asyncio.create_task(store.append(KEY, b"u%d" % i)) for i in range(3)]
            await backlog_reaches(store, 3)
            tasks[1].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)

        assert isinstance(results[1], asyncio.CancelledError)
        # Queued before it was cancelled, it was written all the same.
        assert (results[0], results[2]) == (1, 3)
        document = await store.load(KEY)
        assert document is not None
        assert document.last_seq == 3
        assert store.backlog == 0


async def test_threads_are_joined_and_can_start_again(path: Path) -> None:
    store = SqliteStore(path)
    async with running(store):
        await store.append(KEY, b"u1")
        await store.load(KEY)
        assert sorted(t.name.split("_")[0] for t in store_threads()) == [
            "document-store-reader",
            "document-store-writer",
        ]
    assert store_threads() == []
    async with running(store):
        assert await store.append(KEY, b"u2") == 2
    assert store_threads() == []


def test_synchronous_is_full_or_normal(path: Path) -> None:
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        SqliteStore(path, synchronous="OFF")  # type: ignore[arg-type]
