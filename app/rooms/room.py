"""One project's room on this instance: its members, and a lifecycle documents can hang on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from app.errors import Refusal
from app.rooms.events import RoomEvent

logger = logging.getLogger("texflow.rooms")

if TYPE_CHECKING:
    from app.broadcaster.base import Broadcaster
    from app.fanout.connection import Connection


# A room's opening: nobody has opened it, an entrant is opening it, or it is open.
_CLOSED = "closed"
_OPENING = "opening"
_OPEN = "open"


class RoomHooks(Protocol):
    """What a server-side document hangs on a room's lifecycle."""

    async def load(self, room: Room) -> None:
        """Before the first member is admitted; a failure refuses the members waiting."""

    def apply(self, room: Room, event: RoomEvent) -> None:
        """Each event of the room's, before it is relayed; a Refusal stops it there."""

    async def flush(self, room: Room) -> None:
        """After the last member left and the grace period ran out, before the room is dropped."""


class NoHooks:
    """A room that keeps nothing: the relay alone."""

    async def load(self, room: Room) -> None:
        return None

    def apply(self, room: Room, event: RoomEvent) -> None:
        return None

    async def flush(self, room: Room) -> None:
        return None


class Room:
    """The connections of one project on this instance.

    Lifecycle: the first entrant opens the room (subscribes to the project's events from
    other instances, then `load`s); concurrent entrants wait for that one opening. When the
    last member leaves, the room stays for a grace period, so that a reconnect does not pay
    for another opening; then the registry drops it and closes it (`flush`, unsubscribe). A
    project's next room opens only once every earlier one has closed.
    """

    __slots__ = (
        "_broadcaster",
        "_early",
        "_failed",
        "_grace_timer",
        "_hooks",
        "_previous",
        "_settled",
        "_state",
        "_subscribed",
        "connections",
        "created_at",
        "joining",
        "last_activity",
        "project_id",
    )

    def __init__(
        self,
        project_id: str,
        broadcaster: Broadcaster,
        hooks: RoomHooks,
        previous: asyncio.Task[None] | None = None,
    ) -> None:
        self.project_id = project_id
        self.connections: dict[str, Connection] = {}
        self.created_at = time.time()
        self.last_activity = self.created_at
        # Entrants on their way in: a room is not closed while someone is about to join.
        self.joining = 0
        self._broadcaster = broadcaster
        self._hooks = hooks
        # The closing of this project's previous room, which itself waited for the one before:
        # opening waits for it, so a document is never loaded while its last flush is still
        # being written, and an old unsubscribe never lands after this room's subscribe.
        self._previous = previous
        self._subscribed = False
        self._state = _CLOSED
        # Set when the opening in progress has succeeded or failed, for the entrants waiting.
        self._settled = asyncio.Event()
        self._failed = False
        # Events that came while the room was opening: applied once it is loaded.
        self._early: list[RoomEvent] = []
        self._grace_timer: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        """Nobody in it and nobody on the way in."""
        return not self.connections and not self.joining

    async def enter(self) -> None:
        """Wait until the room is open for one more member, opening it if nobody is; then
        `admit` or `abandon` must follow. Raises Refusal (`room_unavailable`) when the opening
        failed. The first entrant opens the room itself, without a task of its own: when
        nothing in the opening waits (the in-memory broadcaster, no document), a join never
        yields, so joins complete in the order they came."""
        self.joining += 1
        self.cancel_close()
        try:
            while self._state is not _OPEN:
                if self._state is _CLOSED:
                    await self._open_now()
                else:
                    settled = self._settled
                    await settled.wait()
                    if self._state is _CLOSED and self._failed:
                        # Everyone waiting on a failed opening is refused; a later entrant
                        # tries again.
                        raise _unavailable()
        except BaseException:
            self.joining -= 1
            raise

    async def _open_now(self) -> None:
        self._state = _OPENING
        self._settled = asyncio.Event()
        self._failed = False
        try:
            await self._open()
            early, self._early = self._early, []
            for event in early:
                self._apply(event)
        except Exception as exc:
            self._state = _CLOSED
            self._failed = True
            self._early = []
            logger.error(
                "a room could not be opened",
                exc_info=exc,
                extra={"event": "room_open_failed", "project_id": self.project_id},
            )
            raise _unavailable() from None
        except BaseException:
            # An opener that was cancelled (its client left) leaves no failure behind: an
            # entrant still waiting opens the room instead.
            self._state = _CLOSED
            raise
        else:
            self._state = _OPEN
        finally:
            self._settled.set()

    async def _open(self) -> None:
        await self._after_previous()
        self._subscribed = True
        await self._broadcaster.subscribe(self.project_id)
        await self._hooks.load(self)

    async def _after_previous(self) -> None:
        previous = self._previous
        if previous is not None:
            # wait(), not await: neither its failure (logged where it happened) nor this
            # caller's cancellation may cross over to the other side.
            await asyncio.wait({previous})
            self._previous = None

    def admit(self, connection: Connection) -> None:
        self.joining -= 1
        self.connections[connection.client_id] = connection
        self.last_activity = time.time()

    def abandon(self) -> None:
        """An entrant that did not become a member after all."""
        self.joining -= 1

    def remove(self, connection: Connection) -> bool:
        """Forget `connection`; False when it was not a member."""
        if self.connections.pop(connection.client_id, None) is None:
            return False
        self.last_activity = time.time()
        return True

    def apply(self, event: RoomEvent) -> None:
        """Hand `event` to the hooks: now when the room is open, once it is when it is opening,
        never once it is closing. A Refusal from an open room's hook stops the event."""
        if self._state is _OPEN:
            self._hooks.apply(self, event)
        elif self._state is _OPENING:
            self._early.append(event)

    def _apply(self, event: RoomEvent) -> None:
        try:
            self._hooks.apply(self, event)
        except Refusal as refusal:
            # Accepted where it was sent; refused here only by a fault of ours.
            logger.error(
                "an event that came while the room was opening was refused",
                extra={"event": "early_event_refused", "code": refusal.code},
            )

    def close_after(self, grace: float, expire: Callable[[], None]) -> None:
        """Call `expire` in `grace` seconds unless someone enters first."""
        self.cancel_close()
        self._grace_timer = asyncio.get_running_loop().call_later(grace, expire)

    def cancel_close(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None

    async def close(self) -> None:
        """Flush and stop receiving the project's events, once the registry has dropped the
        room; an earlier room of the project finishes closing first."""
        self.cancel_close()
        opened, self._state = self._state is _OPEN, _CLOSED
        await self._after_previous()
        try:
            if opened:
                await self._hooks.flush(self)
        finally:
            if self._subscribed:
                self._subscribed = False
                await self._broadcaster.unsubscribe(self.project_id)


def _unavailable() -> Refusal:
    return Refusal(
        "room_unavailable", "this project cannot be opened right now: try again", status=503
    )
