"""A room under fan-out load and how B and C measure it: saturated throughput, paced latency,
each taken again while the machine was too busy."""

from __future__ import annotations

import asyncio
import functools
import itertools
import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.loadgen import (
    Client,
    Health,
    MessageMaker,
    Meter,
    Sink,
    blast,
    connect,
    cursor_message,
    paced,
    settle,
)
from bench.measure import Window, latency_ms
from bench.scenarios.harness import Plan, require, target_of
from bench.servers import Process


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


WARMUP_MESSAGES = 100


def saturation_messages(plan: Plan, recipients: int) -> int:
    """How many messages one `saturate` sends at most, warm-up included."""
    return WARMUP_MESSAGES + max(100, plan.saturation_deliveries // recipients)


async def saturate(
    room: FanRoom,
    plan: Plan,
    core: int | None,
    message: MessageMaker = cursor_message,
    opcode: int = 0x1,
    window: int | None = None,
) -> dict[str, Any]:
    """Deliveries per second with the sender sending as fast as the server takes messages
    (`message`, `opcode`: as for `blast`; `window`: by default from the room's size)."""
    meter, recipients = room.meter, room.recipients
    warmup = WARMUP_MESSAGES
    base = meter.received
    await blast(room.sender, meter, warmup, recipients, 32, 10.0, message, opcode)
    await settle(meter, base + warmup * recipients)
    count = saturation_messages(plan, recipients) - warmup
    if window is None:
        window = max(16, min(256, 40_000 // recipients))
    base = meter.received
    cpu = Window.open(room.processes, core)
    first, sent = await blast(
        room.sender, meter, count, recipients, window, plan.saturation_seconds, message, opcode
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
