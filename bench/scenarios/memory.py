"""A. Idle memory: how much the server's RSS grows per idle connection."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.kinds import KINDS, REFERENCE, SERVICE
from bench.loadgen import Client, Health, Meter, Sink, close_all, connect, quiet
from bench.scenarios.harness import Log, Outcome, Plan, Row, require, start, target_of, verdict
from bench.servers import Pinning


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
