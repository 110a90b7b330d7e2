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
# Updates yrs holds back for a missing dependency, kept to be applied again until they are
# integrated (and carried in snapshots and diffs meanwhile). Each later update re-applies them,
# so they are bounded: past this, an update that would be held back too is refused.
MAX_UNSETTLED_BYTES = 256 * 1024
_SYSTEM_EXITS = (KeyboardInterrupt, SystemExit, asyncio.CancelledError)


def invalid_update(why: str) -> Refusal:
    return Refusal("invalid_update", f"expected a Yjs update (v1 encoding): {why}")


def _plausible(data: bytes) -> bool:
    """False for bytes whose first count claims more entries than they have bytes: yrs reserves
    memory for that count before reading any (5 bytes made it allocate 518 MiB), in updates and
    state vectors alike."""
    try:
        count = Reader(data).var_uint()
    except Truncated:
        return False
    return count <= len(data)


def _clocks(state: bytes) -> dict[int, int]:
    reader = Reader(state)
    return {reader.var_uint(): reader.var_uint() for _ in range(reader.var_uint())}


def _uncovered(update: bytes, state: bytes) -> bool:
    """Whether `update` holds something a Doc at `state` has not integrated: structs past its
    state vector, or deletions of items it has not got (both held back by yrs, and missing
    from every encoding of the Doc)."""
    diff = get_update(update, state)
    # A v1 update: the number of clients with structs, then theirs, then the delete set.
    if diff[0] != 0:
        return True
    if len(diff) <= 2:
        return False
    clocks = _clocks(state)
    reader = Reader(diff)
    reader.var_uint()
    for _ in range(reader.var_uint()):
        client = reader.var_uint()
        known = clocks.get(client, 0)
        for _ in range(reader.var_uint()):
            if reader.var_uint() + reader.var_uint() > known:
                return True
    return False


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
        self.waiters: set[asyncio.Future[None]] = set()
        # Set whenever `pending` empties: what an unload waits for.
        self.flushed = asyncio.Event()
        self.flushed.set()
        # The store's numbering: the last seq stored, and how many log entries are stored.
        # The store's numbering, shared by every instance writing the document: every seq up to
        # applied_seq is in this Doc; seqs this instance stored past a gap wait in _own until
        # the updates of the gap are fetched (Library.catch_up).
        self.applied_seq = stored.last_seq if stored else 0
        self._own: set[int] = set()
        # The last seq this instance stored, and the seq of the snapshot the store holds.
        self.stored_seq = 0
        self.compacted_seq = stored.snapshot_seq if stored else 0
        self._stored_entries = len(stored.updates) if stored else 0
        self._base: bytes | None = stored.snapshot if stored else None
        self._log: list[bytes] = list(stored.updates) if stored else []
        self.size = len(self._base or b"") + sum(map(len, self._log))
        self._unsettled: list[bytes] = []
        self._captured: list[bytes] = []
        self._doc = self._build()

    def _build(self) -> Doc[Text]:
        """A Doc holding the snapshot and the log. They are merged and applied at once: applied
        one by one in arrival order, yrs can lose an update that came before its dependency
        (docs/documents.md); merged, each client's structs come in order."""
        # Observed from the start, before any stored state is applied: a change made by the
        # server itself (seeding from text) is captured whatever came before it.
        doc: Doc[Text] = Doc()
        doc.observe(self._on_change)
        parts = ([self._base] if self._base else []) + self._log
        if len(parts) == 1:
            doc.apply_update(parts[0])
        elif parts:
            try:
                merged = merge_updates(*parts)
            except Exception:
                # Bytes yrs applies but cannot merge (trailing junk): one by one, repaired below.
                for part in parts:
                    doc.apply_update(part)
            else:
                doc.apply_update(merged)
        state = doc.get_state()
        self._unsettled = [part for part in parts if _uncovered(part, state)]
        self._repair(doc, state)
        self._captured.clear()
        return doc

    def _repair(self, doc: Doc[Text], state: bytes) -> None:
        # yrs can drop an update it held back for a missing dependency when a later one was
        # integrated across the gap (docs/documents.md): apply what the Doc has not integrated
        # again, until it stops changing anything.
        while self._unsettled:
            waiting = self._unsettled
            for held in waiting:
                doc.apply_update(held)
            after = doc.get_state()
            self._unsettled = [held for held in waiting if _uncovered(held, after)]
            if after == state:
                break
            state = after

    def flushed_then(self, callback: Callable[[], None]) -> None:
        """Call `callback` once no write is pending (now if none is)."""
        if not self.pending:
            callback()
            return

        async def later() -> None:
            await self.flushed.wait()
            callback()

        # Owned by the event loop only until the writes are stored: the writer's drain sets
        # `flushed` or is cancelled at shutdown, when the library cancels what is left.
        self.waiters.add(task := asyncio.ensure_future(later()))
        task.add_done_callback(self.waiters.discard)

    def _on_change(self, event: TransactionEvent) -> None:
        self._captured.append(event.update)

    # Reading

    def state_vector(self) -> bytes:
        return self._doc.get_state()

    def diff(self, state_vector: bytes) -> bytes:
        """What a peer at `state_vector` lacks (held-back updates included)."""
        refusal = Refusal(
            "invalid_state_vector", "expected a Yjs state vector (Y.encodeStateVector)"
        )
        if not _plausible(state_vector):
            raise refusal
        try:
            update = self._doc.get_update(state_vector)
        except ValueError:
            raise refusal from None
        if self._unsettled:
            update = merge_updates(update, *self._unsettled)
        return update

    def text(self) -> str:
        return str(self._doc.get(self.text_name, type=Text))

    @property
    def written(self) -> bool:
        """Whether anything was ever applied or stored: a document a client merely opened
        does not exist for the backend API (the store has no row for it)."""
        return bool(self.size or self.applied_seq or self.stored_seq or self.pending)

    def encode(self) -> bytes:
        return self.diff(b"\x00")

    # Changing

    def apply(self, update: bytes, *, keep_unchanged: bool = True) -> bool:
        """Apply a Yjs update and keep it for the store; Refusal (`invalid_update`) when the
        bytes are not one, with the document as it was. Returns whether it changed anything
        (or is held back); one that did not is kept only with `keep_unchanged`."""
        if not _plausible(update):
            raise invalid_update("its first count is larger than the update")
        try:
            self._doc.apply_update(update)
        except ValueError as exc:
            raise invalid_update(str(exc).split(":")[0]) from None
        except _SYSTEM_EXITS:
            raise
        except BaseException as exc:
            # yrs failed part-way (RuntimeError, or a Rust panic, which is a BaseException):
            # the Doc may hold part of the update. Rebuild it from what was accepted.
            self._rebuild(exc)
            raise invalid_update("it does not fit the document") from None
        try:
            self._settle(update)
        except Refusal:
            self._rebuild(None)
            raise
        except _SYSTEM_EXITS:
            raise
        except BaseException as exc:
            # Applying a held-back update again failed the same way.
            self._rebuild(exc)
            raise invalid_update("it does not fit the document") from None
        changed = bool(self._captured) or update in self._unsettled
        self._captured.clear()
        if changed or keep_unchanged:
            self._log.append(update)
            self.size += len(update)
        return changed

    def _rebuild(self, cause: BaseException | None) -> None:
        """Back to exactly what was accepted: the snapshot and the log, without the update
        that was being applied."""
        if cause is not None:
            logger.warning(
                "an update failed part-way; rebuilding the document",
                extra={
                    "event": "document_rebuilt",
                    "project_id": self.key.project_id,
                    "error": type(cause).__name__,
                },
            )
        self._doc = self._build()

    def _settle(self, update: bytes) -> None:
        # Keep what the Doc has not integrated yet, and apply it again until it has.
        state = self._doc.get_state()
        if _uncovered(update, state):
            if sum(map(len, self._unsettled)) + len(update) > MAX_UNSETTLED_BYTES:
                raise invalid_update(
                    "it depends on updates the server does not have, and too many such wait "
                    "already: run the sync step"
                )
            self._unsettled.append(update)
        self._repair(self._doc, state)

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
        snapshot = self._doc.get_update()
        if self._unsettled:
            # Held-back parts are in no encoding of the Doc: merged in, raw.
            snapshot = merge_updates(snapshot, *self._unsettled)
        return snapshot, self.applied_seq, self._stored_entries

    @property
    def log_length(self) -> int:
        """Updates in the store's log since its snapshot, as far as this instance knows."""
        return max(self.applied_seq, self.stored_seq) - self.compacted_seq

    def compacted(self, snapshot: bytes, through_seq: int, entries: int) -> None:
        """The store now holds `snapshot` through `through_seq`, in place of the first
        `entries` log entries (the snapshot holds everything applied when it was taken, so the
        in-memory log may lose any of those)."""
        self._base = snapshot
        del self._log[:entries]
        self._stored_entries -= entries
        self.compacted_seq = max(self.compacted_seq, through_seq)
        self.size = len(snapshot) + sum(map(len, self._log))

    def stored(self, seq: int, entries: int) -> None:
        """`entries` more log entries are durable, the last under `seq`."""
        self.stored_seq = max(self.stored_seq, seq)
        self._stored_entries += entries
        if seq == self.applied_seq + 1:
            self.applied_seq = seq
            own = self._own
            while self.applied_seq + 1 in own:
                self.applied_seq += 1
                own.discard(self.applied_seq)
        elif seq > self.applied_seq:
            # Other instances stored the seqs between: fetched by the next catch-up.
            self._own.add(seq)

    def integrate(self, stored: StoredDocument) -> list[bytes]:
        """Apply what the store holds after `applied_seq` (from `DocumentStore.since`) and
        that this instance has not stored itself; the updates applied, for local clients."""
        applied: list[bytes] = []
        first = stored.snapshot_seq + 1
        parts = [] if stored.snapshot is None else [stored.snapshot]
        parts += [
            update
            for seq, update in enumerate(stored.updates, first)
            if seq > self.applied_seq and seq not in self._own
        ]
        for update in parts:
            if update == EMPTY_UPDATE:
                continue
            try:
                # Most were applied live already (relayed from the instance that stored them).
                if not self.apply(update, keep_unchanged=False):
                    continue
            except Refusal as refusal:
                # Accepted where it was stored: a document that disagrees is our fault.
                logger.error(
                    "a stored update does not apply here",
                    extra={"event": "stored_update_refused", "code": refusal.code},
                )
                continue
            self._stored_entries += 1
            applied.append(update)
        self.applied_seq = max(self.applied_seq, stored.last_seq)
        self._own = {seq for seq in self._own if seq > self.applied_seq}
        return applied
