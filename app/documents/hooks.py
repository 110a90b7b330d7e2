"""The rooms' hook for documents: updates relayed from other instances reach this one's copy."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Iterable

from pydantic_core import from_json

from app.documents.awareness import AwarenessRefused
from app.documents.document import EMPTY_UPDATE
from app.documents.library import DocumentLibrary
from app.documents.store.base import DocumentKey
from app.errors import CloseCode, Refusal
from app.fanout.connection import Connection
from app.rooms.events import RoomEvent
from app.rooms.room import Room

logger = logging.getLogger("texflow.documents")


def close_bound(connections: Iterable[Connection], document_id: str) -> None:
    """Close the connections bound to a deleted document (y-websocket's): their protocol has
    no message for a delete, and their provider would go on editing a document that is gone.
    Its reconnect starts the document again, as a JSON client's next sync step does."""
    for connection in list(connections):
        if connection.codec.document_id == document_id:
            connection.close(CloseCode.DOCUMENT_DELETED, "document deleted")


class DocumentHooks:
    """Applies another instance's `yjs_update` and `yjs_awareness` to the document when it is
    resident here; local ones are applied before they are relayed and never come here."""

    def __init__(self, library: DocumentLibrary) -> None:
        self._library = library

    async def load(self, room: Room) -> None:
        return None

    async def flush(self, room: Room) -> None:
        return None

    def apply(self, room: Room, event: RoomEvent) -> None:
        if event.type == "yjs_document_deleted":
            document_id = self._deleted(event)
            if document_id is not None:
                close_bound(room.connections.values(), document_id)
            return
        if event.type != "yjs_update" and event.type != "yjs_awareness":
            return
        try:
            payload = from_json(event.payload)
            key = DocumentKey(event.project_id, payload["document_id"])
            data = base64.b64decode(payload["update"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            return
        document = self._library.resident(key)
        if document is None or document.deleted:
            return
        try:
            if event.type == "yjs_awareness":
                document.awareness.apply(data, event.author.client_id)
            elif data != EMPTY_UPDATE:
                # Stored by the instance it was sent to, in the store they share; this copy
                # applies it live and counts it in once catch-up reads its seq.
                document.apply(data)
        except (Refusal, AwarenessRefused) as exc:
            logger.warning(
                "an update from another instance does not apply here",
                extra={"event": "remote_update_refused", "error": str(exc)},
            )
        except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
            raise
        except BaseException:
            # Never into the broadcaster's listener: the other events must still get through.
            logger.exception(
                "applying an update from another instance failed",
                extra={"event": "remote_update_failed", "project_id": event.project_id},
            )

    def _deleted(self, event: RoomEvent) -> str | None:
        """Deleted through another instance: this copy goes, and its users' later updates are
        refused instead of writing it back."""
        try:
            document_id = from_json(event.payload)["document_id"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(document_id, str):
            return None
        document = self._library.resident(DocumentKey(event.project_id, document_id))
        if document is not None:
            document.deleted = True
            self._library.forget(document)
        return document_id
