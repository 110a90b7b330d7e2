"""A store that fails on demand, around the real in-memory one, and a way to wait on it."""

from __future__ import annotations

import asyncio

from app.documents.store.base import DocumentKey, StoredDocument, StoreError
from app.documents.store.memory import MemoryStore


class FlakyStore(MemoryStore):
    """MemoryStore whose calls fail with StoreError while `failing` is set, and whose loads
    can be held until `release_loads` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.loads = 0
        self.appends = 0
        self.failed_appends = 0
        self.compactions = 0
        self.release_loads = asyncio.Event()
        self.release_loads.set()

    async def load(self, key: DocumentKey) -> StoredDocument | None:
        self.loads += 1
        await self.release_loads.wait()
        if self.failing:
            raise StoreError("disk on fire")
        return await super().load(key)

    async def append(self, key: DocumentKey, update: bytes) -> int:
        if self.failing:
            self.failed_appends += 1
            raise StoreError("disk on fire")
        self.appends += 1
        return await super().append(key, update)

    async def compact(self, key: DocumentKey, snapshot: bytes, through_seq: int) -> None:
        if self.failing:
            raise StoreError("disk on fire")
        self.compactions += 1
        # A real store's compaction takes a while: another caller may come meanwhile.
        await asyncio.sleep(0)
        await super().compact(key, snapshot, through_seq)
