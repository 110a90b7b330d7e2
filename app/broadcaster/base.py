"""The broadcaster interface every backend implements, and the values that cross it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app.rooms.events import InstanceEvent


@dataclass(frozen=True, slots=True)
class Member:
    """One connection, as cluster presence knows it."""

    client_id: str
    user_id: str
    username: str


@dataclass(frozen=True, slots=True)
class BroadcasterStatus:
    connected: bool
    detail: str


@dataclass(frozen=True, slots=True)
class ClusterStats:
    """Totals over every live instance."""

    instances: int
    total_rooms: int
    total_clients: int


class Listener(Protocol):
    """Receives what other instances published, for local fan-out."""

    def on_remote(self, event: InstanceEvent) -> None:
        """An event another instance published for a project subscribed here."""

    def on_remote_member_gone(self, project_id: str, member: Member, user_gone: bool) -> None:
        """A member was removed by someone else (its instance died); announce it if needed."""

    def room_counts(self) -> dict[str, int]:
        """Connections per project on this instance."""

    def on_reconnected(self) -> None:
        """The backend is reachable again (or for the first time): shared state may have
        changed meanwhile, so refresh what clients were told."""


class Broadcaster(Protocol):
    """Pub/Sub between instances plus presence, scoped to the projects with local members.

    `publish` never blocks the caller: events from one instance reach the others in the order
    they were published. Presence calls return whether the user's first (or last) connection
    anywhere in the cluster was added (or removed), so `user_joined`/`user_left` fire once.
    No call raises or hangs when the backend is unreachable: it falls back to this instance's
    own view and restores the shared state when the backend returns.
    """

    instance_id: str

    async def start(self, listener: Listener) -> None: ...

    async def stop(self) -> None: ...

    async def subscribe(self, project_id: str) -> None: ...

    async def unsubscribe(self, project_id: str) -> None: ...

    def publish(self, event: InstanceEvent) -> None: ...

    async def add_member(self, project_id: str, member: Member) -> bool: ...

    async def remove_member(self, project_id: str, member: Member) -> bool: ...

    async def members(self, project_id: str) -> list[Member]: ...

    def status(self) -> BroadcasterStatus: ...

    async def cluster_stats(self) -> ClusterStats | None:
        """Totals over all instances, or None where there is no cluster."""
        ...
