"""Durable storage of Yjs documents: an append-only log of updates and compacted snapshots."""

from __future__ import annotations

from app.documents.store.base import (
    DocumentInfo,
    DocumentKey,
    DocumentStore,
    SchemaTooNew,
    StoreBusy,
    StoredDocument,
    StoreError,
)
from app.documents.store.memory import MemoryStore
from app.documents.store.postgres import PostgresStore
from app.documents.store.sqlite import SqliteStore

__all__ = [
    "DocumentInfo",
    "DocumentKey",
    "DocumentStore",
    "MemoryStore",
    "PostgresStore",
    "SchemaTooNew",
    "SqliteStore",
    "StoreBusy",
    "StoreError",
    "StoredDocument",
]
