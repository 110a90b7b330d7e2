"""DocumentWriter: in order, batched, retried through store failures, bounded, compacting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from pycrdt import Doc, Text

from app.documents.document import LiveDocument, Write
from app.documents.store.base import DocumentKey
from app.documents.writer import DocumentWriter
from app.errors import Refusal
from app.metrics import Metrics
from tests.support.waiting import eventually
from tests.unit.documents.fakes import FlakyStore

pytestmark = pytest.mark.anyio

KEY = DocumentKey("p1", "main.tex")


def typing(text: str) -> list[bytes]:
    doc: Doc[Text] = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    content = doc.get("content", type=Text)
    for index, char in enumerate(text):
        content.insert(index, char)
    return updates


async def until(condition: Callable[[], bool]) -> None:
    """Until the writer's tasks (retrying with backoff) make `condition` true; bounded."""

    async def check() -> bool:
        return condition()

    await eventually(check, within=5.0)


def writer_for(store: FlakyStore, **options: int) -> DocumentWriter:
    settings = {"max_pending_bytes": 1 << 20, "compact_every": 1000, **options}
    return DocumentWriter(store, Metrics(), **settings)


def accept(writer: DocumentWriter, document: LiveDocument, update: bytes) -> Write:
    document.apply(update)
    return writer.write(document, update)


async def test_writes_become_durable_in_order_in_few_appends() -> None:
    store = FlakyStore()
    writer = writer_for(store)
    document = LiveDocument(KEY, "content", None)
    order: list[int] = []
    writes = [accept(writer, document, u) for u in typing("hello")]
    for index, write in enumerate(writes):
        write.then(lambda index=index: order.append(index))  # type: ignore[misc]

    await document.flushed.wait()

    assert order == [0, 1, 2, 3, 4]
    assert store.appends < 5  # the four queued behind the first went together
    stored = await store.load(KEY)
    assert stored is not None
    assert LiveDocument(KEY, "content", stored).text() == "hello"
    assert writer.pending_bytes == 0


async def test_a_failing_store_delays_durability_and_loses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="texflow.documents")
    store = FlakyStore()
    writer = writer_for(store)
    document = LiveDocument(KEY, "content", None)
    store.failing = True
    writes = [accept(writer, document, u) for u in typing("abc")]

    await until(lambda: store.failed_appends >= 3)
    assert not any(write.durable for write in writes)
    assert document.text() == "abc"  # applied meanwhile

    store.failing = False
    await document.flushed.wait()

    assert all(write.durable for write in writes)
    stored = await store.load(KEY)
    assert stored is not None
    assert LiveDocument(KEY, "content", stored).text() == "abc"
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("document_store_down") == 1
    assert events.count("document_store_up") == 1


async def test_past_the_pending_bound_writes_are_refused() -> None:
    store = FlakyStore()
    store.failing = True
    updates = typing("abcdef")
    writer = writer_for(store, max_pending_bytes=sum(map(len, updates[:3])))
    document = LiveDocument(KEY, "content", None)
    for update in updates[:3]:
        writer.check_room(len(update))
        accept(writer, document, update)

    with pytest.raises(Refusal) as refused:
        writer.check_room(len(updates[3]))

    assert refused.value.code == "store_unavailable"
    store.failing = False
    await document.flushed.wait()
    writer.check_room(len(updates[3]))


async def test_the_log_is_compacted_every_so_many_appends() -> None:
    store = FlakyStore()
    writer = writer_for(store, compact_every=2)
    document = LiveDocument(KEY, "content", None)
    for update in typing("abcd"):
        await writer.stored(accept(writer, document, update))
    await document.flushed.wait()

    stored = await store.load(KEY)
    assert stored is not None
    assert stored.snapshot is not None
    assert len(stored.updates) < 2
    assert LiveDocument(KEY, "content", stored).text() == "abcd"


async def test_stop_gives_up_on_what_the_store_never_took(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    store.failing = True
    writer = writer_for(store)
    document = LiveDocument(KEY, "content", None)
    write = accept(writer, document, typing("a")[0])

    with caplog.at_level(logging.ERROR):
        assert await writer.stop(0.05) == 1

    assert not write.durable
    assert "document_writes_lost" in [getattr(r, "event", None) for r in caplog.records]


async def test_a_fault_of_ours_keeps_the_writes_and_tries_again() -> None:
    class Broken(FlakyStore):
        broken = True

        async def append(self, key: DocumentKey, update: bytes) -> int:
            if self.broken:
                self.broken = False
                raise RuntimeError("a bug, not the disk")
            return await super().append(key, update)

    store = Broken()
    writer = writer_for(store)
    document = LiveDocument(KEY, "content", None)
    write = accept(writer, document, typing("a")[0])

    await writer.stored(write)

    assert store.appends == 1


async def test_compactions_of_one_document_never_overlap() -> None:
    store = FlakyStore()
    writer = writer_for(store)
    document = LiveDocument(KEY, "content", None)
    for update in typing("abc"):
        await writer.stored(accept(writer, document, update))

    await asyncio.gather(writer.compact(document), writer.compact(document))

    assert store.compactions == 1
    stored = await store.load(KEY)
    assert stored is not None
    assert stored.snapshot is not None
    assert LiveDocument(KEY, "content", stored).text() == "abc"
