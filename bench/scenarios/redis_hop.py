"""C. Across instances: one room over two instances of the service sharing a Redis, and what
the hop through Redis adds to latency."""

from __future__ import annotations

import asyncio
import os
import time

from bench.kinds import SERVICE
from bench.loadgen import Client, Health, Meter, Sink, close_all, connect, quiet
from bench.scenarios.harness import Log, Outcome, Plan, Row, require, target_of, verdict
from bench.scenarios.room import FanRoom, paced_latency, quietly, saturate, summarize
from bench.servers import Pinning, RedisProcess, Service


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
