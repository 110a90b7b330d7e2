"""The documents resident on this instance: loaded once however many ask at the same time,
unloaded a grace period after their last user left, once their writes are stored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

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
        catch_up_interval: float = 1.0,
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
        self._per_project: Counter[str] = Counter()
        self._max_per_project = max(min(max_resident, 16), max_resident // 4)
        # Keys being deleted: a load waits for the delete (set when it is done).
        self._deleting: dict[DocumentKey, asyncio.Event] = {}
        self._loads_failing = False
        self._catch_up_interval = catch_up_interval
        self._follower: asyncio.Task[None] | None = None
        # Told of every update fetched from the store for a resident document, so that the
        # clients on this instance get what other instances stored (DocumentService).
        self.on_fetched: Callable[[LiveDocument, bytes], None] = lambda document, update: None
        # Told of each document loaded here (the service asks the other instances for its
        # awareness states).
        self.on_loaded: Callable[[LiveDocument], None] = lambda document: None
        # Callers waiting for a load: the document is not idle until they have taken it.
        self._waiting: Counter[DocumentKey] = Counter()

    @property
    def store(self) -> DocumentStore:
        return self._store

    @property
    def writer(self) -> DocumentWriter:
        return self._writer

    def start(self) -> None:
        self._metrics.documents_resident_bytes.set_function(self.resident_bytes)
        if self._catch_up_interval > 0:
            self._follower = asyncio.create_task(self._follow(), name="document catch-up")

    async def _follow(self) -> None:
        """Every interval, bring the resident documents up to the store: what other instances
        stored and this one did not get live (a Redis outage, a dropped publish) arrives
        within an interval, with no client action."""
        failing = False
        while True:
            await asyncio.sleep(self._catch_up_interval)
            try:
                await self.catch_up()
            except StoreError:
                continue  # the writer and the loads say so; this tries again next interval
            except Exception:
                if not failing:
                    logger.exception(
                        "catching up with the store failed", extra={"event": "catch_up_failed"}
                    )
                failing = True
            else:
                failing = False

    async def catch_up(self) -> int:
        """Apply to each resident document what the store holds past it; how many updates."""
        documents = [d for d in self._documents.values() if not d.deleted]
        if not documents:
            return 0
        heads = await self._store.heads([document.key for document in documents])
        fetched = 0
        for document in documents:
            head = heads.get(document.key)
            if head is None or head <= document.applied_seq:
                continue
            stored = await self._store.since(document.key, document.applied_seq)
            if stored is None or self._documents.get(document.key) is not document:
                continue
            for update in document.integrate(stored):
                fetched += 1
                self.on_fetched(document, update)
        return fetched

    @property
    def text_name(self) -> str:
        return self._text_name

    def forget(self, document: LiveDocument) -> None:
        """Drop a deleted document at once, users or not."""
        if self._documents.get(document.key) is document:
            self._drop(document)
        timer = self._timers.pop(document.key, None)
        if timer is not None:
            timer.cancel()
        self._idle_since.pop(document.key, None)

    @contextlib.asynccontextmanager
    async def deleting(self, key: DocumentKey) -> AsyncIterator[LiveDocument | None]:
        """Hold back every load of `key` while the caller deletes it; yields the document if it
        is resident (or was being loaded)."""
        done = asyncio.Event()
        self._deleting[key] = done
        try:
            loading = self._loading.get(key)
            if loading is not None:
                await asyncio.wait({loading})
            yield self._documents.get(key)
        finally:
            del self._deleting[key]
            done.set()

    def resident(self, key: DocumentKey) -> LiveDocument | None:
        return self._documents.get(key)

    def __len__(self) -> int:
        return len(self._documents)

    async def acquire(self, key: DocumentKey, user: str) -> LiveDocument:
        """The document, loaded if it is not resident, with `user` counted among its users.
        Raises Refusal (`document_unavailable`) when it cannot be loaded."""
        if self._stopping:
            raise unavailable("the service is restarting")
        deleting = self._deleting.get(key)
        if deleting is not None:
            # Not before the delete is done: a load now would read the row being deleted.
            await deleting.wait()
        document = self._documents.get(key)
        if document is None:
            loading = self._loading.get(key)
            if loading is None:
                self._make_room(key.project_id)
                loading = asyncio.create_task(self._load(key), name="document load")
                self._loading[key] = loading
                loading.add_done_callback(lambda _: self._loading.pop(key, None))
            # shield: one caller that gives up does not cancel the load the others share.
            self._waiting[key] += 1
            try:
                document = await asyncio.shield(loading)
            finally:
                self._waiting[key] -= 1
                if not self._waiting[key]:
                    del self._waiting[key]
                    if loading.done() and not loading.cancelled() and not loading.exception():
                        # Loaded for callers that all gave up: it goes idle at once.
                        self._idle(loading.result())
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
        self._idle(document)

    def _idle(self, document: LiveDocument) -> None:
        """Start the grace period of a resident document nobody uses (once)."""
        key = document.key
        if (
            document.users
            or key in self._waiting
            or key in self._timers
            or self._documents.get(key) is not document
        ):
            return
        self._idle_since[key] = time.monotonic()
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(self._grace, self._unload_later, document)

    async def _load(self, key: DocumentKey) -> LiveDocument:
        started = time.perf_counter()
        try:
            stored = await self._store.load(key)
        except StoreError as exc:
            self._metrics.document_store_errors.labels("load").inc()
            if self._loads_failing is False:
                # Once until a load succeeds again, however many clients retry meanwhile.
                self._loads_failing = True
                logger.warning(
                    "documents cannot be loaded: the store does not answer",
                    extra={
                        "event": "document_load_failed",
                        "project_id": key.project_id,
                        "error": str(exc),
                    },
                )
            raise unavailable("its store does not answer") from None
        if self._loads_failing:
            self._loads_failing = False
            logger.info("documents load again", extra={"event": "document_load_recovered"})
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
        self._per_project[key.project_id] += 1
        self._gauge()
        self.on_loaded(document)
        # Every caller gave up while it loaded: nobody will use it, so it goes idle now. (Those
        # still waiting are counted in _waiting until they have taken it.)
        self._idle(document)
        return document

    def _make_room(self, project_id: str) -> None:
        """At the residency limit, unload the document idle the longest; refuse if none is.
        A project may hold a quarter of the instance's documents at most (its idle ones go
        first): one user opening documents by the hundred cannot lock other projects out."""
        if self._per_project[project_id] >= self._max_per_project:
            if not self._evict(project_id):
                raise unavailable(
                    f"a project may have {self._max_per_project} documents open on one instance"
                )
            # That one makes room for this one on the instance too.
            return
        full = len(self._documents) + len(self._loading) >= self._max_resident
        if full and not self._evict(None):
            raise unavailable(f"this instance holds its limit of {self._max_resident} documents")

    def _evict(self, project_id: str | None) -> bool:
        """Start unloading the document idle the longest (of `project_id`, if given)."""
        candidates = [
            key
            for key in self._idle_since
            if key in self._documents and (project_id is None or key.project_id == project_id)
        ]
        if not candidates:
            return False
        oldest = min(candidates, key=self._idle_since.__getitem__)
        timer = self._timers.pop(oldest, None)
        if timer is not None:
            timer.cancel()
        self._unload_later(self._documents[oldest])
        return True

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
            if document.stored_seq > document.compacted_seq:
                # Only by an instance that wrote since the last snapshot: every instance that
                # held the document would otherwise compact it in turn (1,000 compactions for
                # 500 documents on two instances, measured).
                await self._writer.compact(document)
        except Exception:
            logger.exception(
                "unloading a document failed", extra={"event": "document_unload_failed"}
            )
        if self._documents.get(document.key) is not document:
            return
        if not document.users and not document.pending:
            self._drop(document)
        else:
            # A user came back, or a write came (from another instance) meanwhile: it stays,
            # and goes idle again once that is over.
            document.flushed_then(lambda: self._idle(document))

    def _drop(self, document: LiveDocument) -> None:
        del self._documents[document.key]
        self._per_project[document.key.project_id] -= 1
        if not self._per_project[document.key.project_id]:
            del self._per_project[document.key.project_id]
        self._gauge()

    def _gauge(self) -> None:
        self._metrics.documents_resident.set(len(self._documents))

    def resident_bytes(self) -> int:
        return sum(document.size for document in self._documents.values())

    async def stop(self, patience: float) -> None:
        """Store what is pending (for up to `patience` s), compact, drop every document."""
        self._stopping = True
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.wait({self._follower})
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        # Unloads only wait for the writer, which stops next and stores what it can.
        waiters = [w for d in self._documents.values() for w in d.waiters]
        doomed: list[asyncio.Future[Any]] = [*self._tasks, *self._loading.values(), *waiters]
        for task in doomed:
            task.cancel()
        if self._loading:
            await asyncio.wait(set(self._loading.values()))
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        await self._writer.stop(patience)
        for document in list(self._documents.values()):
            # As on unload: by an instance that wrote since the snapshot, not by every reader.
            if not document.pending and document.stored_seq > document.compacted_seq:
                with contextlib.suppress(Exception):
                    await self._writer.compact(document)
        self._documents.clear()
        self._gauge()
