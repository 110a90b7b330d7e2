"""A document's awareness states (who is where), kept by the server so a joiner gets them all.

The format is y-protocols' awareness update: varUint(n), then n times varUint(clientID),
varUint(clock), varString(JSON state, "null" when the client left). An entry is replaced only
by a higher clock, or by a removal at the same clock, as y-protocols' applyAwarenessUpdate does.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic_core import from_json

from app.documents.lib0 import Reader, Truncated, write_var_string, write_var_uint

NULL_STATE = "null"
# Live states per document. A tab has one; thousands means a client inventing ids.
MAX_STATES = 1024
# A state is a name, a colour and a cursor: a few hundred bytes. Every joiner gets them all,
# so a document's states are bounded in bytes too.
MAX_STATE_BYTES = 16 * 1024
MAX_STATES_BYTES = 1024 * 1024


class AwarenessRefused(ValueError):
    """The bytes are not an awareness update, or would take the document past its cap."""


@dataclass(slots=True)
class _Entry:
    clock: int
    state: str
    # The connection that announced it: its entries are removed when it closes.
    owner: str


class AwarenessStates:
    """The latest state of each awareness client of one document."""

    __slots__ = ("_bytes", "_entries")

    def __init__(self) -> None:
        # Removed entries are kept (state "null") only for their clock, until the cap needs room.
        self._entries: dict[int, _Entry] = {}
        # The live states' JSON, in characters.
        self._bytes = 0

    def __len__(self) -> int:
        return sum(1 for entry in self._entries.values() if entry.state != NULL_STATE)

    def apply(self, update: bytes, owner: str) -> bool:
        """Take in an awareness update from connection `owner`; True if anything changed.
        Raises AwarenessRefused and changes nothing when the bytes are not an update."""
        changes = _decode(update)
        live = len(self)
        size = self._bytes
        entries = self._entries
        accepted: list[tuple[int, int, str]] = []
        for client, clock, state in changes:
            if len(state) > MAX_STATE_BYTES:
                raise AwarenessRefused(f"expected a state of at most {MAX_STATE_BYTES} bytes")
            current = entries.get(client)
            if current is not None and not (
                current.clock < clock
                or (current.clock == clock and state == NULL_STATE != current.state)
            ):
                continue
            was_live = current is not None and current.state != NULL_STATE
            live += (state != NULL_STATE) - was_live
            size += _live_size(state) - (_live_size(current.state) if current else 0)
            accepted.append((client, clock, state))
        if live > MAX_STATES:
            raise AwarenessRefused(f"expected at most {MAX_STATES} awareness states a document")
        if size > MAX_STATES_BYTES:
            raise AwarenessRefused(
                f"expected at most {MAX_STATES_BYTES} bytes of awareness states a document"
            )
        self._bytes = size
        for client, clock, state in accepted:
            entries[client] = _Entry(clock, state, owner)
        if len(entries) > 2 * MAX_STATES:
            for client in [c for c, e in entries.items() if e.state == NULL_STATE]:
                del entries[client]
        return bool(accepted)

    def encode(self) -> bytes | None:
        """Every live state as one update, or None when there is none."""
        live = [(c, e) for c, e in self._entries.items() if e.state != NULL_STATE]
        if not live:
            return None
        return _encode([(client, entry.clock, entry.state) for client, entry in live])

    def remove_owner(self, owner: str) -> bytes | None:
        """Remove the live states `owner` announced; the update that tells the others, or None.

        The removal keeps the entry's clock, as the y-websocket server's does: a null state at
        the same clock removes it everywhere, and the client's next announcement (its clock + 1)
        is taken at once when it reconnects. A higher clock would make that one look stale."""
        removed: list[tuple[int, int, str]] = []
        for client, entry in self._entries.items():
            if entry.owner == owner and entry.state != NULL_STATE:
                self._bytes -= len(entry.state)
                entry.state = NULL_STATE
                removed.append((client, entry.clock, NULL_STATE))
        return _encode(removed) if removed else None


def _live_size(state: str) -> int:
    return 0 if state == NULL_STATE else len(state)


def _decode(update: bytes) -> list[tuple[int, int, str]]:
    reader = Reader(update)
    try:
        count = reader.var_uint()
        # Each entry takes at least three bytes: a count beyond that is a lie, not a big update.
        if count * 3 > len(update):
            raise AwarenessRefused(f"expected at most {len(update) // 3} entries, got {count}")
        changes = []
        for _ in range(count):
            client = reader.var_uint()
            clock = reader.var_uint()
            state = reader.var_string()
            # Every client JSON.parses it: one bad state would break everyone's awareness.
            from_json(state)
            changes.append((client, clock, state))
    except Truncated as exc:
        raise AwarenessRefused(f"not an awareness update: {exc}") from None
    except ValueError:
        raise AwarenessRefused("not an awareness update: a state is not JSON") from None
    if not reader.done:
        raise AwarenessRefused("not an awareness update: bytes after its last entry")
    return changes


def _encode(changes: list[tuple[int, int, str]]) -> bytes:
    out = bytearray()
    write_var_uint(out, len(changes))
    for client, clock, state in changes:
        write_var_uint(out, client)
        write_var_uint(out, clock)
        write_var_string(out, state)
    return bytes(out)
