"""The four scenarios. Each runs the service and the reference the same way, in this run, and
returns table rows plus the raw measurements for the JSON."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.holder import HoldSpec, spec_json
from bench.kinds import KINDS, REFERENCE, SERVICE
from bench.loadgen import (
    Client,
    Health,
    Meter,
    Sink,
    Target,
    blast,
    close_all,
    connect,
    paced,
    quiet,
    settle,
)
from bench.measure import Window, latency_ms
from bench.servers import ROOT, Pinning, Process, RedisProcess, Reference, Service
from bench.tokens import token

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
    if kind == SERVICE:
        settings = {"WS_PING_INTERVAL": f"{interval:g}s", "WS_PONG_WAIT": f"{wait:g}s"}
        server = Service(pinning, {**settings, **(env or {})}, plan.service_patches)
    else:
        server = Reference(pinning, interval, wait)
    await asyncio.to_thread(server.start)
    return server


def require(clients: Sequence[Client], wanted: int, health: Health, what: str) -> None:
    if len(clients) < wanted:
        raise BenchError(
            f"{what}: {len(clients)} of {wanted} connections opened; failures: {health.failures}"
        )


# A. Idle memory


async def idle_memory_once(
    kind: str, n: int, plan: Plan, pinning: Pinning, log: Log
) -> dict[str, Any]:
    server = await start(kind, pinning, plan)
    clients: list[Client] = []
    try:
        target = target_of(kind, server)
        meter, health = Meter(), Health()
        sink = Sink(meter)
        # Warm up first: lazy imports and caches belong to the process, not to connections.
        warm = await connect(target, ["warmup"] * 20, [sink] * 20, health, first_index=90_000)
        require(warm, 20, health, f"A {kind} warm-up")
        warm[0].send_text(b'{"type":"cursor_update","payload":{"line":1,"column":1}}')
        await asyncio.sleep(0.3)
        close_all(warm)
        await asyncio.sleep(1.0)
        before = server.rss_kib()
        rooms = [f"idle-{index % plan.memory_rooms}" for index in range(n)]
        started = time.monotonic()
        clients = await connect(target, rooms, [sink] * n, health)
        connect_seconds = time.monotonic() - started
        require(clients, n, health, f"A {kind} N={n}")
        drained = await quiet(meter)
        await asyncio.sleep(1.0)
        after = server.rss_kib()
        per_connection = (after - before) / len(clients)
        log(
            f"A {kind:9} N={n:5}: RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB, "
            f"{per_connection:.1f} KiB per connection"
        )
        return {
            "connections": len(clients),
            "rooms": plan.memory_rooms,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "per_connection_kib": round(per_connection, 2),
            "connect_seconds": round(connect_seconds, 2),
            "drain_seconds": round(drained, 2),
            "messages_received": meter.received,
        }
    finally:
        server.stop()
        close_all(clients)


async def scenario_a(plan: Plan, pinning: Pinning, log: Log) -> Outcome:
    outcome = Outcome()
    for n in plan.memory_sizes:
        per_kind = {kind: await idle_memory_once(kind, n, plan, pinning, log) for kind in KINDS}
        outcome.details[str(n)] = per_kind
        row = Row(
            "A",
            f"RSS growth per idle connection, N={n:,}",
            "KiB",
            per_kind[SERVICE]["per_connection_kib"],
            per_kind[REFERENCE]["per_connection_kib"],
        )
        if n == max(plan.memory_sizes):
            row.target = "≤ 1.5x ref"
            ratio = row.ratio
            row.verdict = verdict(ratio is not None and ratio <= 1.5)
            if n != 5000:
                row.note = "target is set at N=5,000"
        outcome.rows.append(row)
    return outcome


# B and C: fan-out


@dataclass
class FanRoom:
    """One room under test: receivers feeding `sinks` (by group), and one sender."""

    kind: str
    processes: dict[str, Process]
    meter: Meter
    sinks: dict[str, Sink]
    sender: Client
    recipients: int
    clients: list[Client]


async def open_room(
    kind: str, server: Process, size: int, room: str, first_index: int = 0
) -> FanRoom:
    recipients = size - 1
    meter, health = Meter(), Health()
    sink = Sink(meter, recipients)
    target = target_of(kind, server)
    clients = await connect(
        target, [room] * recipients, [sink] * recipients, health, first_index=first_index
    )
    require(clients, recipients, health, f"{kind} room {size}")
    senders = await connect(
        target, [room], [Sink(Meter())], health, first_index=first_index + recipients
    )
    require(senders, 1, health, f"{kind} sender")
    return FanRoom(kind, {kind: server}, meter, {"all": sink}, senders[0], recipients,
                   clients + senders)  # fmt: skip


async def saturate(room: FanRoom, plan: Plan, core: int | None) -> dict[str, Any]:
    """Deliveries per second with the sender sending as fast as the server takes messages."""
    meter, recipients = room.meter, room.recipients
    warmup = 100
    base = meter.received
    await blast(room.sender, meter, warmup, recipients, 32, 10.0)
    await settle(meter, base + warmup * recipients)
    count = max(100, plan.saturation_deliveries // recipients)
    window = max(16, min(256, 40_000 // recipients))
    base = meter.received
    cpu = Window.open(room.processes, core)
    first, sent = await blast(
        room.sender, meter, count, recipients, window, plan.saturation_seconds
    )
    complete = await settle(meter, base + sent * recipients)
    usage = cpu.close()
    delivered = meter.received - base
    seconds = max(meter.last_rx - first, 1) / 1e9
    # CPU time the server process(es) used meanwhile: deliveries per CPU-second do not depend
    # on how much of the core other work left to the server.
    cpu_seconds = sum(usage[f"{name}_cpu_pct"] for name in room.processes) / 100 * usage["seconds"]
    return {
        "messages": sent,
        "expected_deliveries": sent * recipients,
        "deliveries": delivered,
        "complete": complete,
        "seconds": round(seconds, 3),
        "messages_per_s": round(sent / seconds, 1),
        "deliveries_per_s": round(delivered / seconds, 1),
        "deliveries_per_cpu_s": round(delivered / cpu_seconds, 1) if cpu_seconds else None,
        "window_messages": window,
        "cpu": usage,
    }


async def paced_latency(
    room: FanRoom, rate: float, seconds: float, core: int | None
) -> dict[str, Any]:
    """Latencies with the sender paced at `rate` messages per second."""
    meter, recipients, sinks = room.meter, room.recipients, room.sinks
    count = int(min(max(rate * seconds, 300), rate * seconds * 3))
    for sink in sinks.values():
        sink.reset(record=True)
    base = meter.received
    cpu = Window.open(room.processes, core)
    achieved = await paced(room.sender, rate, count)
    complete = await settle(meter, base + count * recipients)
    usage = cpu.close()
    for sink in sinks.values():
        sink.record = False
    first = next(iter(sinks.values()))
    result: dict[str, Any] = {
        "rate_messages_per_s": round(rate, 1),
        "achieved_messages_per_s": round(achieved, 1),
        "messages": count,
        "deliveries": meter.received - base,
        "expected_deliveries": count * recipients,
        "complete": complete,
        "per_delivery_ms": latency_ms(itertools.chain(*(s.samples for s in sinks.values()))),
        "whole_room_ms": latency_ms(first.room_samples),
        "cpu": usage,
    }
    if len(sinks) > 1:
        result["by_group_ms"] = {name: latency_ms(sink.samples) for name, sink in sinks.items()}
    return result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(runs: Sequence[dict[str, Any]], *path: str) -> float:
    """The median over repetitions of one figure (e.g. "whole_room_ms", "p99")."""
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(float(value))
    return round(median(values), 4)


async def quietly(plan: Plan, measure: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Take a measurement; while other work on the machine took more than `noise_limit` % of
    the server core meanwhile, take it again (at most `noise_retries` times) and keep the
    quietest. Every measurement records that share as cpu.server_core_other_pct."""
    best: dict[str, Any] | None = None
    for attempt in range(1 + plan.noise_retries):
        run = await measure()
        run["attempts"] = attempt + 1
        noise = float(run["cpu"].get("server_core_other_pct", 0.0))
        if best is None or noise < float(best["cpu"].get("server_core_other_pct", 0.0)):
            best = run
        if noise <= plan.noise_limit:
            break
        await asyncio.sleep(2.0)
    assert best is not None
    return best


async def alternate(
    rooms: Sequence[FanRoom],
    plan: Plan,
    measure: Callable[[FanRoom], Awaitable[dict[str, Any]]],
) -> dict[str, list[dict[str, Any]]]:
    """Measure each room `plan.repeats` times, alternating which goes first, so that whatever
    else the machine is doing falls on both alike."""
    runs: dict[str, list[dict[str, Any]]] = {room.kind: [] for room in rooms}
    for repeat in range(plan.repeats):
        for room in rooms if repeat % 2 == 0 else list(reversed(rooms)):
            runs[room.kind].append(await quietly(plan, functools.partial(measure, room)))
    return runs


async def fan_out(size: int, plan: Plan, pinning: Pinning, log: Log) -> dict[str, Any]:
    """One room of `size` on each server, both up at once, measured alternately."""
    servers: dict[str, Process] = {}
    rooms: list[FanRoom] = []
    core = pinning.server_core
    try:
        for kind in KINDS:
            servers[kind] = await start(kind, pinning, plan)
            rooms.append(await open_room(kind, servers[kind], size, f"fanout-{size}"))
        for room in rooms:
            await quiet(room.meter)
        saturation = await alternate(rooms, plan, lambda r: saturate(r, plan, core))
        rates = {kind: summarize(runs, "messages_per_s") / 2 for kind, runs in saturation.items()}
        half = await alternate(
            rooms,
            plan,
            lambda r: paced_latency(r, rates[r.kind], plan.half_load_seconds, core),
        )
        result: dict[str, Any] = {"room_size": size, "recipients": size - 1}
        for kind in KINDS:
            result[kind] = {
                "deliveries_per_s": summarize(saturation[kind], "deliveries_per_s"),
                "deliveries_per_cpu_s": summarize(saturation[kind], "deliveries_per_cpu_s"),
                "half_load_messages_per_s": round(rates[kind], 1),
                **{
                    f"{key}_{q}": summarize(half[kind], key, q)
                    for key in ("per_delivery_ms", "whole_room_ms")
                    for q in ("p50", "p99")
                },
                "saturation_runs": saturation[kind],
                "half_load_runs": half[kind],
            }
            log(
                f"B {kind:9} room {size:4}: {result[kind]['deliveries_per_s']:9,.0f} "
                f"deliveries/s (runs: "
                + ", ".join(
                    f"{run['deliveries_per_s']:,.0f} @ {run['cpu'].get(kind + '_cpu_pct')}% CPU"
                    for run in saturation[kind]
                )
                + f"); at {rates[kind]:,.0f} msg/s whole-room p50 "
                f"{result[kind]['whole_room_ms_p50']} p99 {result[kind]['whole_room_ms_p99']} ms"
            )
        return result
    finally:
        for server in servers.values():
            server.stop()
        for room in rooms:
            close_all(room.clients)


async def scenario_b(plan: Plan, pinning: Pinning, log: Log) -> Outcome:
    outcome = Outcome()
    for size in plan.room_sizes:
        result = await fan_out(size, plan, pinning, log)
        outcome.details[str(size)] = result
        s, r = result[SERVICE], result[REFERENCE]
        throughput = Row(
            "B", f"deliveries/s, room {size:,}", "1/s", s["deliveries_per_s"], r["deliveries_per_s"]
        )
        if size == 100:
            throughput.target = "≥ 0.9x ref"
            ratio = throughput.ratio
            throughput.verdict = verdict(ratio is not None and ratio >= 0.9)
        outcome.rows.append(throughput)
        outcome.rows.append(
            Row(
                "B",
                f"deliveries per server CPU-second, room {size:,}",
                "1/s",
                s["deliveries_per_cpu_s"],
                r["deliveries_per_cpu_s"],
                note="cross-check of throughput that other load on the server core cannot skew",
            )
        )
        for label, key in (("per-delivery", "per_delivery_ms"), ("whole-room", "whole_room_ms")):
            for q in ("p50", "p99"):
                row = Row(
                    "B",
                    f"{label} latency {q}, room {size:,}, half load",
                    "ms",
                    s[f"{key}_{q}"],
                    r[f"{key}_{q}"],
                )
                if size == 100 and key == "whole_room_ms" and q == "p99":
                    row.target = "≤ 1.5 ms"
                    row.verdict = verdict(row.service is not None and row.service <= 1.5)
                outcome.rows.append(row)
    return outcome


async def scenario_c(plan: Plan, pinning: Pinning, log: Log) -> Outcome:
    outcome = Outcome()
    redis = RedisProcess(pinning)
    await asyncio.to_thread(redis.start)
    prefix = f"bench-{os.getpid()}-{int(time.time())}:"
    instances: dict[str, Service] = {}
    clients: list[Client] = []
    core = pinning.server_core
    try:
        for name in ("a", "b"):
            env = {
                "REDIS_ADDR": redis.addr,
                "INSTANCE_ID": f"bench-{name}",
                "REDIS_CHANNEL_PREFIX": prefix,
            }
            instance = Service(pinning, env, plan.service_patches)
            instances[name] = instance
            await asyncio.to_thread(instance.start)
            await asyncio.to_thread(instance.wait_ready, True)
        a, b = instances["a"], instances["b"]
        recipients = plan.cluster_room - 1
        on_a = recipients // 2
        on_b = recipients - on_a
        meter, health = Meter(), Health()
        same, other = Sink(meter, recipients), Sink(meter, recipients)
        other.share_room(same)
        name = "cluster"
        clients = await connect(target_of(SERVICE, b), [name] * on_b, [other] * on_b, health)
        clients += await connect(
            target_of(SERVICE, a), [name] * on_a, [same] * on_a, health, first_index=on_b
        )
        require(clients, recipients, health, "C receivers")
        senders = await connect(
            target_of(SERVICE, a), [name], [Sink(Meter())], health, first_index=recipients
        )
        require(senders, 1, health, "C sender")
        clients += senders
        await quiet(meter, silence=1.0)
        room = FanRoom(
            SERVICE,
            {"instance_a": a, "instance_b": b, "redis": redis},
            meter,
            {"same_instance": same, "other_instance": other},
            senders[0],
            recipients,
            clients,
        )
        saturation = [
            await quietly(plan, lambda: saturate(room, plan, core)) for _ in range(plan.repeats)
        ]
        rate = summarize(saturation, "messages_per_s") / 2
        low_rate = min(plan.low_rate, rate)
        half, low = [], []
        for _ in range(plan.repeats):
            half.append(
                await quietly(plan, lambda: paced_latency(room, rate, plan.half_load_seconds, core))
            )
            low.append(
                await quietly(
                    plan, lambda: paced_latency(room, low_rate, plan.half_load_seconds, core)
                )
            )
        outcome.details = {
            "room_size": plan.cluster_room,
            "receivers_on_sender_instance": on_a,
            "receivers_on_other_instance": on_b,
            "deliveries_per_s": summarize(saturation, "deliveries_per_s"),
            "half_load_messages_per_s": round(rate, 1),
            "low_rate_messages_per_s": round(low_rate, 1),
            "saturation_runs": saturation,
            "half_load_runs": half,
            "low_rate_runs": low,
        }
        rows = outcome.rows
        rows.append(
            Row(
                "C",
                f"deliveries/s, room {plan.cluster_room}, 2 instances",
                "1/s",
                outcome.details["deliveries_per_s"],
                None,
                note="the reference has no Redis mode",
            )
        )
        for label, runs in (("half load", half), (f"{low_rate:,.0f} msg/s", low)):
            for q in ("p50", "p99"):
                near = summarize(runs, "by_group_ms", "same_instance", q)
                far = summarize(runs, "by_group_ms", "other_instance", q)
                hop = round(far - near, 4)
                outcome.details[f"hop_{q}_{label}"] = {"same": near, "other": far, "added": hop}
                row = Row(
                    "C",
                    f"Redis hop adds, {q}, {label}",
                    "ms",
                    hop,
                    None,
                    note=f"other instance {far} ms, sender's instance {near} ms",
                )
                if q == "p50" and label == "half load":
                    row.target = "≤ 0.5 ms"
                    row.verdict = verdict(hop <= 0.5)
                rows.append(row)
        # The hop is a difference: on one shared core it also moves when the sender's own
        # instance gets slower. The time until everyone in the room has the message does not.
        for q in ("p50", "p99"):
            rows.append(
                Row(
                    "C",
                    f"whole-room latency {q}, half load, 2 instances",
                    "ms",
                    summarize(half, "whole_room_ms", q),
                    None,
                )
            )
        log(
            f"C service 2 instances: {outcome.details['deliveries_per_s']:,.0f} deliveries/s; "
            f"hop p50 {rows[1].service} ms at {rate:,.0f} msg/s, {rows[3].service} ms at "
            f"{low_rate:.0f} msg/s"
        )
        return outcome
    finally:
        for instance in instances.values():
            instance.stop()
        redis.stop()
        close_all(clients)


# D. Many connections


class Holder:
    """A `bench.holder` child process keeping `plan.many` connections open to one server."""

    def __init__(self, kind: str, server: Process, process: asyncio.subprocess.Process) -> None:
        self.kind = kind
        self.server = server
        self.process = process
        self.ready: dict[str, Any] = {}

    @classmethod
    async def open(cls, kind: str, server: Process, plan: Plan, log: Log) -> Holder:
        spec = HoldSpec(kind, server.port, plan.many, plan.many_rooms, plan.source_ips)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.holder",
            spec_json(spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        holder = cls(kind, server, process)
        holder.ready = await holder._read(600.0)
        log(
            f"D {kind:9}: {holder.ready['connected']:,} connections open in "
            f"{holder.ready['connect_seconds']:.1f}s ({holder.ready['failed']} failed), "
            f"RSS {server.rss_kib() / 1024:.0f} MiB"
        )
        return holder

    async def _read(self, within: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), within)
        if not line:
            raise BenchError(f"D {self.kind}: the holder process exited")
        message: dict[str, Any] = json.loads(line)
        return message

    async def report(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"report\n")
        await self.process.stdin.drain()
        return await self._read(30.0)

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.write(b"exit\n")
                self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def hold_phase(
    plan: Plan, pinning: Pinning, log: Log, seconds: float, ping: tuple[float, float]
) -> dict[str, Any]:
    """Both servers up, each with `plan.many` connections from its own holder process, held
    for the same `seconds`: drops, CPU, and pings answered."""
    servers: dict[str, Process] = {}
    holders: list[Holder] = []
    try:
        for kind in KINDS:
            servers[kind] = await start(kind, pinning, plan, ping=ping)
            holders.append(await Holder.open(kind, servers[kind], plan, log))
        before = {h.kind: await h.report() for h in holders}
        cpu = Window.open(servers, pinning.server_core)
        started = time.monotonic()
        while (left := seconds - (time.monotonic() - started)) > 0.01:
            await asyncio.sleep(min(30.0, left))
            now = {h.kind: await h.report() for h in holders}
            text = ", ".join(
                f"{kind} {now[kind]['open']:,} open / "
                f"{now[kind]['dropped'] - before[kind]['dropped']} dropped"
                for kind in now
            )
            log(f"D held {time.monotonic() - started:4.0f}s of {seconds:.0f}s: {text}")
        usage = cpu.close()
        after = {h.kind: await h.report() for h in holders}
        elapsed = usage["seconds"]
        results: dict[str, Any] = {
            "ping_interval_s": ping[0],
            "pong_wait_s": ping[1],
            "hold_s": seconds,
            "window": usage,
        }
        for h in holders:
            answered = after[h.kind]["pings_answered"] - before[h.kind]["pings_answered"]
            cpu_pct = usage[f"{h.kind}_cpu_pct"]
            results[h.kind] = {
                "connections": h.ready["connected"],
                "connect_failures": h.ready["failed"],
                "connect_failure_reasons": h.ready["failures"],
                "connect_seconds": h.ready["connect_seconds"],
                "dropped": after[h.kind]["dropped"] - before[h.kind]["dropped"],
                "still_open": after[h.kind]["open"],
                "close_codes": after[h.kind]["close_codes"],
                "pings_answered": answered,
                "pings_answered_per_s": round(answered / elapsed, 1),
                "cpu_pct": cpu_pct,
                "cpu_us_per_ping": (
                    round(cpu_pct / 100 * elapsed / answered * 1e6, 1) if answered else None
                ),
                "rss_mib": round(h.server.rss_kib() / 1024, 1) if h.server.alive() else None,
                "alive": h.server.alive(),
            }
        return results
    finally:
        for server in servers.values():
            server.stop()
        for holder in holders:
            await holder.close()


def lost(result: dict[str, Any], n: int) -> int:
    """Connections that did not last: dropped during the hold, or never opened."""
    return int(result["dropped"]) + (n - int(result["connections"]))


async def scenario_d(plan: Plan, pinning: Pinning, log: Log) -> Outcome:
    outcome = Outcome()
    n = plan.many
    production = await hold_phase(
        plan, pinning, log, plan.hold_seconds, (plan.ping_interval, plan.pong_wait)
    )
    stress = await hold_phase(
        plan, pinning, log, plan.stress_seconds, (plan.stress_ping, plan.stress_ping)
    )
    outcome.details = {"connections": n, "hold": production, "heartbeat_stress": stress}
    s, r = production[SERVICE], production[REFERENCE]
    hs, hr = stress[SERVICE], stress[REFERENCE]
    held = f"{plan.hold_seconds:.0f}s, ping {plan.ping_interval:g}s"
    fast = f"{plan.stress_seconds:.0f}s, ping {plan.stress_ping:g}s"
    outcome.rows = [
        Row(
            "D",
            f"drops, {n:,} conns, {held}",
            "",
            lost(s, n),
            lost(r, n),
            target="0",
            verdict=verdict(lost(s, n) == 0),
        ),
        Row(
            "D",
            f"server CPU, {n:,} idle conns, {held}",
            "% core",
            s["cpu_pct"],
            r["cpu_pct"],
            target="< 5%",
            verdict=verdict(s["cpu_pct"] < 5.0),
        ),
        Row("D", f"RSS with {n:,} connections", "MiB", s["rss_mib"], r["rss_mib"]),
        Row(
            "D",
            f"drops, {n:,} conns, {fast}",
            "",
            lost(hs, n),
            lost(hr, n),
            target="0",
            verdict=verdict(lost(hs, n) == 0),
        ),
        Row("D", f"server CPU, {n:,} conns, {fast}", "% core", hs["cpu_pct"], hr["cpu_pct"]),
        Row(
            "D",
            "server CPU per heartbeat (ping + pong)",
            "µs",
            hs["cpu_us_per_ping"],
            hr["cpu_us_per_ping"],
        ),
    ]
    return outcome
