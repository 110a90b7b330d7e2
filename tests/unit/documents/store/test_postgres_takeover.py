"""PostgresStore across instances: a compactor that dies mid-way is taken over."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from app.documents.store import DocumentKey, StoredDocument
from app.documents.store.postgres import PostgresStore
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

KEY = DocumentKey("p1", "main.tex")


async def test_a_compactor_that_dies_mid_way_is_taken_over(postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn)
    await store.start()
    try:
        for update in (b"u1", b"u2", b"u3"):
            await store.append(KEY, update)
        # Another instance's compaction, stopped half-way: it holds the document's row.
        dead = await asyncpg.connect(postgres_dsn)
        await dead.execute("BEGIN")
        await dead.execute(
            "SELECT id FROM yjs_documents WHERE project_id = $1 AND document_id = $2 FOR UPDATE",
            KEY.project_id,
            KEY.document_id,
        )
        await dead.execute(
            "UPDATE yjs_documents SET snapshot = 'half'::bytea, snapshot_seq = 1"
            " WHERE project_id = $1",
            KEY.project_id,
        )
        compaction = asyncio.create_task(store.compact(KEY, b"s3", 3))

        async def waits_for_the_row() -> bool:
            return bool(
                await dead.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            )

        await eventually(waits_for_the_row)
        assert not compaction.done()

        dead.terminate()  # the instance is killed: PostgreSQL ends its transaction

        await asyncio.wait_for(compaction, 10)
        assert await store.load(KEY) == StoredDocument(b"s3", 3, [], 3)
    finally:
        await store.stop()
