"""Every acknowledged append survives kill -9: a child process appends as fast as it can and
reports each acknowledgement; it is killed mid-stream and the store is read back. SQLite's file,
and PostgreSQL's database, where the server itself is killed too."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from app.documents.store import (
    DocumentKey,
    DocumentStore,
    PostgresStore,
    SqliteStore,
    StoreError,
)
from tests.support.postgres_server import PostgresServer
from tests.support.waiting import eventually
from tests.unit.documents.store.appender import PROJECT, WORKERS, key, update

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[4]
ROUNDS = 4
# Acknowledgements to see before the kill, per round.
ACKNOWLEDGED = 1000


async def acknowledged_then_killed(target: str, first: int) -> list[tuple[str, int, int]]:
    """Run the appender until it has acknowledged ACKNOWLEDGED updates, SIGKILL it, and
    return every acknowledgement it wrote, those still in the pipe included."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.unit.documents.store.appender",
        target,
        str(first),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    lines: list[bytes] = []
    try:
        with anyio.fail_after(60):
            while len(lines) < ACKNOWLEDGED:
                line = await process.stdout.readline()
                if not line.endswith(b"\n"):
                    error = (await process.stderr.read()).decode(errors="replace")
                    pytest.fail(f"the appender stopped after {len(lines)} lines:\n{error}")
                lines.append(line)
    finally:
        # Exactly one signal: signalling a child that has died makes Popen reap it, and
        # asyncio's watcher would then never see how it ended.
        process.send_signal(signal.SIGKILL)
        lines += (await process.stdout.read()).splitlines(keepends=True)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    # write(2) of a short line is all or nothing, so a line never ends half-written.
    assert all(line.endswith(b"\n") for line in lines)
    return [
        (document_id.decode(), int(seq), int(number))
        for document_id, seq, number in (line.split() for line in lines)
    ]


async def stored_updates(store: DocumentStore) -> dict[tuple[str, int], bytes]:
    """Every update the appenders' documents hold, by (document, seq)."""
    await store.start()
    try:
        stored: dict[tuple[str, int], bytes] = {}
        for info in await store.documents(PROJECT):
            document = await store.load(DocumentKey(PROJECT, info.document_id))
            assert document is not None
            assert document.snapshot is None
            assert len(document.updates) == document.last_seq == info.last_seq
            for seq, data in enumerate(document.updates, start=1):
                stored[info.document_id, seq] = data
    finally:
        await store.stop()
    return stored


def check(acknowledged: dict[tuple[str, int], int], stored: dict[tuple[str, int], bytes]) -> None:
    missing = [
        (document_id, seq, number)
        for (document_id, seq), number in acknowledged.items()
        if stored.get((document_id, seq)) != update(number)
    ]
    assert missing == [], f"{len(missing)} acknowledged updates lost"
    # What was committed but not acknowledged (killed before its acknowledgement was written,
    # or failed with StoreError after its commit) may be there too; each of those is a whole
    # update, never a torn one, and stored once.
    numbers = [int(data.split()[1]) for data in stored.values()]
    assert all(stored[k] == update(n) for k, n in zip(stored, numbers, strict=True))
    assert len(set(numbers)) == len(numbers)
    assert len(stored) >= len(acknowledged)


async def appender_killed_rounds(target: str, store: Callable[[], DocumentStore]) -> None:
    acknowledged: dict[tuple[str, int], int] = {}
    for round_ in range(ROUNDS):
        acks = await acknowledged_then_killed(target, first=round_ * 10_000_000)
        assert len(acks) >= ACKNOWLEDGED
        for document_id, seq, number in acks:
            assert acknowledged.setdefault((document_id, seq), number) == number, "seq reused"
        check(acknowledged, await stored_updates(store()))


async def test_every_acknowledged_append_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "documents.sqlite3"
    await appender_killed_rounds(str(path), lambda: SqliteStore(path))


async def test_every_acknowledged_postgres_append_survives_kill_9_of_the_appender(
    postgres_dsn: str,
) -> None:
    await appender_killed_rounds(postgres_dsn, lambda: PostgresStore(postgres_dsn))


async def test_every_acknowledged_postgres_append_survives_kill_9_of_the_server(
    own_postgres: PostgresServer,
) -> None:
    """The server is killed (every process, SIGKILL) while 16 coroutines append, and started
    again on its data; the same store carries on. Appends that failed may or may not be there
    (a commit can land just before the connection is lost); every acknowledged one must."""
    dsn = own_postgres.dsn(own_postgres.create_database())
    store = PostgresStore(dsn, timeout=2.0)
    acknowledged: dict[tuple[str, int], int] = {}
    failures = 0
    stopping = False

    async def worker(number: int) -> None:
        nonlocal failures
        while not stopping:
            try:
                seq = await store.append(key(number), update(number))
            except StoreError:
                failures += 1
                await asyncio.sleep(0.01)
            else:
                document_id = key(number).document_id
                assert acknowledged.setdefault((document_id, seq), number) == number, "seq reused"
            number += WORKERS

    async def acknowledged_more(count: int) -> None:
        target = len(acknowledged) + count

        async def enough() -> bool:
            return len(acknowledged) >= target

        await eventually(enough, within=60)

    def failing_since(count: int) -> Callable[[], Awaitable[bool]]:
        async def failing() -> bool:
            return failures > count

        return failing

    await store.start()
    workers = [asyncio.create_task(worker(w)) for w in range(WORKERS)]
    try:
        for _ in range(ROUNDS - 1):
            await acknowledged_more(ACKNOWLEDGED)
            await anyio.to_thread.run_sync(own_postgres.kill)
            await eventually(failing_since(failures))
            await anyio.to_thread.run_sync(own_postgres.start)
        await acknowledged_more(ACKNOWLEDGED)
    finally:
        stopping = True
        await asyncio.gather(*workers)
        await store.stop()

    check(acknowledged, await stored_updates(PostgresStore(dsn)))
