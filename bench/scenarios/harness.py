"""What every scenario shares: the plan it runs to, the rows it returns, and starting servers
and reaching them."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.kinds import SERVICE, SERVICE_YJS, YWEBSOCKET
from bench.loadgen import Client, Health, Target
from bench.servers import Pinning, Process, Reference, Service, YWebsocket
from bench.tokens import token
from bench.yjsload import DOCUMENT_ID

Log = Callable[[str], None]


class BenchError(RuntimeError):
    """A measurement could not be taken (clients refused, a server died...)."""


@dataclass(frozen=True)
class Plan:
    """Sizes and durations; `quick()` shrinks them for a fast check."""

    quick: bool = False
    memory_sizes: tuple[int, ...] = (1000, 5000)
    memory_rooms: int = 100
    room_sizes: tuple[int, ...] = (10, 100, 1000)
    saturation_deliveries: int = 300_000
    saturation_seconds: float = 5.0
    half_load_seconds: float = 3.0
    repeats: int = 3
    # A measurement during which other processes took more than this share (%) of the server
    # core is taken again, at most `noise_retries` times.
    noise_limit: float = 10.0
    noise_retries: int = 2
    cluster_room: int = 100
    low_rate: float = 200.0
    many: int = 10_000
    many_rooms: int = 100
    hold_seconds: float = 300.0
    # The hold runs with the production heartbeat (the service's defaults); a shorter phase
    # then pings every `stress_ping` seconds to load the heartbeat path itself.
    ping_interval: float = 54.0
    pong_wait: float = 60.0
    stress_seconds: float = 60.0
    stress_ping: float = 5.0
    source_ips: tuple[str, ...] = tuple(f"127.0.0.{i}" for i in range(2, 10))
    # E: documents. A room of `document_room` on one document; ack latency of a client alone
    # in its project, typing `lone_rate` updates/s for `lone_seconds`; memory of
    # `document_count` open documents of `document_bytes` characters; `late_joiners` joiners
    # syncing a document of `late_document_bytes` characters.
    document_room: int = 100
    lone_rate: float = 50.0
    lone_seconds: float = 4.0
    document_count: int = 200
    document_bytes: int = 10_000
    late_document_bytes: int = 1 << 20
    late_joiners: int = 5
    # F: documents on two instances sharing one PostgreSQL and one Redis. `cluster_documents`
    # documents of `document_bytes` characters with a log of `cluster_log` appends (the most
    # the service keeps before compacting is 499) for bytes per document, resident on both
    # instances for `idle_seconds` to cost the catch-up; the store saturated by each number
    # of `store_typists` (a document each) for `store_seconds`, each typist having
    # `store_frames` updates ready; then PostgreSQL alone, for each (writer connections,
    # appenders) of `store_alone`.
    cluster_documents: int = 500
    cluster_log: int = 499
    idle_seconds: float = 10.0  # at least 5 s: see documents_at_rest
    store_typists: tuple[int, ...] = (16, 64, 256, 512)
    store_seconds: float = 5.0
    store_frames: int = 20_000
    store_alone: tuple[tuple[int, int], ...] = ((2, 16), (2, 512), (8, 512))
    # bench.experiments prototypes applied to the service (none by default).
    service_patches: tuple[str, ...] = ()

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(
            quick=True,
            memory_sizes=(500, 1000),
            saturation_deliveries=100_000,
            saturation_seconds=2.0,
            half_load_seconds=1.5,
            repeats=1,
            many=2_000,
            hold_seconds=20.0,
            stress_seconds=15.0,
            lone_seconds=2.0,
            document_count=100,
            late_joiners=3,
            cluster_documents=100,
            idle_seconds=6.0,
            store_typists=(16, 128),
            store_seconds=2.0,
            store_frames=8_000,
            store_alone=((2, 16), (2, 256)),
        )


@dataclass
class Row:
    """One line of the table: a figure for the service and the reference, maybe a target."""

    scenario: str
    metric: str
    unit: str
    service: float | None
    reference: float | None
    target: str = ""
    verdict: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.service is None or self.reference is None or not self.reference:
            return None
        if math.isnan(self.service) or math.isnan(self.reference):
            return None
        return self.service / self.reference

    def as_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "scenario": self.scenario,
            "metric": self.metric,
            "unit": self.unit,
            "service": self.service,
            "reference": self.reference,
            "ratio": None if ratio is None else round(ratio, 3),
            "target": self.target,
            "verdict": self.verdict,
            "note": self.note,
        }


@dataclass
class Outcome:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def target_of(kind: str, server: Process) -> Target:
    if kind == SERVICE:
        return Target("127.0.0.1", server.port, ready_on_pong=False, token=token)
    if kind == SERVICE_YJS:
        # No text frame comes on `/yjs/` (its first frame is a binary sync step 1): the pong,
        # as for the y-websocket server.
        return Target("127.0.0.1", server.port, True, token=token, document=DOCUMENT_ID)
    return Target("127.0.0.1", server.port, ready_on_pong=True)


async def start(
    kind: str,
    pinning: Pinning,
    plan: Plan,
    env: Mapping[str, str] | None = None,
    ping: tuple[float, float] | None = None,
) -> Process:
    """Start a fresh server of `kind`; both get the same heartbeat (the service's default
    54 s / 60 s unless `ping` is given)."""
    interval, wait = ping or (54.0, 60.0)
    server: Process
    if kind in (SERVICE, SERVICE_YJS):
        server = service(pinning, plan, env, ping)
    elif kind == YWEBSOCKET:
        # Its heartbeat is fixed (30 s): no measurement here lasts long enough to see it.
        server = YWebsocket(pinning)
    else:
        server = Reference(pinning, interval, wait)
    await asyncio.to_thread(server.start)
    return server


def service(
    pinning: Pinning,
    plan: Plan,
    env: Mapping[str, str] | None = None,
    ping: tuple[float, float] | None = None,
) -> Service:
    """The service as `start` configures it, not started yet (so that its store can be
    filled first)."""
    interval, wait = ping or (54.0, 60.0)
    settings = {"WS_PING_INTERVAL": f"{interval:g}s", "WS_PONG_WAIT": f"{wait:g}s"}
    return Service(pinning, {**settings, **(env or {})}, plan.service_patches)


def require(clients: Sequence[Client], wanted: int, health: Health, what: str) -> None:
    if len(clients) < wanted:
        raise BenchError(
            f"{what}: {len(clients)} of {wanted} connections opened; failures: {health.failures}"
        )
