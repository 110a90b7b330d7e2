"""The PostgreSQL document store: SqliteStore's log and snapshots in tables that several instances
share, written through one connection per instance that commits whatever is pending together.

Everything runs on the event loop (asyncpg is asyncio-native): a writer task owns the connection
that writes; reads use a few connections of their own, so a load never waits behind a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg

from app.documents.store.base import (
    DocumentInfo,
    DocumentKey,
    SchemaTooNew,
    StoreBusy,
    StoredDocument,
    StoreError,
    check_compaction,
    check_update,
)

logger = logging.getLogger("texflow.documents")

T = TypeVar("T")

# The layout this release reads and writes, in the one row of yjs_store_schema. A release that
# changes the layout bumps it and upgrades older tables at start-up; this one refuses newer ones.
SCHEMA_VERSION = 1

# Prefixed names: the database may be shared with other services, where `documents` is likely
# taken. Ids and seqs are bigint; `updated_at` is the server's clock, the one every instance
# shares. An update row refers to its document (ON DELETE CASCADE): a delete removes the log in
# the same statement, and an append can never leave rows behind for a deleted document.
SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS yjs_store_schema (
        version integer NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS yjs_documents (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        project_id text NOT NULL,
        document_id text NOT NULL,
        snapshot bytea,
        snapshot_seq bigint NOT NULL,
        last_seq bigint NOT NULL,
        stored_bytes bigint NOT NULL,
        updated_at timestamptz NOT NULL,
        UNIQUE (project_id, document_id)
    )
    """,
    # Every append rewrites its document's row: with pages half empty the new version fits
    # beside the old one (a HOT update, no index entry). Measured with 32 typists for 12 s:
    # the table grew from 24 KB to 24 MB for 32 live rows at the default 100, 344 KB at 50.
    # ALTER, not only CREATE: tables made by an earlier start get it too.
    """
    ALTER TABLE yjs_documents SET (fillfactor = 50)
    """,
    """
    CREATE TABLE IF NOT EXISTS yjs_updates (
        document bigint NOT NULL REFERENCES yjs_documents (id) ON DELETE CASCADE,
        seq bigint NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (document, seq)
    )
    """,
)

# Taken (for the transaction) by every instance creating or checking the tables, so that two
# starting at once do not race on CREATE TABLE. An arbitrary constant of this store's.
SCHEMA_LOCK = 0x59_4A_53_01

# A run of appends, to any documents, in one statement and so one transaction: each document's
# row is created or bumped by the number of its updates (`INSERT ... ON CONFLICT DO UPDATE`
# takes the row's lock, so concurrent writers from other instances queue there and every seq is
# handed out once), then the updates are inserted with consecutive seqs in call order. Rows are
# locked in key order, the same in every instance, so two batches never deadlock.
APPEND = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
        WITH ORDINALITY AS b (project_id, document_id, data, n)
), counts AS (
    SELECT project_id, document_id, count(*) AS appended, sum(length(data)) AS bytes
    FROM batch GROUP BY project_id, document_id
), heads AS (
    INSERT INTO yjs_documents AS d
        (project_id, document_id, snapshot_seq, last_seq, stored_bytes, updated_at)
    SELECT project_id, document_id, 0, appended, bytes, now() FROM counts
    ORDER BY project_id, document_id
    ON CONFLICT (project_id, document_id) DO UPDATE SET
        last_seq = d.last_seq + excluded.last_seq,
        stored_bytes = d.stored_bytes + excluded.stored_bytes,
        updated_at = excluded.updated_at
    RETURNING d.id, d.project_id, d.document_id, d.last_seq
), numbered AS (
    SELECT h.id AS document, b.n, b.data,
        h.last_seq - c.appended + row_number() OVER (PARTITION BY h.id ORDER BY b.n) AS seq
    FROM batch b
    JOIN counts c USING (project_id, document_id)
    JOIN heads h USING (project_id, document_id)
), stored AS (
    INSERT INTO yjs_updates (document, seq, data) SELECT document, seq, data FROM numbered
)
SELECT seq FROM numbered ORDER BY n
"""

CREATE = """
INSERT INTO yjs_documents
    (project_id, document_id, snapshot, snapshot_seq, last_seq, stored_bytes, updated_at)
VALUES ($1, $2, $3::bytea, 1, 1, length($3::bytea), now())
ON CONFLICT (project_id, document_id) DO NOTHING
RETURNING id
"""

DELETE = "DELETE FROM yjs_documents WHERE project_id = $1 AND document_id = $2 RETURNING id"

# Compaction is a transaction of its own: lock the row first, so that appends from any instance
# wait for it, and only then read the range and delete (READ COMMITTED: each statement after the
# lock sees every append committed before it).
COMPACT_LOCK = """
SELECT id, snapshot_seq, last_seq FROM yjs_documents
WHERE project_id = $1 AND document_id = $2 FOR UPDATE
"""
COMPACT = """
WITH dropped AS (
    DELETE FROM yjs_updates WHERE document = $1 AND seq <= $2 RETURNING length(data) AS size
)
UPDATE yjs_documents SET
    snapshot = $3::bytea,
    snapshot_seq = $2,
    stored_bytes = stored_bytes - coalesce(length(snapshot), 0) + length($3::bytea)
        - (SELECT coalesce(sum(size), 0) FROM dropped),
    updated_at = now()
WHERE id = $1
"""

# One statement, so one snapshot: the row and the log as of the same commit.
# What came after a seq: the updates after it, or the snapshot and the updates after the
# snapshot when a compaction covered some of them; in one statement, so as of one commit.
SINCE = """
SELECT d.snapshot_seq, d.last_seq,
    CASE WHEN $3 < d.snapshot_seq THEN d.snapshot END AS snapshot,
    ARRAY(
        SELECT u.data FROM yjs_updates u
        WHERE u.document = d.id AND u.seq > greatest(d.snapshot_seq, $3) ORDER BY u.seq
    ) AS updates
FROM yjs_documents d WHERE d.project_id = $1 AND d.document_id = $2
"""
# The last seqs of many documents in one round trip: what catch-up asks every second.
HEADS = """
SELECT d.project_id, d.document_id, d.last_seq
FROM yjs_documents d JOIN unnest($1::text[], $2::text[]) AS k (project_id, document_id)
    ON d.project_id = k.project_id AND d.document_id = k.document_id
"""

# COLLATE "C": by code point, as the other stores sort, whatever the database's collation.
DOCUMENTS = """
SELECT document_id, last_seq, stored_bytes, extract(epoch FROM updated_at)::float8
FROM yjs_documents WHERE project_id = $1 ORDER BY document_id COLLATE "C"
"""

# Operations accepted and not yet answered, at most, as SqliteStore: past either bound, calls
# raise StoreBusy at once.
MAX_BACKLOG = 10_000
MAX_BACKLOG_BYTES = 32 * 1024 * 1024
# One statement carries at most this much: a batch's arrays are sent whole, and its time must
# stay well inside `timeout`.
MAX_BATCH = 1_000
MAX_BATCH_BYTES = 8 * 1024 * 1024

# What a lost server, a refused connection, a timeout or a server-side failure raises.
_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(slots=True, eq=False)
class _Operation:
    """A write waiting for the writer; `size` is what it holds in the backlog."""

    key: DocumentKey
    size: int
    future: asyncio.Future[Any] = field(init=False)
    settled: bool = field(default=False, init=False)


@dataclass(slots=True, eq=False)
class _Append(_Operation):
    data: bytes


@dataclass(slots=True, eq=False)
class _Compact(_Operation):
    snapshot: bytes
    through_seq: int


@dataclass(slots=True, eq=False)
class _Create(_Operation):
    snapshot: bytes


@dataclass(slots=True, eq=False)
class _Delete(_Operation):
    pass


class _Unreachable(Exception):
    """The server could not be used: the reason, safe to log."""


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise ValueError("PostgreSQL text cannot hold a NUL character")
    text.encode()  # UnicodeEncodeError, a ValueError, for a lone surrogate


def _check_key(key: DocumentKey) -> None:
    """Refuse, alone, a key the database would refuse: in a batch it would fail the others."""
    _check_text(key.project_id)
    _check_text(key.document_id)


def redacted(dsn: str) -> str:
    """The DSN without its password, for logs and messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class PostgresStore:
    """DocumentStore in PostgreSQL, shared by every instance that uses the same database, with
    group commit.

    Durable means committed (PostgreSQL's default `synchronous_commit = on`, which the store
    restores for its own sessions if the server turned it off). Bounded as SqliteStore: past
    `max_backlog` operations or `max_backlog_bytes`, calls raise StoreBusy. Connecting and each
    statement are limited to `timeout` seconds; a failure or a timeout closes the connection,
    fails the calls it carried and those waiting behind it with StoreError, and the next call
    connects again. A connection lost while a commit is in flight leaves that commit's outcome
    unknown: its callers get StoreError though it may have been stored.
    """

    def __init__(
        self,
        dsn: str,
        *,
        timeout: float = 5.0,
        read_connections: int = 4,
        max_backlog: int = MAX_BACKLOG,
        max_backlog_bytes: int = MAX_BACKLOG_BYTES,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._dsn = dsn
        self._password = urlsplit(dsn).password
        self.timeout = timeout
        self._max_backlog = max_backlog
        self._max_backlog_bytes = max_backlog_bytes
        self._running = False
        self._pending: deque[_Operation] = deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None
        self._readers: list[asyncpg.Connection] = []
        self._reader_slots = asyncio.Semaphore(read_connections)
        self._backlog = 0
        self._backlog_bytes = 0
        self._commits = 0
        self._failing = False

    def __repr__(self) -> str:
        return f"PostgresStore({redacted(self._dsn)!r})"

    @property
    def commits(self) -> int:
        """Write statements committed by the writer so far (an append batch is one)."""
        return self._commits

    @property
    def backlog(self) -> int:
        """Operations accepted whose callers have not been answered yet."""
        return self._backlog

    async def start(self) -> None:
        """Connect and create the tables if needed; StoreError if the server cannot be used,
        SchemaTooNew if a newer release laid them out."""
        if self._running:
            raise RuntimeError("the document store is already running")
        try:
            connection = await self._connect()
            try:
                async with asyncio.timeout(self.timeout):
                    await self._prepare_schema(connection)
            except BaseException:
                connection.terminate()
                raise
        except _FAILURES as exc:
            raise StoreError(f"cannot open the document store: {self._describe(exc)}") from exc
        self._connection = connection
        self._running = True
        self._writer = asyncio.create_task(self._write_loop(), name="document-store-writer")

    async def stop(self) -> None:
        """Write (or fail, within the timeouts) everything accepted, then close every
        connection."""
        if not self._running:
            return
        self._running = False
        self._wake.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        connections = [self._connection, *self._readers] if self._connection else self._readers
        self._connection = None
        self._readers = []
        for connection in connections:
            # close() aborts the connection itself when the server does not answer in time.
            with contextlib.suppress(*_FAILURES):
                await connection.close(timeout=self.timeout)

    # Reads.

    async def load(self, key: DocumentKey) -> StoredDocument | None:
        # Everything after seq -1: the snapshot, then the whole log.
        return await self.since(key, -1)

    async def documents(self, project_id: str) -> list[DocumentInfo]:
        _check_text(project_id)

        async def read(connection: asyncpg.Connection) -> list[DocumentInfo]:
            rows = await connection.fetch(DOCUMENTS, project_id)
            return [DocumentInfo(*row) for row in rows]

        return await self._read(read)

    async def since(self, key: DocumentKey, seq: int) -> StoredDocument | None:
        _check_key(key)

        async def read(connection: asyncpg.Connection) -> StoredDocument | None:
            row = await connection.fetchrow(SINCE, key.project_id, key.document_id, seq)
            if row is None:
                return None
            snapshot_seq, last_seq, snapshot, updates = row
            if snapshot is None:
                return StoredDocument(None, max(seq, snapshot_seq), list(updates), last_seq)
            return StoredDocument(snapshot, snapshot_seq, list(updates), last_seq)

        return await self._read(read)

    async def heads(self, keys: list[DocumentKey]) -> dict[DocumentKey, int]:
        for key in keys:
            _check_key(key)

        async def read(connection: asyncpg.Connection) -> dict[DocumentKey, int]:
            rows = await connection.fetch(
                HEADS, [key.project_id for key in keys], [key.document_id for key in keys]
            )
            return {DocumentKey(row[0], row[1]): row[2] for row in rows}

        return await self._read(read)

    async def _read(self, read: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if not self._running:
            raise StoreError("the document store is not running")
        async with self._reader_slots:
            connection: asyncpg.Connection | None = None
            try:
                async with asyncio.timeout(self.timeout):
                    connection = await self._reader()
                    result = await read(connection)
            except _FAILURES as exc:
                if connection is not None:
                    connection.terminate()
                raise StoreError(f"document store read failed: {self._describe(exc)}") from exc
            except BaseException:
                if connection is not None:
                    connection.terminate()  # cancelled mid-query: its state is unknown
                raise
            if self._running:
                self._readers.append(connection)
            else:
                connection.terminate()
            return result

    async def _reader(self) -> asyncpg.Connection:
        while self._readers:
            connection = self._readers.pop()
            if not connection.is_closed():
                return connection
        return await self._connect()

    # Writes.

    async def append(self, key: DocumentKey, update: bytes) -> int:
        check_update(update)
        seq: int = await self._submit(_Append(key, len(update), update))
        return seq

    async def compact(self, key: DocumentKey, snapshot: bytes, through_seq: int) -> None:
        check_update(snapshot, "snapshot")
        await self._submit(_Compact(key, len(snapshot), snapshot, through_seq))

    async def create(self, key: DocumentKey, snapshot: bytes) -> bool:
        check_update(snapshot, "snapshot")
        created: bool = await self._submit(_Create(key, len(snapshot), snapshot))
        return created

    async def delete(self, key: DocumentKey) -> bool:
        deleted: bool = await self._submit(_Delete(key, 0))
        return deleted

    async def _submit(self, operation: _Operation) -> Any:
        _check_key(operation.key)
        if not self._running:
            raise StoreError("the document store is not running")
        if self._backlog and (
            self._backlog >= self._max_backlog
            or self._backlog_bytes + operation.size > self._max_backlog_bytes
        ):
            raise StoreBusy("store backlog full")
        self._backlog += 1
        self._backlog_bytes += operation.size
        operation.future = asyncio.get_running_loop().create_future()
        self._pending.append(operation)
        self._wake.set()
        return await operation.future

    def _settle(self, operation: _Operation, outcome: object) -> None:
        if operation.settled:
            return
        operation.settled = True
        self._backlog -= 1
        self._backlog_bytes -= operation.size
        if operation.future.done():  # its caller was cancelled
            return
        if isinstance(outcome, BaseException):
            operation.future.set_exception(outcome)
        else:
            operation.future.set_result(outcome)

    # The writer task.

    async def _write_loop(self) -> None:
        """Write batches until stopped; what was accepted before stop() is written first."""
        while True:
            if not self._pending:
                if not self._running:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take_batch()
            try:
                await self._write(batch)
            except Exception:
                logger.exception(
                    "document store writer failed", extra={"event": "document_store_error"}
                )
                error = StoreError("document store write failed: internal error")
                for operation in batch:
                    self._settle(operation, error)

    def _take_batch(self) -> list[_Operation]:
        batch: list[_Operation] = []
        size = 0
        while self._pending and len(batch) < MAX_BATCH:
            operation = self._pending[0]
            if batch and size + operation.size > MAX_BATCH_BYTES:
                break
            batch.append(self._pending.popleft())
            size += operation.size
        return batch

    async def _write(self, batch: list[_Operation]) -> None:
        """Write a batch in order: each run of appends in one statement, any other operation
        in its own. If the server cannot be used, this batch's unwritten operations and every
        one waiting behind them fail at once, rather than each waiting out its own timeout."""
        position = 0
        while position < len(batch):
            end = position
            if isinstance(batch[position], _Append):
                while end < len(batch) and isinstance(batch[end], _Append):
                    end += 1
            else:
                end = position + 1
            group = batch[position:end]
            try:
                outcomes = await self._execute(group)
            except _Unreachable as exc:
                error = StoreError(f"document store write failed: {exc}")
                failed = [*batch[position:], *self._pending]
                self._pending.clear()
                for operation in failed:
                    self._settle(operation, error)
                self._note_failure(str(exc))
                return
            self._commits += 1
            self._note_recovery()
            for operation, outcome in zip(group, outcomes, strict=True):
                self._settle(operation, outcome)
            position = end

    async def _execute(self, group: list[_Operation]) -> list[object]:
        """One outcome per operation (a refused one's ValueError or LookupError among them);
        _Unreachable if the server could not be used."""
        connection: asyncpg.Connection | None = self._connection
        try:
            async with asyncio.timeout(self.timeout):
                if connection is None or connection.is_closed():
                    self._connection = None
                    connection = self._connection = await self._connect()
                first = group[0]
                if isinstance(first, _Append):
                    return await self._append(connection, group)
                return [await self._single(connection, first)]
        except _FAILURES as exc:
            if connection is not None:
                connection.terminate()
            self._connection = None
            raise _Unreachable(self._describe(exc)) from exc
        except BaseException:
            # Whatever it was, the connection may be mid-transaction: never reuse it.
            if connection is not None:
                connection.terminate()
            self._connection = None
            raise

    @staticmethod
    async def _append(connection: asyncpg.Connection, group: list[_Operation]) -> list[object]:
        appends = [operation for operation in group if isinstance(operation, _Append)]
        rows = await connection.fetch(
            APPEND,
            [operation.key.project_id for operation in appends],
            [operation.key.document_id for operation in appends],
            [operation.data for operation in appends],
        )
        return [row[0] for row in rows]

    @staticmethod
    async def _single(connection: asyncpg.Connection, operation: _Operation) -> object:
        key = operation.key
        if isinstance(operation, _Create):
            created = await connection.fetchval(
                CREATE, key.project_id, key.document_id, operation.snapshot
            )
            return created is not None
        if isinstance(operation, _Delete):
            return await connection.fetchval(DELETE, key.project_id, key.document_id) is not None
        assert isinstance(operation, _Compact)
        await connection.execute("BEGIN")
        row = await connection.fetchrow(COMPACT_LOCK, key.project_id, key.document_id)
        try:
            if row is None:
                raise LookupError("no such document")
            document, snapshot_seq, last_seq = row
            check_compaction(snapshot_seq, last_seq, operation.through_seq)
        except (ValueError, LookupError) as exc:
            await connection.execute("ROLLBACK")
            return exc
        await connection.execute(COMPACT, document, operation.through_seq, operation.snapshot)
        await connection.execute("COMMIT")
        return None

    # Connections.

    async def _connect(self) -> asyncpg.Connection:
        connection = await asyncpg.connect(
            self._dsn,
            timeout=self.timeout,
            server_settings={"application_name": "texflow-websocket"},
        )
        try:
            async with asyncio.timeout(self.timeout):
                # "Durable" is a commit that waited for its WAL: if the server or the database
                # turned that off, turn it back on for this session.
                if await connection.fetchval("SHOW synchronous_commit") == "off":
                    await connection.execute("SET synchronous_commit = on")
        except BaseException:
            connection.terminate()
            raise
        return connection

    async def _prepare_schema(self, connection: asyncpg.Connection) -> None:
        # BEGIN and COMMIT by hand, here and in compaction: a failure terminates the connection
        # (the server rolls back), where a transaction block would await a ROLLBACK that a
        # server which stopped answering never answers.
        await connection.execute("BEGIN")
        await connection.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        version = await self._schema_version(connection)
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the document store at {redacted(self._dsn)} has schema version {version};"
                f" this release knows up to {SCHEMA_VERSION}: run a newer release, or use"
                " another database"
            )
        for statement in SCHEMA:
            await connection.execute(statement)
        if version is None:
            await connection.execute(
                "INSERT INTO yjs_store_schema (version) VALUES ($1)", SCHEMA_VERSION
            )
        await connection.execute("COMMIT")
        if await connection.fetchval("SHOW fsync") == "off":
            logger.warning(
                "the document store's server runs with fsync off: a crash of it or of its"
                " machine may lose acknowledged edits",
                extra={"event": "document_store_not_durable"},
            )

    @staticmethod
    async def _schema_version(connection: asyncpg.Connection) -> int | None:
        if await connection.fetchval("SELECT to_regclass('yjs_store_schema')") is None:
            return None
        version: int | None = await connection.fetchval("SELECT max(version) FROM yjs_store_schema")
        return version

    def _describe(self, exc: BaseException) -> str:
        """The error's message, never the password."""
        if isinstance(exc, TimeoutError):
            message = f"no answer within {self.timeout:g}s"
        else:
            message = str(exc) or type(exc).__name__
        if self._password:
            message = message.replace(self._password, "***")
        return message

    def _note_failure(self, reason: str) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "document store cannot write; appends fail until it can",
                extra={"event": "document_store_failing", "error": reason},
            )

    def _note_recovery(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning(
                "document store writes again", extra={"event": "document_store_recovered"}
            )
