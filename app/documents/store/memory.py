"""The in-memory document store: for tests, and deployments that keep nothing across restarts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.documents.store.base import (
    DocumentInfo,
    DocumentKey,
    StoredDocument,
    after,
    check_compaction,
    check_update,
)


@dataclass(slots=True)
class _Document:
    snapshot: bytes | None = None
    snapshot_seq: int = 0
    updates: list[bytes] = field(default_factory=list)
    last_seq: int = 0
    stored_bytes: int = 0
    updated_at: float = 0.0


class MemoryStore:
    """DocumentStore in dictionaries: every write is "durable" at once, and gone with the
    process."""

    def __init__(self) -> None:
        # project_id -> document_id -> document
        self._projects: dict[str, dict[str, _Document]] = {}

    def _get(self, key: DocumentKey) -> _Document | None:
        return self._projects.get(key.project_id, {}).get(key.document_id)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def load(self, key: DocumentKey) -> StoredDocument | None:
        document = self._get(key)
        if document is None:
            return None
        return StoredDocument(
            document.snapshot, document.snapshot_seq, list(document.updates), document.last_seq
        )

    async def since(self, key: DocumentKey, seq: int) -> StoredDocument | None:
        stored = await self.load(key)
        return None if stored is None else after(stored, seq)

    async def heads(self, keys: list[DocumentKey]) -> dict[DocumentKey, int]:
        found = ((key, self._get(key)) for key in keys)
        return {key: document.last_seq for key, document in found if document is not None}

    async def append(self, key: DocumentKey, update: bytes) -> int:
        check_update(update)
        document = self._get(key)
        if document is None:
            document = _Document()
            self._projects.setdefault(key.project_id, {})[key.document_id] = document
        document.updates.append(update)
        document.last_seq += 1
        document.stored_bytes += len(update)
        document.updated_at = time.time()
        return document.last_seq

    async def compact(self, key: DocumentKey, snapshot: bytes, through_seq: int) -> None:
        check_update(snapshot, "snapshot")
        document = self._get(key)
        if document is None:
            raise LookupError("no such document")
        check_compaction(document.snapshot_seq, document.last_seq, through_seq)
        document.updates = document.updates[through_seq - document.snapshot_seq :]
        document.snapshot = snapshot
        document.snapshot_seq = through_seq
        document.stored_bytes = len(snapshot) + sum(map(len, document.updates))
        document.updated_at = time.time()

    async def create(self, key: DocumentKey, snapshot: bytes) -> bool:
        check_update(snapshot, "snapshot")
        if self._get(key) is not None:
            return False
        self._projects.setdefault(key.project_id, {})[key.document_id] = _Document(
            snapshot=snapshot,
            snapshot_seq=1,
            last_seq=1,
            stored_bytes=len(snapshot),
            updated_at=time.time(),
        )
        return True

    async def delete(self, key: DocumentKey) -> bool:
        project = self._projects.get(key.project_id)
        if project is None or project.pop(key.document_id, None) is None:
            return False
        if not project:
            del self._projects[key.project_id]
        return True

    async def documents(self, project_id: str) -> list[DocumentInfo]:
        project = self._projects.get(project_id, {})
        return [
            DocumentInfo(document_id, doc.last_seq, doc.stored_bytes, doc.updated_at)
            for document_id, doc in sorted(project.items())
        ]
