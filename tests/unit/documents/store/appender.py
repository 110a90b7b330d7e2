"""The child process of the kill -9 tests: appends numbered updates to a store from several
coroutines as fast as it can, and writes `document_id seq number` to stdout as soon as each
append returns, until it is killed.

    python -m tests.unit.documents.store.appender PATH|POSTGRESQL_URL FIRST_NUMBER
"""

from __future__ import annotations

import asyncio
import os
import sys

from app.documents.store import DocumentKey, DocumentStore, PostgresStore, SqliteStore

PROJECT = "durability"
DOCUMENTS = 3
WORKERS = 16


def update(number: int) -> bytes:
    """The update numbered `number`: 30 bytes that say which one it is."""
    return b"update %010d " % number + bytes((number + i) % 256 for i in range(12))


def key(number: int) -> DocumentKey:
    return DocumentKey(PROJECT, f"doc-{number % DOCUMENTS}")


def open_store(target: str) -> DocumentStore:
    """A SqliteStore on a file, or a PostgresStore on a postgresql:// URL."""
    if target.startswith("postgresql://"):
        return PostgresStore(target)
    return SqliteStore(target)


async def append_forever(target: str, first: int) -> None:
    store = open_store(target)
    await store.start()

    async def worker(number: int) -> None:
        while True:
            seq = await store.append(key(number), update(number))
            # One write(2) per line, unbuffered: a line is out before the next append begins,
            # and lines shorter than PIPE_BUF never interleave.
            os.write(1, b"%s %d %d\n" % (key(number).document_id.encode(), seq, number))
            number += WORKERS

    await asyncio.gather(*(worker(first + w) for w in range(WORKERS)))


if __name__ == "__main__":
    asyncio.run(append_forever(sys.argv[1], int(sys.argv[2])))
