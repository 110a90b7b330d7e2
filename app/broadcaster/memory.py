"""The in-memory broadcaster: one instance on its own, or several sharing a MemoryBus in tests."""

from __future__ import annotations

import uuid
from collections import defaultdict

from app.broadcaster.base import BroadcasterStatus, ClusterStats, Listener, Member
from app.rooms.events import InstanceEvent


class MemoryBus:
    """What instances in one process share: subscriptions and presence."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[MemoryBroadcaster]] = defaultdict(set)
        self.presence: dict[str, dict[str, Member]] = defaultdict(dict)


class MemoryBroadcaster:
    """Broadcaster without a network: delivery and presence are plain dictionaries."""

    def __init__(self, bus: MemoryBus | None = None, instance_id: str | None = None) -> None:
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self._bus = bus or MemoryBus()
        self._listener: Listener | None = None

    async def start(self, listener: Listener) -> None:
        self._listener = listener

    async def stop(self) -> None:
        for subscribers in self._bus.subscribers.values():
            subscribers.discard(self)
        self._listener = None

    async def subscribe(self, project_id: str) -> None:
        self._bus.subscribers[project_id].add(self)

    async def unsubscribe(self, project_id: str) -> None:
        subscribers = self._bus.subscribers.get(project_id)
        if subscribers is not None:
            subscribers.discard(self)
            if not subscribers:
                del self._bus.subscribers[project_id]

    def publish(self, event: InstanceEvent) -> None:
        for peer in tuple(self._bus.subscribers.get(event.project_id, ())):
            if peer is not self and peer._listener is not None:
                peer._listener.on_remote(event)

    async def add_member(self, project_id: str, member: Member) -> bool:
        members = self._bus.presence[project_id]
        first = all(other.user_id != member.user_id for other in members.values())
        members[member.client_id] = member
        return first

    async def remove_member(self, project_id: str, member: Member) -> bool:
        members = self._bus.presence.get(project_id)
        if members is None or members.pop(member.client_id, None) is None:
            return False
        if not members:
            del self._bus.presence[project_id]
            return True
        return all(other.user_id != member.user_id for other in members.values())

    async def members(self, project_id: str) -> list[Member]:
        return list(self._bus.presence.get(project_id, {}).values())

    def status(self) -> BroadcasterStatus:
        return BroadcasterStatus(connected=True, detail="in-memory")

    async def cluster_stats(self) -> ClusterStats | None:
        return None
