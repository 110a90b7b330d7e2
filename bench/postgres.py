"""PostgresStore: group commit (one writer connection, every pending append in one statement)
against a pool with one transaction per append; appends/s and latency with 1, 10 and 100
concurrent appenders of 30-byte updates.

    python -m bench.postgres [--seconds 5] [--runs 3] [--appenders 1,10,100]

It starts the test suite's own PostgreSQL server (tests/support/postgres_server.py: fsync and
synchronous_commit on) in a temporary directory, and uses a fresh database for each run. Every
appender writes to its own document and awaits each append before the next, as
bench/documents.py does for SqliteStore. The figures in docs/documents.md came from this script.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from app.documents.store import DocumentKey, PostgresStore
from app.documents.store.postgres import APPEND
from bench.documents import fsync_latency
from tests.support.postgres_server import PostgresServer, running_postgres

UPDATE = bytes(range(30))


@dataclass
class Result:
    mode: str
    appenders: int
    appends: int
    seconds: float
    latencies: list[float]
    commits: int

    @property
    def rate(self) -> float:
        return self.appends / self.seconds

    def pick(self, q: float) -> float:
        values = sorted(self.latencies)
        return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def appending(
    append: Callable[[DocumentKey], Awaitable[object]], appenders: int, seconds: float
) -> tuple[int, float, list[float]]:
    for a in range(appenders):  # the documents exist: the run measures appends to them
        await append(DocumentKey("bench", f"doc-{a}"))
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def appender(key: DocumentKey) -> None:
        while (started := time.perf_counter()) < deadline:
            await append(key)
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(appender(DocumentKey("bench", f"doc-{a}")) for a in range(appenders)))
    return len(latencies), time.perf_counter() - began, latencies


async def group_commit(dsn: str, appenders: int, seconds: float) -> Result:
    store = PostgresStore(dsn)
    await store.start()
    try:

        async def append(key: DocumentKey) -> object:
            return await store.append(key, UPDATE)

        before = store.commits
        count, elapsed, latencies = await appending(append, appenders, seconds)
        return Result("group commit", appenders, count, elapsed, latencies, store.commits - before)
    finally:
        await store.stop()


async def pooled(dsn: str, appenders: int, seconds: float, connections: int) -> Result:
    """One transaction per append, on `connections` connections: appender i uses connection
    i % connections, taking turns in order (asyncio.Lock is first come, first served), with no
    pool's own round trips, so that it measures the transactions alone."""
    store = PostgresStore(dsn)  # the schema is the store's: let it create the tables
    await store.start()
    await store.stop()
    opened = [await asyncpg.connect(dsn) for _ in range(connections)]
    locks = [asyncio.Lock() for _ in opened]
    try:

        async def append(key: DocumentKey) -> object:
            index = int(key.document_id.removeprefix("doc-")) % connections
            async with locks[index]:
                return await opened[index].fetch(
                    APPEND, [key.project_id], [key.document_id], [UPDATE]
                )

        count, elapsed, latencies = await appending(append, appenders, seconds)
        return Result(f"pool of {connections}", appenders, count, elapsed, latencies, count)
    finally:
        for connection in opened:
            await connection.close()


def run(server: PostgresServer, mode: str, appenders: int, seconds: float) -> Result:
    dsn = server.dsn(server.create_database())
    if mode == "group":
        return asyncio.run(group_commit(dsn, appenders, seconds))
    return asyncio.run(pooled(dsn, appenders, seconds, int(mode.removeprefix("pool"))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--appenders", default="1,10,100")
    args = parser.parse_args()
    counts = [int(n) for n in args.appenders.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-postgres-") as name:
        p50, p99 = fsync_latency(Path(name))
    print(f"write + fsync of 4 KiB on this disk: p50 {p50:.2f} ms, p99 {p99:.2f} ms\n")
    print(
        "| mode | appenders | appends/s (median, range) | appends per commit"
        " | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    )
    with running_postgres() as server:
        run(server, "group", 10, 2.0)  # warm up: the new cluster's first checkpoints, caches
        for appenders in counts:
            pools = sorted({min(appenders, 10), appenders})
            modes = ["group", *(f"pool{n}" for n in pools)]
            # The modes take turns, so that the shared machine's load weighs on each alike.
            results: dict[str, list[Result]] = {mode: [] for mode in modes}
            for _ in range(args.runs):
                for mode in modes:
                    results[mode].append(run(server, mode, appenders, args.seconds))
            for mode in modes:
                rates = sorted(r.rate for r in results[mode])
                middle = sorted(results[mode], key=lambda r: r.rate)[len(rates) // 2]
                per_commit = statistics.fmean(r.appends / max(1, r.commits) for r in results[mode])
                print(
                    f"| {middle.mode} | {appenders} | {statistics.median(rates):,.0f}"
                    f" ({rates[0]:,.0f}–{rates[-1]:,.0f}) | {per_commit:.1f}"
                    f" | {middle.pick(0.5):.2f} | {middle.pick(0.99):.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
