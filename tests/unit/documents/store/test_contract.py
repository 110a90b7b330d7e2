"""What every DocumentStore backend promises, run against each of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.documents.store import (
    DocumentKey,
    DocumentStore,
    MemoryStore,
    PostgresStore,
    SqliteStore,
    StoredDocument,
)

pytestmark = pytest.mark.anyio

KEY = DocumentKey("p1", "main.tex")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DocumentStore]:
    store: DocumentStore
    if request.param == "memory":
        store = MemoryStore()
    elif request.param == "sqlite":
        store = SqliteStore(tmp_path / "documents.sqlite3")
    else:
        # A database of the test's own on the session's server (conftest.py).
        store = PostgresStore(request.getfixturevalue("postgres_dsn"))
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


async def appended(store: DocumentStore, key: DocumentKey, *updates: bytes) -> list[int]:
    return [await store.append(key, update) for update in updates]


async def test_a_missing_document_loads_as_none(store: DocumentStore) -> None:
    assert await store.load(KEY) is None
    assert await store.documents("p1") == []


async def test_appends_come_back_in_order_with_seqs_from_one(store: DocumentStore) -> None:
    updates = [b"u%d" % i for i in range(1, 6)]

    assert await appended(store, KEY, *updates) == [1, 2, 3, 4, 5]

    assert await store.load(KEY) == StoredDocument(None, 0, updates, 5)


async def test_documents_are_independent(store: DocumentStore) -> None:
    other_document = DocumentKey("p1", "other.tex")
    other_project = DocumentKey("p2", "main.tex")

    await appended(store, KEY, b"a1", b"a2")
    await appended(store, other_project, b"c1")
    await appended(store, other_document, b"b1")

    assert await store.load(KEY) == StoredDocument(None, 0, [b"a1", b"a2"], 2)
    assert await store.load(other_document) == StoredDocument(None, 0, [b"b1"], 1)
    assert await store.load(other_project) == StoredDocument(None, 0, [b"c1"], 1)


async def test_compaction_replaces_the_updates_through_its_seq_and_keeps_later_ones(
    store: DocumentStore,
) -> None:
    await appended(store, KEY, b"u1", b"u2", b"u3", b"u4", b"u5")

    await store.compact(KEY, b"s3", 3)

    assert await store.load(KEY) == StoredDocument(b"s3", 3, [b"u4", b"u5"], 5)
    assert await store.append(KEY, b"u6") == 6
    await store.compact(KEY, b"s6", 6)
    assert await store.load(KEY) == StoredDocument(b"s6", 6, [], 6)
    # A snapshot may be replaced by another of the same seq (re-encoded, garbage-collected).
    await store.compact(KEY, b"s6'", 6)
    assert await store.load(KEY) == StoredDocument(b"s6'", 6, [], 6)
    assert await store.append(KEY, b"u7") == 7


async def test_a_compaction_outside_the_documents_range_changes_nothing(
    store: DocumentStore,
) -> None:
    await appended(store, KEY, b"u1", b"u2", b"u3")
    await store.compact(KEY, b"s2", 2)
    before = await store.load(KEY)

    with pytest.raises(ValueError, match="range"):
        await store.compact(KEY, b"s4", 4)  # updates never appended
    with pytest.raises(ValueError, match="range"):
        await store.compact(KEY, b"s1", 1)  # older than the stored snapshot
    with pytest.raises(LookupError):
        await store.compact(DocumentKey("p1", "missing"), b"s1", 1)

    assert await store.load(KEY) == before
    assert await store.load(DocumentKey("p1", "missing")) is None


async def test_empty_updates_and_snapshots_are_refused(store: DocumentStore) -> None:
    with pytest.raises(ValueError, match="empty"):
        await store.append(KEY, b"")
    with pytest.raises(ValueError, match="empty"):
        await store.create(KEY, b"")
    assert await store.load(KEY) is None


async def test_create_seeds_a_snapshot_at_seq_one_and_refuses_an_existing_document(
    store: DocumentStore,
) -> None:
    assert await store.create(KEY, b"seed") is True
    assert await store.load(KEY) == StoredDocument(b"seed", 1, [], 1)

    assert await store.create(KEY, b"other seed") is False
    assert await store.load(KEY) == StoredDocument(b"seed", 1, [], 1)
    assert await store.append(KEY, b"u2") == 2
    assert await store.load(KEY) == StoredDocument(b"seed", 1, [b"u2"], 2)

    appended_first = DocumentKey("p1", "appended.tex")
    await store.append(appended_first, b"u1")
    assert await store.create(appended_first, b"seed") is False
    assert await store.load(appended_first) == StoredDocument(None, 0, [b"u1"], 1)


async def test_delete_forgets_the_document_and_its_numbering(store: DocumentStore) -> None:
    other = DocumentKey("p1", "other.tex")
    await appended(store, KEY, b"u1", b"u2")
    await store.compact(KEY, b"s1", 1)
    await appended(store, other, b"o1")

    assert await store.delete(KEY) is True

    assert await store.load(KEY) is None
    assert [info.document_id for info in await store.documents("p1")] == ["other.tex"]
    assert await store.load(other) == StoredDocument(None, 0, [b"o1"], 1)
    assert await store.delete(KEY) is False
    # Seqs start over: nothing of the deleted document is left to be confused with.
    assert await store.append(KEY, b"again") == 1
    assert await store.load(KEY) == StoredDocument(None, 0, [b"again"], 1)
    assert await store.delete(KEY) is True
    assert await store.create(KEY, b"seed") is True
    assert await store.load(KEY) == StoredDocument(b"seed", 1, [], 1)


async def test_documents_lists_a_projects_documents_with_their_sizes(
    store: DocumentStore,
) -> None:
    await appended(store, DocumentKey("p1", "b.tex"), b"12345", b"123")
    await store.create(DocumentKey("p1", "a.tex"), b"1234567")
    await appended(store, DocumentKey("p2", "c.tex"), b"1")

    listed = await store.documents("p1")

    assert [(i.document_id, i.last_seq, i.stored_bytes) for i in listed] == [
        ("a.tex", 1, 7),
        ("b.tex", 2, 8),
    ]
    # When it was written, as the store's clock says: not compared with this one's, which
    # may step.
    assert all(info.updated_at > 0 for info in listed)
    assert await store.documents("p3") == []

    # Compaction drops the updates it covers, snapshot included in the size.
    await store.compact(DocumentKey("p1", "b.tex"), b"12", 1)
    await appended(store, DocumentKey("p1", "b.tex"), b"1234")
    compacted = {info.document_id: info for info in await store.documents("p1")}["b.tex"]
    assert (compacted.last_seq, compacted.stored_bytes) == (3, len(b"12" + b"123" + b"1234"))
    assert compacted.updated_at >= listed[1].updated_at


async def test_concurrent_appends_get_distinct_seqs_and_all_load_back(
    store: DocumentStore,
) -> None:
    updates = [b"update from coroutine %03d" % i for i in range(200)]

    seqs = await asyncio.gather(*(store.append(KEY, update) for update in updates))

    assert sorted(seqs) == list(range(1, 201))
    document = await store.load(KEY)
    assert document is not None
    assert document.last_seq == 200
    assert len(document.updates) == 200
    assert all(
        document.updates[seq - 1] == update for seq, update in zip(seqs, updates, strict=True)
    )


async def test_since_gives_what_came_after_a_seq(store: DocumentStore) -> None:
    await appended(store, KEY, b"u1", b"u2", b"u3")

    later = await store.since(KEY, 1)

    assert later == StoredDocument(None, 1, [b"u2", b"u3"], 3)
    assert await store.since(KEY, 3) == StoredDocument(None, 3, [], 3)
    assert await store.since(DocumentKey("p1", "missing"), 0) is None


async def test_since_a_compacted_seq_gives_the_snapshot_too(store: DocumentStore) -> None:
    await appended(store, KEY, b"u1", b"u2", b"u3")
    await store.compact(KEY, b"s2", 2)

    assert await store.since(KEY, 1) == StoredDocument(b"s2", 2, [b"u3"], 3)
    assert await store.since(KEY, 2) == StoredDocument(None, 2, [b"u3"], 3)


async def test_heads_are_the_last_seqs_of_the_documents_that_exist(store: DocumentStore) -> None:
    other = DocumentKey("p2", "other.tex")
    await appended(store, KEY, b"u1", b"u2")
    await appended(store, other, b"v1")

    heads = await store.heads([KEY, other, DocumentKey("p1", "missing")])

    assert heads == {KEY: 2, other: 1}


async def test_writes_started_without_awaiting_each_are_stored_in_the_order_they_started(
    store: DocumentStore,
) -> None:
    await appended(store, KEY, b"u1", b"u2", b"u3")

    outcomes = await asyncio.gather(
        store.append(KEY, b"u4"),
        store.compact(KEY, b"s4", 4),
        store.append(KEY, b"u5"),
        store.delete(KEY),
        store.append(KEY, b"again"),
        store.create(KEY, b"seed"),
        store.append(DocumentKey("p1", "other.tex"), b"o1"),
        store.append(KEY, b"again 2"),
    )

    assert outcomes == [4, None, 5, True, 1, False, 1, 2]
    assert await store.load(KEY) == StoredDocument(None, 0, [b"again", b"again 2"], 2)
