"""One connection's work on documents: the sync step, updates applied and acknowledged in
order, awareness, updates in parts; and what it leaves behind when it closes."""

from __future__ import annotations

import asyncio
import base64
from collections import deque
from typing import TYPE_CHECKING

from app.documents.awareness import AwarenessRefused
from app.documents.document import LiveDocument
from app.documents.store.base import DocumentKey
from app.documents.uploads import Uploads
from app.errors import Refusal

if TYPE_CHECKING:
    from app.documents.service import DocumentService
    from app.fanout.connection import Connection

# Documents one connection may have open at once: a project's files a user works on together.
MAX_OPEN_DOCUMENTS = 64


def deleted() -> Refusal:
    return Refusal(
        "document_deleted",
        "this document was deleted: run the sync step to start it again as a new document",
        status=404,
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Ack:
    __slots__ = ("document_id", "ready")

    def __init__(self, document_id: str) -> None:
        self.document_id = document_id
        self.ready = False


class Editor:
    """Created when a connection joins, closed when it leaves. Most connections of a relay
    never touch a document: what only documents need is made on first use (an empty deque is
    760 bytes, against about 17 KiB for a whole idle connection)."""

    __slots__ = (
        "_acks",
        "_closed",
        "_connection",
        "_documents",
        "_service",
        "_settled",
        "_uploads",
    )

    def __init__(self, service: DocumentService, connection: Connection) -> None:
        self._service = service
        self._connection = connection
        self._documents: dict[str, LiveDocument] = {}
        # Acknowledgements in the order their updates came, each sent once it and every one
        # before it is durable.
        self._acks: deque[_Ack] | None = None
        self._uploads: Uploads | None = None
        self._closed = False
        # Woken when every update so far is stored (a sync waits for it where no acks exist).
        self._settled: asyncio.Event | None = None

    async def _open(self, document_id: str, *, reopen: bool = False) -> LiveDocument:
        """The document, opened for this connection on first use. Once it was deleted through
        the API only a new sync step opens it again (as a new, empty document): an update made
        against the deleted one would land in a document that cannot place it."""
        document = self._documents.get(document_id)
        if document is not None:
            if not document.deleted:
                return document
            if not reopen:
                raise deleted()
            del self._documents[document_id]
            self._service.library.release(document, self._connection.client_id)
        if len(self._documents) >= MAX_OPEN_DOCUMENTS:
            raise Refusal(
                "too_many_documents",
                f"a connection may have at most {MAX_OPEN_DOCUMENTS} documents open",
            )
        connection = self._connection
        key = DocumentKey(connection.project_id, document_id)
        document = await self._service.library.acquire(key, connection.client_id)
        if self._closed:
            self._service.library.release(document, connection.client_id)
            raise Refusal("document_unavailable", "the connection closed")
        self._documents[document_id] = document
        return document

    async def greet(self, document_id: str) -> None:
        """The server's own step 1 and every awareness state of the document, unasked: what a
        y-websocket server sends as a connection to its codec's one document opens. Its later
        step 1 gets step 2 only."""
        self._offer(document_id, await self._open(document_id))

    async def sync(self, document_id: str, state_vector: bytes) -> None:
        """Step 1 from the client: what it lacks, then the server's own step 1, then every
        awareness state of the document.

        Without acknowledgements in the protocol, step 2 waits until every update the
        connection sent before this step 1 is stored: a provider's sync after its edits is
        then the proof that they are durable."""
        document = await self._open(document_id, reopen=True)
        send = self._service.send
        connection = self._connection
        if not connection.codec.acknowledges:
            await self._stored()
        # A document's state may be larger than the backlog allows: it is sent as a reply, one
        # at a time, so a client that opens many large documents waits instead of being
        # closed (and closed again after every reconnect).
        await connection.drained()
        update = document.diff(state_vector)
        send(
            connection,
            "yjs_sync_step2",
            {"document_id": document_id, "update": b64(update)},
            reply=True,
        )
        if connection.codec.document_id != document_id:
            # Not greeted as it opened: the server's step 1 and awareness follow step 2.
            self._offer(document_id, document)

    async def query_awareness(self, document_id: str) -> None:
        document = await self._open(document_id)
        states = document.awareness.encode()
        if states is not None:
            self._service.send(
                self._connection,
                "yjs_awareness",
                {"document_id": document_id, "update": b64(states)},
            )

    async def _stored(self) -> None:
        while self._acks and not self._closed:
            if self._settled is None:
                self._settled = asyncio.Event()
            await self._settled.wait()

    def _offer(self, document_id: str, document: LiveDocument) -> None:
        send = self._service.send
        connection = self._connection
        send(
            connection,
            "yjs_sync_step1",
            {"document_id": document_id, "state_vector": b64(document.state_vector())},
        )
        states = document.awareness.encode()
        if states is not None:
            send(connection, "yjs_awareness", {"document_id": document_id, "update": b64(states)})

    async def update(self, document_id: str, update: bytes, origin: str | None) -> None:
        """An update from the client (a live edit or its sync step 2): applied, relayed to the
        others, stored, then acknowledged."""
        document = await self._open(document_id)
        ack = _Ack(document_id)
        if self._acks is None:
            self._acks = deque()
        acks = self._acks
        acks.append(ack)
        try:
            write = self._service.accept(self._connection, document, update, origin)
        except BaseException:
            acks.remove(ack)
            raise
        if write is None:
            self._ready(ack)
        else:
            write.then(lambda: self._ready(ack))

    async def part(self, document_id: str, index: int, data: bytes, final: bool) -> None:
        if self._uploads is None:
            self._uploads = Uploads(self._service.max_document_bytes)
        whole = self._uploads.add(document_id, index, data, final)
        if whole is not None:
            await self.update(document_id, whole, None)

    async def awareness(self, document_id: str, update: bytes) -> None:
        document = await self._open(document_id)
        try:
            document.awareness.apply(update, self._connection.client_id)
        except AwarenessRefused as exc:
            raise Refusal("invalid_awareness", str(exc)) from None
        self._service.relay(
            self._connection, "yjs_awareness", {"document_id": document_id, "update": b64(update)}
        )

    def _ready(self, ack: _Ack) -> None:
        ack.ready = True
        acks = self._acks
        if acks is None:
            return
        while acks and acks[0].ready:
            done = acks.popleft()
            if not self._closed:
                self._service.send(self._connection, "yjs_ack", {"document_id": done.document_id})
        if not acks and self._settled is not None:
            self._settled.set()
            self._settled = None

    def close(self) -> None:
        """Remove the connection's awareness states (telling the others) and stop using its
        documents. Updates not yet stored still are; only their acknowledgements are dropped."""
        self._closed = True
        self._acks = None
        self._uploads = None
        if self._settled is not None:
            self._settled.set()
        library = self._service.library
        connection = self._connection
        for document_id, document in self._documents.items():
            removal = document.awareness.remove_owner(connection.client_id)
            if removal is not None:
                self._service.relay(
                    connection,
                    "yjs_awareness",
                    {"document_id": document_id, "update": b64(removal)},
                )
            library.release(document, connection.client_id)
        self._documents.clear()
