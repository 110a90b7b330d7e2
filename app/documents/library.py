"""The documents resident on this instance: loaded once however many ask at the same time,
unloaded a grace period after their last user left, once their writes are stored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from app.documents.document import LiveDocument
from app.documents.store.base import DocumentKey, DocumentStore, StoreError
from app.documents.writer import DocumentWriter
from app.errors import Refusal
from app.metrics import Metrics

logger = logging.getLogger("texflow.documents")


def unavailable(why: str) -> Refusal:
    return Refusal(
        "document_unavailable", f"the document cannot be opened right now: {why}", status=503
    )


class DocumentLibrary:
    """Loads, holds and unloads documents; `acquire` and `release` count their users."""

    def __init__(
        self,
        store: DocumentStore,
        writer: DocumentWriter,
        metrics: Metrics,
        *,
        text_name: str,
        grace: float,
        max_resident: int,
    ) -> None:
        self._store = store
        self._writer = writer
        self._metrics = metrics
        self._text_name = text_name
        self._grace = grace
        self._max_resident = max_resident
        self._documents: dict[DocumentKey, LiveDocument] = {}
        self._loading: dict[DocumentKey, asyncio.Task[LiveDocument]] = {}
        self._timers: dict[DocumentKey, asyncio.TimerHandle] = {}
        # When each document was last released: the idle one released first goes first.
        self._idle_since: dict[DocumentKey, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def store(self) -> DocumentStore:
        return self._store

    @property
    def writer(self) -> DocumentWriter:
        return self._writer

    def start(self) -> None:
        self._metrics.documents_resident_bytes.set_function(self.resident_bytes)

    @property
    def text_name(self) -> str:
        return self._text_name

    def forget(self, document: LiveDocument) -> None:
        """Drop a deleted document at once, users or not."""
        if self._documents.get(document.key) is document:
            del self._documents[document.key]
            self._gauge()
        timer = self._timers.pop(document.key, None)
        if timer is not None:
            timer.cancel()
        self._idle_since.pop(document.key, None)

    def resident(self, key: DocumentKey) -> LiveDocument | None:
        return self._documents.get(key)

    def __len__(self) -> int:
        return len(self._documents)

    async def acquire(self, key: DocumentKey, user: str) -> LiveDocument:
        """The document, loaded if it is not resident, with `user` counted among its users.
        Raises Refusal (`document_unavailable`) when it cannot be loaded."""
        if self._stopping:
            raise unavailable("the service is restarting")
        document = self._documents.get(key)
        if document is None:
            loading = self._loading.get(key)
            if loading is None:
                self._make_room()
                loading = asyncio.create_task(self._load(key), name="document load")
                self._loading[key] = loading
                loading.add_done_callback(lambda _: self._loading.pop(key, None))
            # shield: one caller that gives up does not cancel the load the others share.
            document = await asyncio.shield(loading)
        self._use(document, user)
        return document

    def _use(self, document: LiveDocument, user: str) -> None:
        document.users.add(user)
        timer = self._timers.pop(document.key, None)
        if timer is not None:
            timer.cancel()
        self._idle_since.pop(document.key, None)

    def release(self, document: LiveDocument, user: str) -> None:
        """`user` no longer uses the document; the last one out starts the grace period."""
        document.users.discard(user)
        if document.users or self._documents.get(document.key) is not document:
            return
        self._idle_since[document.key] = time.monotonic()
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        self._timers[document.key] = loop.call_later(self._grace, self._unload_later, document)

    async def _load(self, key: DocumentKey) -> LiveDocument:
        started = time.perf_counter()
        try:
            stored = await self._store.load(key)
        except StoreError as exc:
            self._metrics.document_store_errors.labels("load").inc()
            logger.warning(
                "a document could not be loaded",
                extra={
                    "event": "document_load_failed",
                    "project_id": key.project_id,
                    "error": str(exc),
                },
            )
            raise unavailable("its store does not answer") from None
        try:
            document = LiveDocument(key, self._text_name, stored)
        except Exception:
            # Never serve, nor later store, a document that is not what was stored.
            logger.exception(
                "a stored document could not be read",
                extra={"event": "document_corrupt", "project_id": key.project_id},
            )
            raise unavailable("its stored state cannot be read") from None
        self._metrics.document_load_seconds.observe(time.perf_counter() - started)
        self._documents[key] = document
        self._gauge()
        return document

    def _make_room(self) -> None:
        """At the residency limit, unload the document idle the longest; refuse if none is."""
        if len(self._documents) + len(self._loading) < self._max_resident:
            return
        candidates = [k for k in self._idle_since if k in self._documents]
        if not candidates:
            raise unavailable(f"this instance holds its limit of {self._max_resident} documents")
        oldest = min(candidates, key=self._idle_since.__getitem__)
        timer = self._timers.pop(oldest, None)
        if timer is not None:
            timer.cancel()
        self._unload_later(self._documents[oldest])

    def _unload_later(self, document: LiveDocument) -> None:
        self._timers.pop(document.key, None)
        self._idle_since.pop(document.key, None)
        task = asyncio.create_task(self._unload(document), name="document unload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unload(self, document: LiveDocument) -> None:
        # Stored first, then compacted; dropped only if nobody came back meanwhile, so a
        # returning user finds the same Doc instead of a load racing the last writes.
        try:
            await document.flushed.wait()
            await self._writer.compact(document)
        except Exception:
            logger.exception(
                "unloading a document failed", extra={"event": "document_unload_failed"}
            )
        if (
            not document.users
            and not document.pending
            and (self._documents.get(document.key) is document)
        ):
            del self._documents[document.key]
            self._gauge()

    def _gauge(self) -> None:
        self._metrics.documents_resident.set(len(self._documents))

    def resident_bytes(self) -> int:
        return sum(document.size for document in self._documents.values())

    async def stop(self, patience: float) -> None:
        """Store what is pending (for up to `patience` s), compact, drop every document."""
        self._stopping = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        # Unloads only wait for the writer, which stops next and stores what it can.
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        await self._writer.stop(patience)
        for document in list(self._documents.values()):
            if not document.pending:
                with contextlib.suppress(Exception):
                    await self._writer.compact(document)
        self._documents.clear()
        self._gauge()
