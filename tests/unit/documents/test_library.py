"""DocumentLibrary: one load for concurrent users, unload after the grace period once stored,
failed loads refused and never stored, the residency limit."""

from __future__ import annotations

import asyncio

import pytest
from pycrdt import Doc, Text

from app.documents.library import DocumentLibrary
from app.documents.store.base import DocumentKey
from app.documents.writer import DocumentWriter
from app.errors import Refusal
from app.metrics import Metrics
from tests.unit.documents.fakes import FlakyStore
from tests.unit.documents.test_writer import typing, until

pytestmark = pytest.mark.anyio

KEY = DocumentKey("p1", "main.tex")


def library_for(
    store: FlakyStore, *, grace: float = 0.0, max_resident: int = 10
) -> DocumentLibrary:
    metrics = Metrics()
    writer = DocumentWriter(store, metrics, max_pending_bytes=1 << 20, compact_every=1000)
    return DocumentLibrary(
        store, writer, metrics, text_name="content", grace=grace, max_resident=max_resident
    )


async def test_concurrent_first_users_share_one_load() -> None:
    store = FlakyStore()
    library = library_for(store)
    store.release_loads.clear()
    users = [asyncio.create_task(library.acquire(KEY, f"c{i}")) for i in range(10)]
    await until(lambda: store.loads == 1)
    store.release_loads.set()

    documents = await asyncio.gather(*users)

    assert store.loads == 1
    assert all(document is documents[0] for document in documents)
    assert len(documents[0].users) == 10


async def test_a_failed_load_refuses_everyone_waiting_and_stores_nothing() -> None:
    store = FlakyStore()
    await store.append(KEY, typing("x")[0])
    library = library_for(store)
    store.failing = True

    for user in ("a", "b"):
        with pytest.raises(Refusal) as refused:
            await library.acquire(KEY, user)
        assert refused.value.code == "document_unavailable"

    assert library.resident(KEY) is None
    store.failing = False
    stored = await store.load(KEY)
    assert stored is not None
    assert stored.last_seq == 1
    document = await library.acquire(KEY, "a")
    assert document.text() == "x"


async def test_the_last_user_out_unloads_it_once_its_writes_are_stored() -> None:
    store = FlakyStore()
    library = library_for(store)
    document = await library.acquire(KEY, "a")
    store.failing = True
    for update in typing("abc"):
        document.apply(update)
        library.writer.write(document, update)

    library.release(document, "a")
    await until(lambda: store.failed_appends >= 2)
    assert library.resident(KEY) is document  # its writes are not stored yet

    store.failing = False
    await until(lambda: library.resident(KEY) is None)
    again = await library.acquire(KEY, "b")
    assert again is not document
    assert again.text() == "abc"


async def test_a_user_back_within_the_grace_period_finds_the_same_document() -> None:
    store = FlakyStore()
    library = library_for(store, grace=60.0)
    document = await library.acquire(KEY, "a")
    library.release(document, "a")

    assert await library.acquire(KEY, "b") is document
    assert store.loads == 1


async def test_at_the_limit_the_idle_document_goes_first_and_busy_ones_refuse() -> None:
    store = FlakyStore()
    library = library_for(store, grace=60.0, max_resident=2)
    first = await library.acquire(DocumentKey("p", "1"), "a")
    second = await library.acquire(DocumentKey("p", "2"), "a")
    library.release(first, "a")

    await library.acquire(DocumentKey("p", "3"), "a")
    await until(lambda: library.resident(DocumentKey("p", "1")) is None)
    assert library.resident(DocumentKey("p", "2")) is second

    with pytest.raises(Refusal) as refused:
        await library.acquire(DocumentKey("p", "4"), "a")
    assert refused.value.code == "document_unavailable"


async def test_a_load_waits_for_a_delete_in_progress() -> None:
    store = FlakyStore()
    await store.append(KEY, typing("x")[0])
    library = library_for(store)
    async with library.deleting(KEY):
        loading = asyncio.create_task(library.acquire(KEY, "a"))
        await until(lambda: store.loads == 0 and not loading.done())
        await store.delete(KEY)
    document = await loading

    assert document.text() == ""


async def test_a_document_loaded_for_callers_that_gave_up_still_unloads() -> None:
    store = FlakyStore()
    library = library_for(store)
    store.release_loads.clear()
    caller = asyncio.create_task(library.acquire(KEY, "a"))
    await until(lambda: store.loads == 1)
    caller.cancel()
    store.release_loads.set()

    # Without anyone to release it, it would stay resident for good.
    await until(lambda: KEY not in library._loading and library.resident(KEY) is None)
    assert library.writer.pending_bytes == 0


async def test_catch_up_brings_a_document_what_another_instance_stored() -> None:
    store = FlakyStore()  # shared, like PostgreSQL between instances
    here, there = library_for(store, grace=60.0), library_for(store, grace=60.0)
    mine = await here.acquire(KEY, "a")
    theirs = await there.acquire(KEY, "b")
    fetched: list[bytes] = []
    here.on_fetched = lambda document, update: fetched.append(update)

    # Typed on the other instance, never relayed here (a Redis outage, say).
    for update in typing("hello"):
        theirs.apply(update)
        await there.writer.stored(there.writer.write(theirs, update))
    # Typed here meanwhile: stored past the gap.
    doc: Doc[Text] = Doc()
    doc.apply_update(theirs.encode())
    own = typed_after(doc, "!")
    mine.apply(own)
    await here.writer.stored(here.writer.write(mine, own))
    assert mine.applied_seq == 0

    assert await here.catch_up() == 5
    assert mine.text() == "hello!"
    assert mine.applied_seq == 6
    assert len(fetched) == 5
    # Nothing more to fetch; the other side gets the one made here.
    assert await here.catch_up() == 0
    assert await there.catch_up() == 1
    assert theirs.text() == "hello!"


def typed_after(doc: Doc[Text], text: str) -> bytes:
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    content = doc.get("content", type=Text)
    content.insert(len(content), text)
    return updates[-1]
