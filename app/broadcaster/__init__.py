"""Carries room events between instances and keeps cluster presence: one interface, two backends."""

from __future__ import annotations

from app.broadcaster.base import Broadcaster, ClusterStats, Listener, Member
from app.broadcaster.memory import MemoryBroadcaster, MemoryBus

__all__ = [
    "Broadcaster",
    "ClusterStats",
    "Listener",
    "Member",
    "MemoryBroadcaster",
    "MemoryBus",
]
