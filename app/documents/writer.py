"""Writes documents' updates to the store, in order, batched per document, retried until stored.

Each document with pending writes has one drain task: it merges what is pending into one update,
appends it, marks those writes durable (their acknowledgements go out), and compacts the
document's log every `compact_every` appends. While the store fails it retries with backoff;
updates keep being applied and relayed meanwhile, bounded by the instance's `max_pending_bytes`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pycrdt import merge_updates

from app.documents.document import LiveDocument, Write
from app.documents.store.base import DocumentStore, StoreBusy, StoreError
from app.errors import Refusal
from app.metrics import Metrics

logger = logging.getLogger("texflow.documents")

# One append carries at most this much; a document's backlog after an outage goes in steps.
_BATCH_BYTES = 1024 * 1024
_RETRY_FIRST = 0.05
_RETRY_MAX = 2.0


class DocumentWriter:
    """The one path from documents to the store."""

    def __init__(
        self,
        store: DocumentStore,
        metrics: Metrics,
        *,
        max_pending_bytes: int,
        compact_every: int,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._max_pending = max_pending_bytes
        self._compact_every = compact_every
        self.pending_bytes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # False from the first failed store call until the next one that succeeds: one log
        # line each way, however many documents are waiting.
        self.healthy = True
        # Writes given up on at shutdown.
        self.unstored = 0
        # After stop: writes are queued (and never acknowledged), no drain starts.
        self._stopped = False

    def has_room(self, size: int) -> bool:
        return self.pending_bytes + size <= self._max_pending

    def check_room(self, size: int) -> None:
        """Refuse an update that would take the unstored backlog past its bound."""
        if not self.has_room(size):
            raise Refusal(
                "store_unavailable",
                "changes cannot be saved right now; this one was not applied: "
                "run the sync step again later",
                status=503,
            )

    def write(self, document: LiveDocument, update: bytes) -> Write:
        """Queue `update` (already applied to `document`) for the store."""
        write = Write(update)
        document.pending.append(write)
        document.flushed.clear()
        self.pending_bytes += len(update)
        self._metrics.document_pending_bytes.set(self.pending_bytes)
        if not document.draining and not self._stopped:
            document.draining = True
            task = asyncio.create_task(self._drain(document), name="document writer")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return write

    async def stored(self, write: Write) -> None:
        """Wait until `write` is durable."""
        if write.durable:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle() -> None:
            if not future.done():
                future.set_result(None)

        write.then(settle)
        await future

    def tail(self, document: LiveDocument) -> Write | None:
        """The document's last write not yet stored: what an update that changed nothing must
        wait for before it is acknowledged."""
        return document.pending[-1] if document.pending else None

    async def stop(self, patience: float) -> int:
        """Wait up to `patience` s for pending writes; returns how many were not stored."""
        self._stopped = True
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=patience)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        left = self.unstored
        if left:
            logger.error(
                "updates were not stored before shutdown",
                extra={"event": "document_writes_lost", "updates": left},
            )
        return left

    async def compact(self, document: LiveDocument) -> None:
        """Replace the document's stored log with a snapshot (when it has a log). One at a
        time per document: an older snapshot landing after a newer one would be refused."""
        if document.compacting or document.log_length == 0 or document.applied_seq == 0:
            return
        document.compacting = True
        try:
            snapshot, through, entries = document.snapshot()
            if through <= document.compacted_seq:
                return
            await self._store.compact(document.key, snapshot, through)
        except StoreError as exc:
            self._failed("compact", exc)
            return
        except (ValueError, LookupError):
            # Another instance compacted further meanwhile, or the document was deleted:
            # nothing to do here.
            return
        except Exception:
            # A compaction is an optimisation: its failure never stops the writes behind it.
            logger.exception(
                "a compaction failed",
                extra={
                    "event": "document_compaction_failed",
                    "project_id": document.key.project_id,
                },
            )
            return
        finally:
            document.compacting = False
        self._recovered()
        document.compacted(snapshot, through, entries)
        self._metrics.document_compactions.inc()

    async def _drain(self, document: LiveDocument) -> None:
        delay = _RETRY_FIRST
        pending = document.pending
        try:
            while pending:
                batch: list[Write] = []
                size = 0
                for write in pending:
                    if batch and size + len(write.update) > _BATCH_BYTES:
                        break
                    batch.append(write)
                    size += len(write.update)
                started = time.perf_counter()
                try:
                    seq = await self._append(document, batch)
                except StoreBusy:
                    # The store is healthy and full of other documents' writes: wait a turn.
                    await asyncio.sleep(_RETRY_FIRST)
                    continue
                except StoreError as exc:
                    self._failed("append", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                except Exception:
                    # A fault of ours, not the store's: the writes stay pending and are tried
                    # again, never dropped; the log says so at every try.
                    logger.exception(
                        "storing a document's updates failed",
                        extra={
                            "event": "document_writer_failed",
                            "project_id": document.key.project_id,
                        },
                    )
                    await asyncio.sleep(_RETRY_MAX)
                    continue
                delay = _RETRY_FIRST
                self._metrics.document_store_seconds.observe(time.perf_counter() - started)
                self._recovered()
                for _ in batch:
                    pending.popleft()
                self.pending_bytes -= size
                self._metrics.document_pending_bytes.set(self.pending_bytes)
                document.stored(seq, len(batch))
                for write in batch:
                    write.resolve()
                if document.log_length >= self._compact_every:
                    await self.compact(document)
        except asyncio.CancelledError:
            self.unstored += len(pending)
            raise
        finally:
            document.draining = False
            if not pending:
                document.flushed.set()

    async def _append(self, document: LiveDocument, batch: list[Write]) -> int:
        updates = [write.update for write in batch]
        if len(updates) == 1:
            return await self._store.append(document.key, updates[0])
        try:
            merged = merge_updates(*updates)
        except Exception:
            # Every update here was applied, but yrs applies some bytes it cannot merge
            # (trailing junk): store them one by one rather than lose the batch.
            seq = 0
            for update in updates:
                seq = await self._store.append(document.key, update)
            return seq
        return await self._store.append(document.key, merged)

    def _failed(self, operation: str, exc: StoreError) -> None:
        self._metrics.document_store_errors.labels(operation).inc()
        if self.healthy:
            self.healthy = False
            self._metrics.document_store_up.set(0)
            logger.error(
                "the document store failed; updates are kept and retried",
                extra={"event": "document_store_down", "operation": operation, "error": str(exc)},
            )

    def _recovered(self) -> None:
        if not self.healthy:
            self.healthy = True
            self._metrics.document_store_up.set(1)
            logger.info(
                "the document store is back; pending updates are being stored",
                extra={"event": "document_store_up", "pending_bytes": self.pending_bytes},
            )
