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

from app.broadcaster.base import Broadcaster, Member, RoomEvent
from app.errors import CloseCode
from app.fanout.connection import Connection
from app.metrics import Metrics
from app.protocols.json.messages import encode_envelope
from app.socket.transport import text_frame

logger = logging.getLogger("texflow.registry")

# A control event between instances: close a user's connections in the project.
REVOKE = "texflow.revoke"
# A control event between instances: presence in the project may have changed unseen.
RESYNC = "texflow.resync"
SERVICE_CLIENT_ID = "service"


class Room:
    """The connections of one project on this instance."""

    __slots__ = (
        "connections",
        "created_at",
        "joining",
        "last_activity",
        "project_id",
        "subscribed",
    )

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        self.connections: dict[str, Connection] = {}
        self.created_at = time.time()
        self.last_activity = self.created_at
        # Joins in progress: a room is not removed while someone is on the way in.
        self.joining = 0
        # Set once this instance receives the project's events from other instances.
        self.subscribed = asyncio.Event()


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    room_id: str
    client_count: int
    created_at: datetime
    last_activity: datetime


def _member(connection: Connection) -> Member:
    return Member(connection.client_id, connection.user_id, connection.username)


class RoomRegistry:
    """Owns the rooms of this instance and is the broadcaster's listener."""

    def __init__(self, broadcaster: Broadcaster, metrics: Metrics) -> None:
        self._broadcaster = broadcaster
        self._metrics = metrics
        self._rooms: dict[str, Room] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._refreshes: dict[str, asyncio.Task[None]] = {}
        self._refresh_again: set[str] = set()
        self.accepting = False

    async def start(self) -> None:
        await self._broadcaster.start(self)
        self.accepting = True

    async def stop(self, grace: float = 2.0) -> None:
        """Close what is still open, let sessions leave (bounded), then stop the broadcaster."""
        self.accepting = False
        for connection in self._connections():
            connection.close(CloseCode.SERVICE_RESTART, "service restart")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
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
        connections = self._connections()
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

    def _connections(self) -> list[Connection]:
        return [c for room in self._rooms.values() for c in room.connections.values()]

    def room_counts(self) -> dict[str, int]:
        return {project: len(room.connections) for project, room in self._rooms.items()}

    @property
    def connection_count(self) -> int:
        return sum(len(room.connections) for room in self._rooms.values())

    def snapshot(self) -> list[RoomSnapshot]:
        return [
            RoomSnapshot(
                room_id=room.project_id,
                client_count=len(room.connections),
                created_at=datetime.fromtimestamp(room.created_at, UTC),
                last_activity=datetime.fromtimestamp(room.last_activity, UTC),
            )
            for room in self._rooms.values()
        ]

    async def join(self, connection: Connection) -> None:
        """Add `connection` to its project's room; it gets `presence_state` before anything else."""
        project_id = connection.project_id
        room = self._rooms.get(project_id)
        created = room is None
        if room is None:
            room = Room(project_id)
            self._rooms[project_id] = room
            self._metrics.total_rooms.set(len(self._rooms))
        room.joining += 1
        try:
            if created:
                try:
                    await self._broadcaster.subscribe(project_id)
                finally:
                    room.subscribed.set()
            else:
                await room.subscribed.wait()
            first = await self._broadcaster.add_member(project_id, _member(connection))
            members = await self._broadcaster.members(project_id)
        finally:
            room.joining -= 1
        # No await from here on: presence_state is queued before any relay can reach the room.
        self.send(connection, "presence_state", {"users": _users(members)})
        room.connections[connection.client_id] = connection
        self._idle.clear()
        room.last_activity = time.time()
        if first:
            self._announce(connection, "user_joined")

    async def leave(self, connection: Connection) -> None:
        """Remove `connection`; announce `user_left` if it was the user's last one anywhere."""
        project_id = connection.project_id
        room = self._rooms.get(project_id)
        if room is None or room.connections.pop(connection.client_id, None) is None:
            return
        room.last_activity = time.time()
        last = await self._broadcaster.remove_member(project_id, _member(connection))
        if last:
            self._announce(connection, "user_left")
        if not room.connections and not room.joining and self._rooms.get(project_id) is room:
            del self._rooms[project_id]
            self._metrics.total_rooms.set(len(self._rooms))
            if not self._rooms:
                self._idle.set()
            await self._broadcaster.unsubscribe(project_id)

    def relay(self, sender: Connection, message_type: str, payload: Mapping[str, Any]) -> None:
        """Send a client's message to every other connection of its project, on every instance."""
        data = encode_envelope(
            message_type,
            payload,
            user_id=sender.user_id,
            username=sender.username,
            client_id=sender.client_id,
        )
        event = RoomEvent(
            sender.project_id, message_type, data, sender=sender.client_id, exclude=sender.client_id
        )
        # Published first: the PUBLISH is handed to the socket (written at once unless its
        # buffer is backed up) before the local fan-out starts, so other instances fan out
        # while this one does.
        self._broadcaster.publish(event)
        self._fan_out(event)

    def send(self, connection: Connection, message_type: str, payload: Mapping[str, Any]) -> None:
        """Send a server message to one connection, stamped with that connection's identity."""
        data = encode_envelope(
            message_type,
            payload,
            user_id=connection.user_id,
            username=connection.username,
            client_id=connection.client_id,
        )
        connection.deliver(data, message_type, "server")
        self._metrics.sent(message_type)

    def publish_event(
        self,
        project_id: str,
        message_type: str,
        payload: Mapping[str, Any],
        *,
        user_id: str,
        username: str,
    ) -> int:
        """A backend service's event for every connection of the project, on every instance.
        Returns how many connections on this instance got it."""
        data = encode_envelope(
            message_type, payload, user_id=user_id, username=username, client_id=SERVICE_CLIENT_ID
        )
        event = RoomEvent(project_id, message_type, data, sender=SERVICE_CLIENT_ID)
        self._broadcaster.publish(event)
        return self._fan_out(event)

    def revoke(self, project_id: str, user_id: str) -> int:
        """Close the user's connections in the project with 4003, on every instance.
        Returns how many were open on this instance."""
        closed = self._close_user(project_id, user_id)
        self._broadcaster.publish(
            RoomEvent(project_id, REVOKE, user_id.encode(), sender=SERVICE_CLIENT_ID)
        )
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
        payload = {"user_id": connection.user_id, "username": connection.username}
        self.relay(connection, message_type, payload)

    def _fan_out(self, event: RoomEvent) -> int:
        if event.message_type == REVOKE:
            return self._close_user(event.project_id, event.data.decode())
        if event.message_type == RESYNC:
            self._refresh_presence(event.project_id)
            return 0
        room = self._rooms.get(event.project_id)
        if room is None:
            return 0
        room.last_activity = time.time()
        exclude = event.exclude
        connections = room.connections
        if len(connections) == (1 if exclude in connections else 0):
            # Alone in the room (one person editing): no copy of the payload into a frame.
            return 0
        delivered = 0
        data, message_type, sender = event.data, event.message_type, event.sender
        frame = text_frame(data)
        for client_id, connection in connections.items():
            if client_id != exclude:
                connection.deliver(data, message_type, sender, frame)
                delivered += 1
        self._metrics.sent(event.message_type, delivered)
        return delivered

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
            self._broadcaster.publish(RoomEvent(project_id, RESYNC, b"", sender="instance"))
            self._refresh_presence(project_id)

    def on_remote_event(self, event: RoomEvent) -> None:
        self._fan_out(event)

    def on_remote_member_gone(self, project_id: str, member: Member, user_gone: bool) -> None:
        if not user_gone:
            return
        data = encode_envelope(
            "user_left",
            {"user_id": member.user_id, "username": member.username},
            user_id=member.user_id,
            username=member.username,
            client_id=member.client_id,
        )
        event = RoomEvent(project_id, "user_left", data, sender=member.client_id)
        self._broadcaster.publish(event)
        self._fan_out(event)


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
