"""The document store interface every backend implements, and the values that cross it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class DocumentKey:
    project_id: str
    document_id: str


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """Everything stored for one document: apply `snapshot`, then `updates` in order."""

    # A Yjs update holding the whole state through snapshot_seq (None: never compacted).
    snapshot: bytes | None
    # 0 exactly when there is no snapshot.
    snapshot_seq: int
    # The updates appended after the snapshot, in append order: seqs snapshot_seq + 1 ... last_seq.
    updates: list[bytes]
    # The seq of the last update appended (== snapshot_seq when updates is empty).
    last_seq: int


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    document_id: str
    last_seq: int
    # The snapshot's length plus every kept update's.
    stored_bytes: int
    # Wall-clock time (time.time()) of the last append, compaction or creation.
    updated_at: float


class StoreError(Exception):
    """The store cannot do it right now (I/O, database down): nothing was stored (unless the
    connection to a database server was lost while the commit was in flight), the caller may
    retry. The message is safe to log."""


class StoreBusy(StoreError):
    """The store works but has more waiting than it takes at once: try again shortly."""


class SchemaTooNew(RuntimeError):
    """The store was written by a newer release, in a layout this one does not know."""


class DocumentStore(Protocol):
    """Durable Yjs documents, keyed by (project, document).

    Each document has a log of updates numbered by `seq`: per document, strictly increasing
    from 1, never reused while the document exists. `delete` forgets a document with its
    numbering: a document appended to or created again after a delete starts over at 1.
    `create` seeds a document with a snapshot at seq 1.

    Every write returns once it is durable. A call that raises StoreError stored nothing, but
    for one whose connection to a database server was lost while its commit was in flight: that
    one may have been stored (retrying is safe: an update applies once however often it is
    stored). One cancelled while it waits may or may not have been stored. Misuse (an empty
    update, a compaction outside the document's range) raises ValueError, a compaction of a
    missing document LookupError: those are not worth retrying. Methods are called from the
    event loop the store was started on.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Every write already accepted is durable before it returns; later calls raise
        StoreError."""
        ...

    async def load(self, key: DocumentKey) -> StoredDocument | None:
        """The document, or None if there is no such document."""
        ...

    async def since(self, key: DocumentKey, seq: int) -> StoredDocument | None:
        """What was stored after `seq`: the updates after it, or, when a compaction covered
        some of them, the snapshot and every update after it (`snapshot` is None when no
        snapshot is needed). None if there is no such document."""
        ...

    async def heads(self, keys: list[DocumentKey]) -> dict[DocumentKey, int]:
        """The last seq of each of `keys` that exists."""
        ...

    async def append(self, key: DocumentKey, update: bytes) -> int:
        """Add an update, creating the document if needed; returns its seq once durable."""
        ...

    async def compact(self, key: DocumentKey, snapshot: bytes, through_seq: int) -> None:
        """`snapshot` holds everything through `through_seq`: store it and drop those updates,
        atomically; updates after `through_seq` are kept. `through_seq` must lie between the
        stored snapshot's seq (a snapshot may be replaced by one of the same seq) and last_seq.
        """
        ...

    async def create(self, key: DocumentKey, snapshot: bytes) -> bool:
        """Seed a new document with `snapshot` (seq 1); False, and nothing changed, if the
        document exists."""
        ...

    async def delete(self, key: DocumentKey) -> bool:
        """Forget the document; False if there was none."""
        ...

    async def documents(self, project_id: str) -> list[DocumentInfo]:
        """The project's documents, by document_id."""
        ...


def after(stored: StoredDocument, seq: int) -> StoredDocument:
    """`stored` cut to what came after `seq` (see DocumentStore.since)."""
    if seq >= stored.snapshot_seq:
        skip = seq - stored.snapshot_seq
        return StoredDocument(None, seq, stored.updates[skip:], stored.last_seq)
    return stored


def check_update(data: bytes, what: str = "update") -> None:
    """Refuse what no Yjs encoder produces: an empty update or snapshot."""
    if not data:
        raise ValueError(f"an empty {what}")


def check_compaction(snapshot_seq: int, last_seq: int, through_seq: int) -> None:
    """Refuse a compaction outside [max(1, snapshot_seq), last_seq]: a snapshot older than the
    stored one, or one claiming updates that were never appended."""
    if not max(1, snapshot_seq) <= through_seq <= last_seq:
        raise ValueError(
            f"through_seq {through_seq} is outside the document's range"
            f" [{max(1, snapshot_seq)}, {last_seq}]"
        )
