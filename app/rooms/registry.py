"""Rooms on this instance: membership, presence announcements and local fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic_core import to_json

from app.admission.revocations import DEFAULT_REVOCATION_MEMORY, Revocations
from app.broadcaster.base import Broadcaster, Member
from app.errors import CloseCode, Refusal
from app.fanout.broadcast import broadcast
from app.fanout.connection import Connection
from app.metrics import Metrics
from app.protocols.json.messages import RELAYED_TYPES, SERVER_ONLY_TYPES
from app.rooms.events import Author, InstanceEvent, Resync, Revoke, RoomEvent
from app.rooms.room import NoHooks, Room, RoomHooks

logger = logging.getLogger("texflow.registry")

SERVICE_CLIENT_ID = "service"
# The author of what the server itself sends a room (updates fetched from the store).
_SERVER_AUTHOR = Author("server", "server", "server")
KNOWN_TYPES = RELAYED_TYPES | SERVER_ONLY_TYPES


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    room_id: str
    client_count: int
    created_at: datetime
    last_activity: datetime


def _member(connection: Connection) -> Member:
    return Member(connection.client_id, connection.user_id, connection.username)


class RoomRegistry:
    """Owns the rooms of this instance and is the broadcaster's listener.

    `grace` is how long an empty room stays open (0: dropped with its last member).
    """

    def __init__(
        self,
        broadcaster: Broadcaster,
        metrics: Metrics,
        hooks: RoomHooks | None = None,
        grace: float = 0.0,
        revocations: Revocations | None = None,
    ) -> None:
        self._broadcaster = broadcaster
        # Written here, where every instance learns of a revocation; read by admission.
        self.revocations = (
            Revocations(DEFAULT_REVOCATION_MEMORY) if revocations is None else revocations
        )
        self._metrics = metrics
        self._hooks: RoomHooks = hooks or NoHooks()
        self._grace = grace
        self._rooms: dict[str, Room] = {}
        # Rooms being closed (flushed, unsubscribed): a new room of the project waits for it.
        self._closing: dict[str, asyncio.Task[None]] = {}
        self._connections = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._refreshes: dict[str, asyncio.Task[None]] = {}
        self._refresh_again: set[str] = set()
        self.accepting = False

    async def start(self) -> None:
        await self._broadcaster.start(self)
        self.accepting = True

    async def stop(self, grace: float = 2.0) -> None:
        """Close what is still open, let sessions leave (bounded), close every room, then stop
        the broadcaster."""
        self.accepting = False
        for connection in self._members():
            connection.close(CloseCode.SERVICE_RESTART, "service restart")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        # Every room is closed (flushed) before the broadcaster stops, members or not: a
        # session still leaving finds its room gone and has nothing left to do.
        for room in list(self._rooms.values()):
            self._drop(room)
        if self._closing:
            await asyncio.wait(self._closing.values())
        await self._broadcaster.stop()
        for task in list(self._refreshes.values()):
            task.cancel()
        for task in list(self._refreshes.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self, window: float) -> None:
        """Stop accepting and close every connection with 1012, spread over half of `window`
        so clients do not reconnect all at once, then wait for their sessions to leave."""
        self.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window * 0.8
        connections = self._members()
        logger.info(
            "draining",
            extra={"event": "drain_started", "connections": len(connections), "window_s": window},
        )
        batches = max(1, min(len(connections), 20))
        pause = window * 0.5 / batches
        for index in range(batches):
            for connection in connections[index::batches]:
                connection.close(CloseCode.SERVICE_RESTART, "service restart")
            if index + 1 < batches:
                await asyncio.sleep(pause)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - loop.time()))

    def _members(self) -> list[Connection]:
        return [c for room in self._rooms.values() for c in room.connections.values()]

    def room_counts(self) -> dict[str, int]:
        return {p: len(room.connections) for p, room in self._rooms.items() if room.connections}

    def member(self, project_id: str, client_id: str) -> Connection | None:
        """The connection `client_id` of the project, if it is on this instance."""
        room = self._rooms.get(project_id)
        return room.connections.get(client_id) if room is not None else None

    def members(self, project_id: str) -> list[Connection]:
        """This instance's connections in the project."""
        room = self._rooms.get(project_id)
        return [] if room is None else list(room.connections.values())

    @property
    def connection_count(self) -> int:
        return self._connections

    def snapshot(self) -> list[RoomSnapshot]:
        return [
            RoomSnapshot(
                room_id=room.project_id,
                client_count=len(room.connections),
                created_at=datetime.fromtimestamp(room.created_at, UTC),
                last_activity=datetime.fromtimestamp(room.last_activity, UTC),
            )
            for room in self._rooms.values()
            if room.connections
        ]

    # Membership

    async def join(self, connection: Connection) -> None:
        """Add `connection` to its project's room; it gets `presence_state` before anything else."""
        project_id = connection.project_id
        room = self._rooms.get(project_id)
        if room is None:
            room = Room(project_id, self._broadcaster, self._hooks, self._closing.get(project_id))
            self._rooms[project_id] = room
            self._metrics.total_rooms.set(len(self._rooms))
        try:
            await room.enter()
        except BaseException:
            self._release(room)  # a room that failed to open is not kept
            raise
        member = _member(connection)
        try:
            first = await self._broadcaster.add_member(project_id, member)
            members = await self._broadcaster.members(project_id)
        except BaseException:
            room.abandon()
            self._release(room)
            # The member may have been added before the join was interrupted: never a ghost.
            await asyncio.shield(self._broadcaster.remove_member(project_id, member))
            raise
        # No await from here on: presence_state is queued before any relay can reach the room.
        self.send(connection, "presence_state", {"users": _users(members)})
        room.admit(connection)
        self._connections += 1
        self._idle.clear()
        if first:
            self._announce(connection, "user_joined")

    async def leave(self, connection: Connection) -> None:
        """Remove `connection`; announce `user_left` if it was the user's last one anywhere."""
        project_id = connection.project_id
        room = self._rooms.get(project_id)
        if room is None or not room.remove(connection):
            return
        self._connections -= 1
        if not self._connections:
            self._idle.set()
        last = await self._broadcaster.remove_member(project_id, _member(connection))
        if last:
            self._announce(connection, "user_left")
        closing = self._release(room)
        if closing is not None:
            # wait(), not await: the close is the registry's, and neither its failure nor
            # this session's cancellation belongs to the other.
            await asyncio.wait({closing})

    def _release(self, room: Room) -> asyncio.Task[None] | None:
        """Drop `room` now or after the grace period, if nobody is in it or on the way."""
        if not room.idle or self._rooms.get(room.project_id) is not room:
            return None
        if self._grace > 0 and self.accepting:
            room.close_after(self._grace, lambda: self._expire(room))
            return None
        return self._drop(room)

    def _expire(self, room: Room) -> None:
        if room.idle and self._rooms.get(room.project_id) is room:
            self._drop(room)

    def _drop(self, room: Room) -> asyncio.Task[None]:
        project_id = room.project_id
        del self._rooms[project_id]
        self._metrics.total_rooms.set(len(self._rooms))
        task = asyncio.create_task(self._close(room), name=f"close room {project_id}")
        self._closing[project_id] = task
        return task

    async def _close(self, room: Room) -> None:
        try:
            await room.close()
        except Exception:
            logger.exception(
                "closing a room failed",
                extra={"event": "room_close_failed", "project_id": room.project_id},
            )
        finally:
            if self._closing.get(room.project_id) is asyncio.current_task():
                del self._closing[room.project_id]

    # Messages

    def relay(
        self,
        sender: Connection,
        message_type: str,
        payload: Mapping[str, Any],
        *,
        applied: bool = False,
    ) -> None:
        """Send a client's message to every other connection of its project, on every instance.
        A room hook may refuse it (Refusal): then nobody gets it. `applied`: the caller has
        done what the hook would (a document update already applied), so the hook is skipped."""
        event = RoomEvent(
            sender.project_id,
            message_type,
            to_json(payload),
            sender.author,
            time.time(),
            exclude=sender.client_id,
        )
        room = self._rooms.get(sender.project_id)
        if room is not None and not applied:
            room.apply(event)
        self._publish(room, event)

    def _publish(self, room: Room | None, event: RoomEvent) -> int:
        # Published first: the PUBLISH is handed to the socket (written at once unless its
        # buffer is backed up) before the local fan-out starts, so other instances fan out
        # while this one does.
        self._broadcaster.publish(event)
        return self._fan_out(room, event)

    def send(
        self,
        connection: Connection,
        message_type: str,
        payload: Mapping[str, Any],
        *,
        reply: bool = False,
    ) -> None:
        """Send a server message to one connection, stamped with that connection's identity
        (`reply`: see Connection.deliver)."""
        event = RoomEvent(
            connection.project_id, message_type, to_json(payload), connection.author, time.time()
        )
        if connection.send(event, reply=reply):
            self._metrics.sent(message_type)

    def publish_event(
        self,
        project_id: str,
        message_type: str,
        payload: Mapping[str, Any],
        *,
        user_id: str,
        username: str,
        applied: bool = False,
    ) -> int:
        """A backend service's event for every connection of the project, on every instance.
        Returns how many connections on this instance got it."""
        event = RoomEvent(
            project_id,
            message_type,
            to_json(payload),
            Author(user_id, username, SERVICE_CLIENT_ID),
            time.time(),
        )
        room = self._rooms.get(project_id)
        if room is not None and not applied:
            room.apply(event)
        return self._publish(room, event)

    def deliver_local(self, project_id: str, message_type: str, payload: Mapping[str, Any]) -> int:
        """A server event for every connection of the project on this instance only (each
        instance makes its own); returns how many got it."""
        room = self._rooms.get(project_id)
        if room is None:
            return 0
        event = RoomEvent(project_id, message_type, to_json(payload), _SERVER_AUTHOR, time.time())
        return self._fan_out(room, event)

    def revoke(self, project_id: str, user_id: str) -> int:
        """Close the user's connections in the project with 4003, on every instance.
        Returns how many were open on this instance."""
        self.revocations.revoke(project_id, user_id)
        closed = self._close_user(project_id, user_id)
        self._broadcaster.publish(Revoke(project_id, user_id))
        return closed

    def _close_user(self, project_id: str, user_id: str) -> int:
        room = self._rooms.get(project_id)
        if room is None:
            return 0
        doomed = [c for c in room.connections.values() if c.user_id == user_id]
        for connection in doomed:
            self.send(
                connection,
                "error",
                {"code": "access_revoked", "message": "access to this project was revoked"},
            )
            connection.close(CloseCode.ACCESS_REVOKED, "access revoked")
        return len(doomed)

    def _announce(self, connection: Connection, message_type: str) -> None:
        # Presence is not document content: no hook sees it, none can refuse it.
        payload = {"user_id": connection.user_id, "username": connection.username}
        event = RoomEvent(
            connection.project_id,
            message_type,
            to_json(payload),
            connection.author,
            time.time(),
            exclude=connection.client_id,
        )
        self._publish(self._rooms.get(connection.project_id), event)

    def _fan_out(self, room: Room | None, event: RoomEvent) -> int:
        if room is None:
            return 0
        room.last_activity = event.timestamp
        delivered = broadcast(event, room.connections)
        if delivered:
            self._metrics.sent(event.type, delivered)
        return delivered

    # Presence refresh

    async def refreshed(self) -> None:
        """Wait for the presence refreshes in flight."""
        while self._refreshes:
            await asyncio.gather(*self._refreshes.values(), return_exceptions=True)

    def _refresh_presence(self, project_id: str) -> None:
        """Send the room a fresh presence_state (`resync: true`), in a task of its own; a
        request during a refresh runs one more, so the last one reflects the latest state."""
        if project_id not in self._rooms:
            return
        if project_id in self._refreshes:
            self._refresh_again.add(project_id)
            return
        task = asyncio.create_task(self._send_presence(project_id), name=f"resync {project_id}")
        self._refreshes[project_id] = task

    async def _send_presence(self, project_id: str) -> None:
        try:
            while True:
                self._refresh_again.discard(project_id)
                members = await self._broadcaster.members(project_id)
                room = self._rooms.get(project_id)
                if room is not None:
                    payload = {"users": _users(members), "resync": True}
                    for connection in list(room.connections.values()):
                        self.send(connection, "presence_state", payload)
                if project_id not in self._refresh_again:
                    return
        except Exception:
            logger.exception("presence refresh failed", extra={"event": "resync_failed"})
        finally:
            self._refreshes.pop(project_id, None)

    # Listener

    def on_reconnected(self) -> None:
        for project_id in list(self._rooms):
            self._broadcaster.publish(Resync(project_id))
            self._refresh_presence(project_id)

    def on_remote(self, event: InstanceEvent) -> None:
        if isinstance(event, RoomEvent):
            if event.type not in KNOWN_TYPES:
                # A newer release's message type: relayed among its own instances only.
                self._metrics.instance_events_skipped.labels("unknown_type").inc()
                return
            room = self._rooms.get(event.project_id)
            if room is not None:
                try:
                    room.apply(event)
                except Refusal as refusal:
                    # Accepted where it was sent: a hook that disagrees here is our fault.
                    logger.error(
                        "an event from another instance was refused here",
                        extra={"event": "remote_event_refused", "code": refusal.code},
                    )
                    return
            self._fan_out(room, event)
        elif isinstance(event, Revoke):
            self.revocations.revoke(event.project_id, event.user_id)
            self._close_user(event.project_id, event.user_id)
        else:
            self._refresh_presence(event.project_id)

    def on_remote_member_gone(self, project_id: str, member: Member, user_gone: bool) -> None:
        if not user_gone:
            return
        event = RoomEvent(
            project_id,
            "user_left",
            to_json({"user_id": member.user_id, "username": member.username}),
            Author(member.user_id, member.username, member.client_id),
            time.time(),
        )
        self._publish(self._rooms.get(project_id), event)


def _users(members: list[Member]) -> list[dict[str, Any]]:
    users: dict[str, dict[str, Any]] = {}
    for member in members:
        user = users.get(member.user_id)
        if user is None:
            users[member.user_id] = {
                "user_id": member.user_id,
                "username": member.username,
                "connections": 1,
            }
        else:
            user["connections"] += 1
    return list(users.values())
