"""Updates larger than one message, sent in parts (`yjs_update_part`) and reassembled here."""

from __future__ import annotations

from app.errors import Refusal


class Uploads:
    """One connection's updates in parts: at most one per document at a time, each bounded by
    `max_bytes`, and `max_bytes` for all of them together."""

    __slots__ = ("_max_bytes", "_parts", "_refused", "_total")

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        # document_id -> (the parts so far, the index expected next)
        self._parts: dict[str, tuple[list[bytes], int]] = {}
        self._total = 0
        # Uploads refused once: their remaining parts are dropped without a word, or a client
        # sending a 30 MiB paste would collect an error per part and be closed for it.
        self._refused: set[str] = set()

    def add(self, document_id: str, index: int, data: bytes, final: bool) -> bytes | None:
        """Take one part; the whole update once `final` arrives, else None. A part out of
        sequence discards the upload (Refusal `invalid_part`): the client starts it again.
        After a refusal, the upload's other parts are dropped until a part 0 starts anew."""
        if document_id in self._refused:
            if index != 0:
                return None
            self._refused.discard(document_id)
        parts, expected = self._parts.get(document_id, ([], 0))
        if index == 0 and expected:
            # A new upload replaces one never finished (its client reconnected, say).
            self._discard(document_id)
            parts, expected = [], 0
        if index != expected:
            self._discard(document_id)
            self._refuse(document_id, final)
            raise Refusal(
                "invalid_part",
                f"expected part {expected} of the update for {document_id!r}, got part {index}; "
                "send the update again from part 0",
            )
        if self._total + len(data) > self._max_bytes:
            self._discard(document_id)
            self._refuse(document_id, final)
            raise Refusal(
                "document_too_large",
                f"an update in parts may hold at most {self._max_bytes} bytes",
                status=413,
            )
        parts.append(data)
        self._total += len(data)
        if not final:
            self._parts[document_id] = (parts, index + 1)
            return None
        self._parts.pop(document_id, None)
        self._total -= sum(map(len, parts))
        return b"".join(parts)

    def _refuse(self, document_id: str, final: bool) -> None:
        if not final and len(self._refused) < 64:
            self._refused.add(document_id)

    def _discard(self, document_id: str) -> None:
        parts, _ = self._parts.pop(document_id, ([], 0))
        self._total -= sum(map(len, parts))

    def clear(self) -> None:
        self._parts.clear()
        self._refused.clear()
        self._total = 0
