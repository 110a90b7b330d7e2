"""The service's Prometheus metrics, in a registry of their own so apps never share one."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from app.protocols.json.messages import DOCUMENT_TYPES, RELAYED_TYPES, SERVER_ONLY_TYPES

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)


class TypeCounter(Collector):
    """A counter by message type kept in plain ints and exported at scrape time: counted on
    every message, where prometheus_client's locked increment cost 4.4% of the CPU."""

    def __init__(self, name: str, documentation: str, types: Iterable[str]) -> None:
        self._name = name
        self._documentation = documentation
        # Every type is known up front, so a scrape in another thread never sees the dict grow.
        self.counts = dict.fromkeys(sorted(types), 0)
        # As prometheus_client's own counters do, unless its created series are turned off.
        self._created = time.time() if getattr(prometheus_metrics, "_use_created", True) else None

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, labels=["type"])

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=["type"])
        for message_type, count in list(self.counts.items()):
            family.add_metric([message_type], count, created=self._created)
        yield family


# Every wire protocol's label: the codecs' names.
PROTOCOLS = ("json", "ywebsocket")


class Metrics:
    """Counters and gauges the room registry and sessions update."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.active_connections = Gauge(
            "websocket_active_connections",
            "Open WebSocket connections on this instance, by protocol ('json' on /ws/, "
            "'ywebsocket' on /yjs/).",
            ["protocol"],
            registry=self.registry,
        )
        self.total_rooms = Gauge(
            "websocket_total_rooms",
            "Rooms (projects) open on this instance: with a connection, opening, or within "
            "their ROOM_GRACE.",
            registry=self.registry,
        )
        known = (
            RELAYED_TYPES
            | SERVER_ONLY_TYPES
            | DOCUMENT_TYPES
            | {"ping", "auth_refresh", "invalid", "rate_limited"}
        )
        self.messages_sent = TypeCounter(
            "websocket_messages_sent",
            "Messages sent to clients, one per recipient, by type.",
            known,
        )
        self.messages_received = TypeCounter(
            "websocket_messages_received",
            "Messages received from clients, by type ('invalid' for refused ones).",
            known,
        )
        self.registry.register(self.messages_sent)
        self.registry.register(self.messages_received)
        self._sent = self.messages_sent.counts
        self._received = self.messages_received.counts
        self.connections = Counter(
            "websocket_connections_total",
            "WebSocket connections accepted, by protocol.",
            ["protocol"],
            registry=self.registry,
        )
        self.disconnections = Counter(
            "websocket_disconnections_total",
            "WebSocket connections ended, by close code (1006: no close frame) and protocol.",
            ["code", "protocol"],
            registry=self.registry,
        )
        for protocol in PROTOCOLS:
            # Present from the start, so that a dashboard shows 0 rather than no data.
            self.active_connections.labels(protocol)
            self.connections.labels(protocol)
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
            "Upgrade requests refused, by error code and protocol (on /yjs/ the refusals of "
            "the token are told inside the WebSocket: see websocket_held_refusals).",
            ["code", "protocol"],
            registry=self.registry,
        )
        self.held_refusals = Gauge(
            "websocket_held_refusals",
            "Refused /yjs/ connections held open after their auth message, so that stock "
            "providers do not reconnect at once.",
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
        self.instance_events_skipped = Counter(
            "websocket_instance_events_skipped_total",
            "Events from other instances skipped, by reason: unknown_version, unknown_kind or "
            "unknown_type (sent by a newer release), malformed, failed (fanning it out raised).",
            ["reason"],
            registry=self.registry,
        )
        self.redis_publish_dropped = Counter(
            "websocket_redis_publish_dropped_total",
            "Events not sent to other instances because Redis was unreachable.",
            registry=self.registry,
        )

        self.documents_resident = Gauge(
            "websocket_documents_resident",
            "Documents held in memory on this instance (MAX_RESIDENT_DOCUMENTS at most).",
            registry=self.registry,
        )
        self.documents_resident_bytes = Gauge(
            "websocket_documents_resident_bytes",
            "Yjs bytes of the resident documents: each one's snapshot and the updates since.",
            registry=self.registry,
        )
        self.document_pending_bytes = Gauge(
            "websocket_document_pending_bytes",
            "Bytes of updates applied but not yet stored (bounded by DOCUMENT_PENDING_BYTES).",
            registry=self.registry,
        )
        self.document_load_seconds = Histogram(
            "websocket_document_load_seconds",
            "Time to load a document from the store and build it in memory.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.document_store_seconds = Histogram(
            "websocket_document_store_seconds",
            "Time for one append to the document store to become durable.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.document_store_errors = Counter(
            "websocket_document_store_errors_total",
            "Document store calls that failed, by operation (load, append, compact).",
            ["operation"],
            registry=self.registry,
        )
        self.document_store_up = Gauge(
            "websocket_document_store_up",
            "0 from a failed document store call until the next one that succeeds, else 1.",
            registry=self.registry,
        )
        self.document_store_up.set(1)
        self.document_compactions = Counter(
            "websocket_document_compactions_total",
            "Document logs replaced by a snapshot.",
            registry=self.registry,
        )

    def sent(self, message_type: str, count: int = 1) -> None:
        self._sent[message_type] += count

    def received(self, message_type: str) -> None:
        self._received[message_type] += 1

    # BacklogObserver

    def coalesced(self, message_type: str) -> None:
        self.backlog_coalesced.labels(message_type).inc()

    def dropped(self, message_type: str) -> None:
        self.backlog_dropped.labels(message_type).inc()

    def slow_consumer_closed(self) -> None:
        self.slow_consumer_closes.inc()
