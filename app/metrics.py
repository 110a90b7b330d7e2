"""The service's Prometheus metrics, in a registry of their own so apps never share one."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.messages import RELAYED_TYPES, SERVER_ONLY_TYPES

_DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)


class Metrics:
    """Counters and gauges the room registry and sessions update."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.active_connections = Gauge(
            "websocket_active_connections",
            "Open WebSocket connections on this instance.",
            registry=self.registry,
        )
        self.total_rooms = Gauge(
            "websocket_total_rooms",
            "Rooms (projects) with at least one connection on this instance.",
            registry=self.registry,
        )
        self.messages_sent = Counter(
            "websocket_messages_sent_total",
            "Messages sent to clients, one per recipient, by type.",
            ["type"],
            registry=self.registry,
        )
        self.messages_received = Counter(
            "websocket_messages_received_total",
            "Messages received from clients, by type ('invalid' for refused ones).",
            ["type"],
            registry=self.registry,
        )
        self.connections = Counter(
            "websocket_connections_total",
            "WebSocket connections accepted.",
            registry=self.registry,
        )
        self.disconnections = Counter(
            "websocket_disconnections_total",
            "WebSocket connections ended, by close code (1006: no close frame).",
            ["code"],
            registry=self.registry,
        )
        self.broadcaster_info = Gauge(
            "websocket_broadcaster_info",
            "1 for the broadcaster in use: backend 'redis' or 'memory'.",
            ["backend"],
            registry=self.registry,
        )
        self.connection_duration = Histogram(
            "websocket_connection_duration_seconds",
            "How long WebSocket connections stayed open.",
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.rejected_upgrades = Counter(
            "websocket_rejected_upgrades_total",
            "Upgrade requests refused before the handshake, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.backlog_coalesced = Counter(
            "websocket_backlog_coalesced_total",
            "Ephemeral messages replaced by a newer one while a connection was backed up.",
            ["type"],
            registry=self.registry,
        )
        self.backlog_dropped = Counter(
            "websocket_backlog_dropped_total",
            "Ephemeral messages dropped because a connection's backlog was full.",
            ["type"],
            registry=self.registry,
        )
        self.slow_consumer_closes = Counter(
            "websocket_slow_consumer_closes_total",
            "Connections closed with 1013 because their backlog overflowed.",
            registry=self.registry,
        )
        self.redis_connected = Gauge(
            "websocket_redis_connected",
            "1 while the Redis broadcaster is connected (0 with the in-memory broadcaster).",
            registry=self.registry,
        )
        self.redis_reconnects = Counter(
            "websocket_redis_reconnects_total",
            "Attempts to reconnect to Redis after a failure.",
            registry=self.registry,
        )
        self.redis_publish_dropped = Counter(
            "websocket_redis_publish_dropped_total",
            "Events not sent to other instances because Redis was unreachable.",
            registry=self.registry,
        )
        # Pre-bound children: labels() is a dict lookup plus a lock; fan-out happens per message.
        known = (
            RELAYED_TYPES | SERVER_ONLY_TYPES | {"ping", "auth_refresh", "invalid", "rate_limited"}
        )
        self._sent = {name: self.messages_sent.labels(name) for name in known}
        self._received = {name: self.messages_received.labels(name) for name in known}

    def sent(self, message_type: str, count: int = 1) -> None:
        if count:
            self._sent[message_type].inc(count)

    def received(self, message_type: str) -> None:
        self._received[message_type].inc()

    # BacklogObserver

    def coalesced(self, message_type: str) -> None:
        self.backlog_coalesced.labels(message_type).inc()

    def dropped(self, message_type: str) -> None:
        self.backlog_dropped.labels(message_type).inc()

    def slow_consumer_closed(self) -> None:
        self.slow_consumer_closes.inc()
