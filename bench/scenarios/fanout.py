"""B. Room fan-out: deliveries per second and latency at half load, room size by room size."""

from __future__ import annotations

from typing import Any

from bench.kinds import KINDS, REFERENCE, SERVICE
from bench.loadgen import close_all, quiet
from bench.scenarios.harness import Log, Outcome, Plan, Row, start, verdict
from bench.scenarios.room import FanRoom, alternate, open_room, paced_latency, saturate, summarize
from bench.servers import Pinning, Process


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
