"""One document held in memory: a pycrdt Doc, what it was built from, and who is using it.

Every update is validated by applying it. The updates accepted since the last snapshot stay in
memory beside the Doc: they are what the store's log holds, what a compaction merges, and what
rebuilds the Doc when yrs fails part-way through an update (docs/documents.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from pycrdt import Doc, Text, TransactionEvent, get_update, merge_updates

from app.documents.awareness import AwarenessStates
from app.documents.lib0 import Reader, Truncated
from app.documents.store.base import DocumentKey, StoredDocument
from app.errors import Refusal

logger = logging.getLogger("texflow.documents")

# Yjs's encoding of an update that holds nothing.
EMPTY_UPDATE = b"\x00\x00"
# Updates one client sent out of order that yrs has not fully integrated yet: kept to be
# applied again. Past this many, the oldest are left to the store's log (a reload has them).
MAX_UNSETTLED = 256
_SYSTEM_EXITS = (KeyboardInterrupt, SystemExit, asyncio.CancelledError)


def invalid_update(why: str) -> Refusal:
    return Refusal("invalid_update", f"expected a Yjs update (v1 encoding): {why}")


def _plausible(update: bytes) -> None:
    """Refuse an update whose first count claims more entries than it has bytes: yrs reserves
    memory for that count before reading any (5 bytes made it allocate 518 MiB)."""
    try:
        clients = Reader(update).var_uint()
    except Truncated:
        raise invalid_update("it ends inside its first number") from None
    if clients > len(update):
        raise invalid_update(f"it claims {clients} clients in {len(update)} bytes")


def _holds_structs(update: bytes) -> bool:
    # A v1 update starts with the number of clients whose structs it carries.
    return update[0] != 0


class Write:
    """One update on its way to the store: `durable` once stored, then its listeners run."""

    __slots__ = ("durable", "listeners", "update")

    def __init__(self, update: bytes) -> None:
        self.update = update
        self.durable = False
        self.listeners: list[Callable[[], None]] = []

    def then(self, listener: Callable[[], None]) -> None:
        if self.durable:
            listener()
        else:
            self.listeners.append(listener)

    def resolve(self) -> None:
        self.durable = True
        listeners, self.listeners = self.listeners, []
        for listener in listeners:
            listener()


class LiveDocument:
    """A document in memory. Everything here runs on the event loop thread: a Doc has no
    locking, and every call into it holds the GIL anyway."""

    def __init__(self, key: DocumentKey, text_name: str, stored: StoredDocument | None) -> None:
        self.key = key
        self.text_name = text_name
        self.awareness = AwarenessStates()
        # Sessions (and API calls) using the document: it is unloaded once none is left.
        self.users: set[str] = set()
        # Deleted through the API: refused from then on, never written again.
        self.deleted = False
        # Writes accepted but not yet stored, in order; their drain is the writer's.
        self.pending: deque[Write] = deque()
        self.draining = False
        self.compacting = False
        # Set whenever `pending` empties: what an unload waits for.
        self.flushed = asyncio.Event()
        self.flushed.set()
        # The store's numbering: the last seq stored, and how many log entries are stored.
        self.stored_seq = stored.last_seq if stored else 0
        self.appends_since_compaction = len(stored.updates) if stored else 0
        self._stored_entries = len(stored.updates) if stored else 0
        self._base: bytes | None = stored.snapshot if stored else None
        self._log: list[bytes] = list(stored.updates) if stored else []
        self.size = len(self._base or b"") + sum(map(len, self._log))
        self._unsettled: deque[bytes] = deque(maxlen=MAX_UNSETTLED)
        self._captured: list[bytes] = []
        self._doc = self._build()

    def _build(self) -> Doc[Text]:
        # Observed from the start, before any stored state is applied: a change made by the
        # server itself (seeding from text) is captured whatever came before it.
        doc: Doc[Text] = Doc()
        doc.observe(self._on_change)
        for update in ([self._base] if self._base else []) + self._log:
            doc.apply_update(update)
        self._captured.clear()
        return doc

    def _on_change(self, event: TransactionEvent) -> None:
        self._captured.append(event.update)

    # Reading

    def state_vector(self) -> bytes:
        return self._doc.get_state()

    def diff(self, state_vector: bytes) -> bytes:
        """What a peer at `state_vector` lacks (held-back updates included)."""
        try:
            update = self._doc.get_update(state_vector)
        except ValueError:
            raise Refusal(
                "invalid_state_vector", "expected a Yjs state vector (Y.encodeStateVector)"
            ) from None
        if self._unsettled:
            update = merge_updates(update, *self._unsettled)
        return update

    def text(self) -> str:
        return str(self._doc.get(self.text_name, type=Text))

    @property
    def written(self) -> bool:
        """Whether anything was ever applied or stored: a document a client merely opened
        does not exist for the backend API (the store has no row for it)."""
        return bool(self.size or self.stored_seq or self.pending)

    def encode(self) -> bytes:
        return self.diff(b"\x00")

    # Changing

    def apply(self, update: bytes) -> None:
        """Apply a Yjs update and keep it for the store; Refusal (`invalid_update`) when the
        bytes are not one, with the document as it was."""
        _plausible(update)
        doc = self._doc
        try:
            doc.apply_update(update)
        except ValueError as exc:
            raise invalid_update(str(exc).split(":")[0]) from None
        except _SYSTEM_EXITS:
            raise
        except BaseException as exc:
            # yrs failed part-way (RuntimeError, or a Rust panic, which is a BaseException):
            # the Doc may hold part of the update. Rebuild it from what was accepted.
            logger.warning(
                "an update failed part-way; rebuilding the document",
                extra={
                    "event": "document_rebuilt",
                    "project_id": self.key.project_id,
                    "error": type(exc).__name__,
                },
            )
            self._doc = self._build()
            raise invalid_update("it does not fit the document") from None
        self._captured.clear()
        self._settle(update)
        self._log.append(update)
        self.size += len(update)

    def _settle(self, update: bytes) -> None:
        # yrs can drop an update it held back for a missing dependency when a later one was
        # integrated across the gap (docs/documents.md): keep what the state vector does not
        # cover yet, and apply it again until it does.
        state = self._doc.get_state()
        if _holds_structs(get_update(update, state)):
            self._unsettled.append(update)
        elif not self._unsettled:
            return
        while self._unsettled:
            waiting = list(self._unsettled)
            self._unsettled.clear()
            for held in waiting:
                self._doc.apply_update(held)
            after = self._doc.get_state()
            self._unsettled.extend(u for u in waiting if _holds_structs(get_update(u, after)))
            if after == state:
                break
            state = after
        self._captured.clear()

    def insert_text(self, text: str) -> bytes:
        """Insert `text` at the start of the document's text; the update it made."""
        self._captured.clear()
        self._doc.get(self.text_name, type=Text).insert(0, text)
        update = merge_updates(*self._captured) if self._captured else EMPTY_UPDATE
        self._captured.clear()
        self._log.append(update)
        self.size += len(update)
        return update

    # Compaction

    def snapshot(self) -> tuple[bytes, int, int]:
        """(a snapshot of everything applied, the seq it covers at least, the number of log
        entries that seq covers), for the store's `compact`."""
        if self._unsettled:
            # Held-back parts are in no encoding of the Doc: merge the raw updates instead.
            snapshot = merge_updates(*([self._base] if self._base else []), *self._log)
        else:
            snapshot = self._doc.get_update()
        return snapshot, self.stored_seq, self._stored_entries

    def compacted(self, snapshot: bytes, entries: int) -> None:
        """The store now holds `snapshot` in place of the first `entries` log entries."""
        self._base = snapshot
        del self._log[:entries]
        self._stored_entries -= entries
        self.appends_since_compaction = 0
        self.size = len(snapshot) + sum(map(len, self._log))

    def stored(self, seq: int, entries: int) -> None:
        """`entries` more log entries are durable, the last under `seq`."""
        self.stored_seq = seq
        self._stored_entries += entries
        self.appends_since_compaction += 1
