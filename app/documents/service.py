"""Server-side documents as the rest of the service sees them: what sessions and the backend
API call, and the one place where an update is checked, applied, relayed and queued for storing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.documents.document import EMPTY_UPDATE, LiveDocument, Write
from app.documents.editor import Editor, b64, deleted
from app.documents.hooks import close_bound
from app.documents.library import DocumentLibrary, unavailable
from app.documents.store.base import DocumentKey, StoreError
from app.documents.writer import DocumentWriter
from app.errors import Refusal
from app.fanout.connection import Connection
from app.rooms.registry import RoomRegistry

logger = logging.getLogger("texflow.documents")

# How long a delete waits for the document's pending writes before answering 503.
_DELETE_PATIENCE = 10.0


@dataclass(frozen=True, slots=True)
class DocumentSummary:
    document_id: str
    stored_bytes: int
    updated_at: float
    resident: bool


@dataclass(frozen=True, slots=True)
class DocumentContent:
    text: str
    update: bytes


def _store_down() -> Refusal:
    return Refusal("store_unavailable", "the document store does not answer", status=503)


def too_large(limit: int) -> Refusal:
    return Refusal(
        "document_too_large",
        f"this update would take the document past {limit} bytes; it was not applied",
        status=413,
    )


def _utf8(text: str) -> bytes:
    # Python's JSON parser lets an unpaired surrogate (an escaped \ud800) through, and yrs
    # cannot hold one: refused before anything is loaded.
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise Refusal(
            "invalid_text", "expected Unicode text: it holds an unpaired surrogate"
        ) from None


class DocumentService:
    """Applies updates to the documents of the library and relays them through the registry."""

    def __init__(
        self,
        library: DocumentLibrary,
        registry: RoomRegistry,
        *,
        max_document_bytes: int,
    ) -> None:
        self.library = library
        self._writer: DocumentWriter = library.writer
        self._registry = registry
        self.max_document_bytes = max_document_bytes
        library.on_fetched = self._deliver_fetched

    def _deliver_fetched(self, document: LiveDocument, update: bytes) -> None:
        # Fetched by every instance that holds the document: delivered to this instance's
        # clients only.
        self._registry.deliver_local(
            document.key.project_id,
            "yjs_update",
            {"document_id": document.key.document_id, "update": b64(update), "origin": "store"},
        )

    def editor(self, connection: Connection) -> Editor:
        return Editor(self, connection)

    def send(
        self,
        connection: Connection,
        message_type: str,
        payload: Mapping[str, Any],
        *,
        reply: bool = False,
    ) -> None:
        self._registry.send(connection, message_type, payload, reply=reply)

    def relay(self, sender: Connection, message_type: str, payload: Mapping[str, Any]) -> None:
        self._registry.relay(sender, message_type, payload, applied=True)

    def _admit(self, document: LiveDocument, update: bytes) -> None:
        if document.deleted:
            raise deleted()
        if document.size + len(update) > self.max_document_bytes:
            raise too_large(self.max_document_bytes)
        self._writer.check_room(len(update))

    def accept(
        self, sender: Connection, document: LiveDocument, update: bytes, origin: str | None
    ) -> Write | None:
        """Apply a client's update, relay it, queue it for the store; the write to wait for
        before acknowledging (None: nothing to wait for)."""
        if update == EMPTY_UPDATE:
            # Nothing to apply or relay; acknowledged once what came before it is stored.
            return self._writer.tail(document)
        self._admit(document, update)
        document.apply(update)
        write = self._writer.write(document, update)
        payload: dict[str, Any] = {"document_id": document.key.document_id, "update": b64(update)}
        if origin is not None:
            payload["origin"] = origin
        self.relay(sender, "yjs_update", payload)
        return write

    # The backend API

    async def documents(self, project_id: str) -> list[DocumentSummary]:
        try:
            stored = await self.library.store.documents(project_id)
        except StoreError:
            raise _store_down() from None
        return [
            DocumentSummary(
                info.document_id,
                info.stored_bytes,
                info.updated_at,
                self.library.resident(DocumentKey(project_id, info.document_id)) is not None,
            )
            for info in stored
        ]

    async def read(self, key: DocumentKey) -> DocumentContent | None:
        """The document's text and whole state; None if there is no such document."""
        document = self.library.resident(key)
        if document is not None and not document.deleted:
            # Resident but never written (a client opened it and typed nothing): the store
            # has no such document, and neither does `documents()`.
            if not document.written:
                return None
        else:
            try:
                stored = await self.library.store.load(key)
            except StoreError:
                raise _store_down() from None
            if stored is None:
                return None
            # Read without making it resident: a compile run does not keep documents loaded.
            try:
                document = LiveDocument(key, self.library.text_name, stored)
            except Exception:
                logger.exception(
                    "a stored document could not be read",
                    extra={"event": "document_corrupt", "project_id": key.project_id},
                )
                raise unavailable("its stored state cannot be read") from None
        return DocumentContent(document.text(), document.encode())

    async def change(
        self,
        key: DocumentKey,
        author: tuple[str, str],
        *,
        update: bytes | None = None,
        text: str | None = None,
        only_new: bool = False,
    ) -> bool:
        """Apply `update`, or insert `text` at the start, for a backend service; relay it to the
        project's clients and return once it is stored. With `only_new`, change nothing and
        return False unless the document is empty and was never stored."""
        encoded = _utf8(text) if text is not None else b""
        user = "api:" + secrets.token_hex(4)
        document = await self.library.acquire(key, user)
        try:
            # No await between this check and the change: two concurrent creations on one
            # instance cannot both find the document new.
            if only_new and document.written:
                return False
            if update == EMPTY_UPDATE and not only_new:
                # Nothing to apply, relay or store (as for a client's): done once what came
                # before it is stored.
                self._admit(document, update)
                tail = self._writer.tail(document)
                if tail is not None:
                    await self._writer.stored(tail)
                return True
            if update is not None:
                self._admit(document, update)
                document.apply(update)
            else:
                assert text is not None
                self._admit(document, encoded)
                update = document.insert_text(text)
            write = self._writer.write(document, update)
            self._registry.publish_event(
                key.project_id,
                "yjs_update",
                {"document_id": key.document_id, "update": b64(update), "origin": "api"},
                user_id=author[0],
                username=author[1],
                applied=True,
            )
            await self._writer.stored(write)
            return True
        finally:
            self.library.release(document, user)

    async def create(self, key: DocumentKey, author: tuple[str, str], text: str) -> bool:
        """Seed a new document with `text`, relayed and stored like any change; False, and
        nothing changed, if the document exists (even empty)."""
        return await self.change(key, author, text=text, only_new=True)

    async def delete(self, key: DocumentKey) -> bool:
        """Forget the document, on every instance; every client of the project is told with
        `yjs_document_deleted`. No load of it starts until the store has deleted it, or the
        row being deleted could be read back and written again."""
        async with self.library.deleting(key) as document:
            if document is not None:
                document.deleted = True
                try:
                    # Its last writes first, or they would re-create it after the delete.
                    await asyncio.wait_for(document.flushed.wait(), _DELETE_PATIENCE)
                except TimeoutError:
                    document.deleted = False
                    raise _store_down() from None
            try:
                existed = await self.library.store.delete(key)
            except StoreError:
                if document is not None:
                    document.deleted = False
                raise _store_down() from None
            # Every instance's copy goes too, and every client learns it, on every instance.
            self._registry.publish_event(
                key.project_id,
                "yjs_document_deleted",
                {"document_id": key.document_id},
                user_id="server",
                username="server",
                applied=True,
            )
            close_bound(self._registry.members(key.project_id), key.document_id)
            if document is None:
                return existed
            self.library.forget(document)
            return True
