"""SqliteStore group commit: appends/s, batch sizes and append latency with 1, 10 and 100
concurrent appenders of 30-byte updates, under synchronous=FULL and NORMAL.

    python -m bench.documents [--seconds 3] [--appenders 1,10,100]

Each run uses a fresh file in a temporary directory (on the disk that holds the system's
temporary directory; point TMPDIR at the disk to measure). Every appender writes to its own
document, as rooms would; each awaits its append before the next, as a room's edits would.
The figures quoted in docs/documents.md came from this script.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from app.documents.store import DocumentKey, SqliteStore
from app.documents.store.sqlite import Synchronous, _Operation

UPDATE = bytes(range(30))


class CountingStore(SqliteStore):
    """Records the size of every batch the writer committed."""

    def __init__(self, path: Path, synchronous: Synchronous) -> None:
        super().__init__(path, synchronous=synchronous)
        self.batches: list[int] = []

    def _settle(self, batch: list[_Operation], outcomes: list[object] | str) -> None:
        self.batches.append(len(batch))
        super()._settle(batch, outcomes)


@dataclass
class Result:
    synchronous: str
    appenders: int
    appends: int
    seconds: float
    batches: list[int]
    latencies: list[float]

    def row(self) -> str:
        latencies = sorted(self.latencies)
        batches = sorted(self.batches)

        def pick(values: list[float] | list[int], q: float) -> float:
            return values[min(len(values) - 1, int(q * len(values)))]

        return (
            f"| {self.synchronous} | {self.appenders} | {self.appends / self.seconds:,.0f}"
            f" | {statistics.fmean(batches):.1f} / {pick(batches, 0.5):.0f} / {batches[-1]}"
            f" | {pick(latencies, 0.5) * 1000:.2f} | {pick(latencies, 0.99) * 1000:.2f} |"
        )


async def measure(
    directory: Path, synchronous: Synchronous, appenders: int, seconds: float
) -> Result:
    store = CountingStore(directory / f"{synchronous}-{appenders}.sqlite3", synchronous)
    await store.start()
    latencies: list[float] = []
    # Warm up: create the documents, so the run measures appends to existing ones.
    for a in range(appenders):
        await store.append(DocumentKey("bench", f"doc-{a}"), UPDATE)
    store.batches.clear()
    deadline = time.perf_counter() + seconds

    async def appender(key: DocumentKey) -> None:
        while (started := time.perf_counter()) < deadline:
            await store.append(key, UPDATE)
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(appender(DocumentKey("bench", f"doc-{a}")) for a in range(appenders)))
    elapsed = time.perf_counter() - began
    batches = list(store.batches)
    await store.stop()
    return Result(synchronous, appenders, len(latencies), elapsed, batches, latencies)


def fsync_latency(directory: Path, count: int = 200) -> tuple[float, float]:
    """p50 and p99 in ms of write(4 KiB) + fsync on this disk: the floor of a FULL commit."""
    path = directory / "fsync-probe"
    timings = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for i in range(count):
            started = time.perf_counter()
            os.pwrite(fd, b"x" * 4096, (i % 16) * 4096)
            os.fsync(fd)
            timings.append(time.perf_counter() - started)
    finally:
        os.close(fd)
    timings.sort()
    return timings[count // 2] * 1000, timings[int(count * 0.99)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--appenders", default="1,10,100")
    args = parser.parse_args()
    counts = [int(n) for n in args.appenders.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-documents-") as name:
        directory = Path(name)
        p50, p99 = fsync_latency(directory)
        print(f"write + fsync of 4 KiB on this disk: p50 {p50:.2f} ms, p99 {p99:.2f} ms\n")
        print("| synchronous | appenders | appends/s | batch mean / p50 / max | p50 ms | p99 ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for synchronous in ("FULL", "NORMAL"):
            for appenders in counts:
                result = asyncio.run(measure(directory, synchronous, appenders, args.seconds))
                print(result.row(), flush=True)


if __name__ == "__main__":
    main()
