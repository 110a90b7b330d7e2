"""E. Documents, every update applied by the server: `yjs_update` fan-out in a room of 100
against the y-websocket server (`@y/websocket-server`, which applies every update to its
Y.Doc too), the service's acknowledgement latency, memory per open document, and how long a
late joiner takes to sync a 1 MiB document.

The service is measured twice: over its JSON protocol (`/ws/`, the baseline of earlier runs)
and over the y-websocket protocol (`/yjs/`), where it gets byte for byte the frames the
y-websocket server gets. On `/yjs/` a sender's update is relayed only once stored, and a
step 1 is answered only once what came before it is stored: its delivery latency includes
the store's commit, and "update, then step 1 -> step 2" is its acknowledgement."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import statistics
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrdt import Doc, Text, get_state, read_message
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from app.documents.store import DocumentKey, SqliteStore
from bench.documents import fsync_latency
from bench.kinds import BINARY_KINDS, DOCUMENT_KINDS, SERVICE, SERVICE_YJS, YWEBSOCKET
from bench.loadgen import (
    Client,
    Health,
    Meter,
    Sink,
    close_all,
    connect,
    now_ns,
    paced,
    quiet,
    settle,
)
from bench.measure import Window, latency_ms
from bench.scenarios.harness import (
    BenchError,
    Log,
    Outcome,
    Plan,
    Row,
    require,
    service,
    start,
    target_of,
    verdict,
)
from bench.scenarios.room import (
    FanRoom,
    alternate,
    quietly,
    saturate,
    saturation_messages,
    summarize,
)
from bench.servers import Pinning, Process, Service, install_peer, peer_versions
from bench.tokens import token
from bench.yjsload import (
    DOCUMENT_ID,
    EMPTY_STATE_VECTOR,
    TEXT_NAME,
    BinaryWire,
    DocSink,
    Typist,
    Wire,
    b64,
    document_update,
    wire_for,
)

# Messages in flight to the whole room at most while saturating. `yjs_update` is durable: the
# service closes a reader 256 messages behind (SEND_QUEUE_LIMIT) instead of coalescing, so
# the window stays well below B's 256; 64 messages (6,336 deliveries) still keep a server busy.
DOCUMENT_WINDOW = 64
# The typists' client ids: fixed, so both servers get byte-identical updates.
ROOM_TYPIST, LONE_TYPIST = 2_874_419_234, 1_318_057_771
# Raw bytes per `yjs_update_part`: 256 KiB is 342 KiB of base64, under MAX_MESSAGE_SIZE.
PART_BYTES = 256 * 1024
# Connections (and documents) that warm a server up before its memory is read.
WARM = 20
# What `join_once` times, each summarised by its median.
JOIN_TIMINGS = ("total_ms", "connect_ms", "step1_to_step2_ms", "decode_and_apply_ms")


@dataclass
class DocRoom(FanRoom):
    """A FanRoom on one document: each receiver's frames go to its own sink of `receivers`
    (one meter for them all), the sender types with `typist` and its own frames (the
    service's acknowledgements, the y-websocket server's echoes) go to `own`."""

    wire: Wire
    typist: Typist
    receivers: list[DocSink]
    own: DocSink
    health: Health


def check(sinks: list[DocSink], health: Health, what: str) -> None:
    """Fail the measurement if a server refused an update or dropped a connection."""
    errors = [error for sink in sinks for error in sink.errors]
    if errors or health.dropped:
        raise BenchError(f"{what}: {health.dropped} connections dropped; errors: {errors[:3]}")


async def open_doc_room(kind: str, server: Process, size: int, project: str) -> DocRoom:
    """`size` connections to one document, each having run the sync step; the last one is
    the sender, whose paragraph (the typist's seed) every member has received."""
    recipients = size - 1
    wire = wire_for(kind)
    meter, steps, health = Meter(), Meter(), Health()
    # A sink per receiver, so that latency can pair each one's n-th update with the n-th sent.
    receivers = [DocSink(meter, recipients, steps) for _ in range(recipients)]
    target = target_of(kind, server)
    clients = await connect(target, [project] * recipients, receivers, health)
    require(clients, recipients, health, f"E {kind} room {size}")
    own = DocSink(Meter())
    senders = await connect(target, [project], [own], health, first_index=recipients)
    require(senders, 1, health, f"E {kind} sender")
    step1 = wire.step1(EMPTY_STATE_VECTOR)
    for client in [*clients, *senders]:
        client.send_frame(wire.opcode, step1)
    synced = await steps.reach(recipients, 60.0) and await own.steps.reach(1, 60.0)
    if not synced:
        raise BenchError(f"E {kind}: {steps.received} of {recipients} sync answers")
    typist = Typist(wire, ROOM_TYPIST)
    base = meter.received
    senders[0].send_frame(wire.opcode, typist.take_seed())
    if not await meter.reach(base + recipients, 30.0):
        raise BenchError(f"E {kind}: the paragraph reached {meter.received - base} members")
    check([*receivers, own], health, f"E {kind} room {size}")
    processes: dict[str, Process] = {kind: server}
    sinks: dict[str, Sink] = {str(index): sink for index, sink in enumerate(receivers)}
    return DocRoom(kind, processes, meter, sinks, senders[0], recipients,
                   [*clients, *senders], wire, typist, receivers, own, health)  # fmt: skip


async def saturate_updates(room: FanRoom, plan: Plan, core: int | None) -> dict[str, Any]:
    """B's saturation with the room's typist: every message a new keystroke, made before."""
    assert isinstance(room, DocRoom)
    room.typist.prepare(saturation_messages(plan, room.recipients))
    return await saturate(room, plan, core, room.typist.next, room.wire.opcode, DOCUMENT_WINDOW)


async def delivery_latency(
    room: FanRoom, rate: float, seconds: float, core: int | None
) -> dict[str, Any]:
    """Delivery latency with the sender paced at `rate` updates per second: from each send to
    its arrival at each receiver (per delivery) and at the last of them (whole room). Updates
    carry no send time, so a receiver's n-th arrival is paired with the n-th send: every
    server relays one sender's updates to each connection in order, and the room has one
    sender. Only the ranks every receiver got are paired; `complete` says whether all came."""
    assert isinstance(room, DocRoom)
    meter, recipients, receivers, typist = room.meter, room.recipients, room.receivers, room.typist
    # Ranks pair up only if nothing sent before is still on its way.
    if not await settle(meter, typist.sent * recipients):
        raise BenchError(
            f"E {room.kind}: {typist.sent * recipients - meter.received} deliveries late"
        )
    count = int(max(rate * seconds, 100))
    typist.prepare(count)
    sent = array("q")

    def message(seq: int, now: int) -> bytes:
        sent.append(now)
        return typist.next(seq, now)

    for sink in receivers:
        sink.reset(record=True)
    base = meter.received
    cpu = Window.open(room.processes, core)
    achieved = await paced(room.sender, rate, count, message=message, opcode=room.wire.opcode)
    complete = await settle(meter, base + count * recipients)
    usage = cpu.close()
    for sink in receivers:
        sink.record = False
    ranks = min(len(sink.arrivals) for sink in receivers)
    whole = [max(sink.arrivals[rank] for sink in receivers) - sent[rank] for rank in range(ranks)]
    return {
        "rate_updates_per_s": round(rate, 1),
        "achieved_updates_per_s": round(achieved, 1),
        "updates": count,
        "deliveries": meter.received - base,
        "expected_deliveries": count * recipients,
        "complete": complete,
        "per_delivery_ms": latency_ms(
            at - sent[rank] for sink in receivers for rank, at in enumerate(sink.arrivals[:ranks])
        ),
        "whole_room_ms": latency_ms(whole),
        "cpu": usage,
    }


async def ack_latency(
    sender: Client,
    own: DocSink,
    typist: Typist,
    processes: dict[str, Process],
    room: tuple[Meter, int],
    rate: float,
    seconds: float,
    core: int | None,
) -> dict[str, Any]:
    """The service's `yjs_ack` latency with the sender paced at `rate` updates per second:
    from each send to its acknowledgement (they come in order, one per update). `room` is
    the meter of the other members and their number (0 for a client alone)."""
    if not await own.acked.reach(typist.sent, 30.0):
        raise BenchError(f"{typist.sent - own.acked.received} earlier updates never acknowledged")
    meter, recipients = room
    count = int(max(rate * seconds, 100))
    typist.prepare(count)
    sent = array("q")

    def message(seq: int, now: int) -> bytes:
        sent.append(now)
        return typist.next(seq, now)

    first_ack = len(own.acks)
    base = meter.received
    cpu = Window.open(processes, core)
    achieved = await paced(sender, rate, count, message=message, opcode=0x1)
    delivered = await settle(meter, base + count * recipients) if recipients else True
    acked = await own.acked.reach(typist.sent, 30.0)
    usage = cpu.close()
    arrivals = own.acks[first_ack : first_ack + count]
    return {
        "rate_updates_per_s": round(rate, 1),
        "achieved_updates_per_s": round(achieved, 1),
        "updates": count,
        "acks": len(arrivals),
        "deliveries": meter.received - base,
        "expected_deliveries": count * recipients,
        "complete": bool(delivered and acked),
        "ack_ms": latency_ms(a - s for a, s in zip(arrivals, sent, strict=False)),
        "cpu": usage,
    }


@dataclass
class Lone:
    """A client alone in its project on `kind`, synced and its paragraph sent; `asked`
    counts the step 1s it sent (on `/yjs/`, each answered once what came before is stored)."""

    kind: str
    client: Client
    own: DocSink
    typist: Typist
    processes: dict[str, Process]
    asked: int = 1


async def open_lone(kind: str, server: Process) -> tuple[Lone, Health]:
    """A client alone in its project: sync step, then its paragraph."""
    wire = wire_for(kind)
    health = Health()
    own = DocSink(Meter())
    clients = await connect(target_of(kind, server), ["docs-lone"], [own], health, first_index=500)
    require(clients, 1, health, f"E {kind} lone client")
    clients[0].send_frame(wire.opcode, wire.step1(EMPTY_STATE_VECTOR))
    if not await own.steps.reach(1, 30.0):
        close_all(clients)
        raise BenchError(f"E {kind} lone client: no sync answer")
    typist = Typist(wire, LONE_TYPIST)
    clients[0].send_frame(wire.opcode, typist.take_seed())
    return Lone(kind, clients[0], own, typist, {kind: server}), health


async def stored_latency(
    lone: Lone, rate: float, seconds: float, core: int | None
) -> dict[str, Any]:
    """`/yjs/` has no acknowledgement; what a provider can wait for instead is the step 2 that
    answers a step 1 sent after its edit, which the service sends only once the edit is stored
    (docs/ywebsocket.md). Each update here is followed at once by a step 1, timed from the
    update's send to that step 2, the client alone and paced at `rate`. The step 1 carries the
    typist's state vector after every prepared update, so each answer is a few bytes."""
    own, typist, client = lone.own, lone.typist, lone.client
    if not await own.steps.reach(lone.asked, 30.0):
        raise BenchError(f"E {lone.kind}: {lone.asked - own.steps.received} step 1s unanswered")
    count = int(max(rate * seconds, 100))
    typist.prepare(count)
    step1 = BinaryWire().step1(typist.state_vector())
    sent = array("q")

    def message(seq: int, now: int) -> bytes:
        # `paced` sends one frame per tick: the update goes out here, and the step 1 it
        # returns right after it.
        sent.append(now)
        client.send_frame(0x2, typist.next(seq, now))
        return step1

    first = len(own.answers)
    cpu = Window.open(lone.processes, core)
    achieved = await paced(client, rate, count, message=message, opcode=0x2)
    lone.asked += count
    answered = await own.steps.reach(lone.asked, 30.0)
    usage = cpu.close()
    arrivals = own.answers[first : first + count]
    return {
        "rate_updates_per_s": round(rate, 1),
        "achieved_updates_per_s": round(achieved, 1),
        "updates": count,
        "answers": len(arrivals),
        "complete": answered,
        "stored_ms": latency_ms(a - s for a, s in zip(arrivals, sent, strict=False)),
        "cpu": usage,
    }


async def lone_clients(
    servers: dict[str, Process], plan: Plan, core: int | None
) -> dict[str, list[dict[str, Any]]]:
    """A client alone typing at `lone_rate` on the service, over JSON (send -> `yjs_ack`) and
    over `/yjs/` (send -> step 2 of the step 1 after it), measured alternately."""
    lones: list[Lone] = []
    healths: list[Health] = []
    try:
        for kind in (SERVICE, SERVICE_YJS):
            lone, health = await open_lone(kind, servers[kind])
            lones.append(lone)
            healths.append(health)

        def measure(lone: Lone) -> Callable[[], Awaitable[dict[str, Any]]]:
            if lone.kind == SERVICE:
                return functools.partial(
                    ack_latency, lone.client, lone.own, lone.typist, lone.processes,
                    (Meter(), 0), plan.lone_rate, plan.lone_seconds, core,
                )  # fmt: skip
            return functools.partial(stored_latency, lone, plan.lone_rate, plan.lone_seconds, core)

        runs: dict[str, list[dict[str, Any]]] = {lone.kind: [] for lone in lones}
        for repeat in range(plan.repeats):
            for lone in lones if repeat % 2 == 0 else lones[::-1]:
                runs[lone.kind].append(await quietly(plan, measure(lone)))
        for lone, health in zip(lones, healths, strict=True):
            check([lone.own], health, f"E {lone.kind} lone client")
        return runs
    finally:
        close_all(lone.client for lone in lones)


async def fan_out(plan: Plan, pinning: Pinning, log: Log) -> dict[str, Any]:
    """Every kind up at once with a room each, measured alternately as in B: saturated, then
    delivery latency at a typist's rate (`lone_rate`) and at half the slowest kind's saturated
    rate, the same rates for every kind; then the service's acknowledgements (JSON) at half its
    own saturated rate, and for a lone client (with `/yjs/`'s stored-answer latency)."""
    size = plan.document_room
    servers: dict[str, Process] = {}
    rooms: list[DocRoom] = []
    core = pinning.server_core
    try:
        for kind in DOCUMENT_KINDS:
            servers[kind] = await start(kind, pinning, plan)
            rooms.append(await open_doc_room(kind, servers[kind], size, "docs-fanout"))
        for room in rooms:
            await quiet(room.meter)
        # One unrecorded saturation each first: Node's compiler keeps optimising the hot
        # paths well past the 100 warm-up messages of a measurement (in trial runs the
        # y-websocket server's three repetitions rose 154k -> 169k -> 192k deliveries/s).
        warmup = {room.kind: await saturate_updates(room, plan, core) for room in rooms}
        saturation = await alternate(rooms, plan, lambda r: saturate_updates(r, plan, core))
        updates = {kind: summarize(runs, "messages_per_s") for kind, runs in saturation.items()}
        # One rate for all, which saturates none of them: latencies at the same offered load.
        common = min(updates.values()) / 2
        typing = await alternate(
            rooms, plan, lambda r: delivery_latency(r, plan.lone_rate, plan.lone_seconds, core)
        )
        loaded = await alternate(
            rooms, plan, lambda r: delivery_latency(r, common, plan.half_load_seconds, core)
        )
        ours = rooms[0]
        assert ours.kind == SERVICE
        rate = updates[SERVICE] / 2
        half_load = functools.partial(
            ack_latency,
            ours.sender,
            ours.own,
            ours.typist,
            ours.processes,
            (ours.meter, ours.recipients),
            rate,
            plan.half_load_seconds,
            core,
        )
        half = [await quietly(plan, half_load) for _ in range(plan.repeats)]
        lone = await lone_clients(servers, plan, core)
        for room in rooms:
            check([*room.receivers, room.own], room.health, f"E {room.kind} room {size}")
        result: dict[str, Any] = {
            "room_size": size,
            "recipients": size - 1,
            "typing_updates_per_s": plan.lone_rate,
            "loaded_updates_per_s": round(common, 1),
        }
        for room in rooms:
            kind = room.kind
            result[kind] = {
                "deliveries_per_s": summarize(saturation[kind], "deliveries_per_s"),
                "deliveries_per_cpu_s": summarize(saturation[kind], "deliveries_per_cpu_s"),
                "updates_per_s": summarize(saturation[kind], "messages_per_s"),
                **{
                    f"{load}_{key}_{q}": summarize(runs[kind], key, q)
                    for load, runs in (("typing", typing), ("loaded", loaded))
                    for key in ("per_delivery_ms", "whole_room_ms")
                    for q in ("p50", "p99")
                },
                "saturation_runs": saturation[kind],
                "warmup_run": warmup[kind],
                "typing_runs": typing[kind],
                "loaded_runs": loaded[kind],
                "frames_not_counted": {
                    "greetings": sum(sink.greetings for sink in room.receivers),
                    "keepalives": sum(sink.keepalives for sink in room.receivers),
                    "others": sum(sink.others for sink in room.receivers),
                },
            }
            r = result[kind]
            log(
                f"E {kind:11} room {size}: {r['deliveries_per_s']:9,.0f} deliveries/s (runs: "
                + ", ".join(
                    f"{run['deliveries_per_s']:,.0f} @ {run['cpu'].get(kind + '_cpu_pct')}% CPU"
                    for run in saturation[kind]
                )
                + f"); delivery p50/p99 at {plan.lone_rate:g}/s {r['typing_per_delivery_ms_p50']}"
                f"/{r['typing_per_delivery_ms_p99']} ms, at {common:,.0f}/s "
                f"{r['loaded_per_delivery_ms_p50']}/{r['loaded_per_delivery_ms_p99']} ms"
            )
        result[SERVICE].update(
            {
                "half_load_updates_per_s": round(rate, 1),
                "half_load_ack_ms_p50": summarize(half, "ack_ms", "p50"),
                "half_load_ack_ms_p99": summarize(half, "ack_ms", "p99"),
                "lone_ack_ms_p50": summarize(lone[SERVICE], "ack_ms", "p50"),
                "lone_ack_ms_p99": summarize(lone[SERVICE], "ack_ms", "p99"),
                "half_load_runs": half,
                "lone_runs": lone[SERVICE],
            }
        )
        result[SERVICE_YJS].update(
            {
                "lone_stored_ms_p50": summarize(lone[SERVICE_YJS], "stored_ms", "p50"),
                "lone_stored_ms_p99": summarize(lone[SERVICE_YJS], "stored_ms", "p99"),
                "lone_runs": lone[SERVICE_YJS],
            }
        )
        s, y = result[SERVICE], result[SERVICE_YJS]
        log(
            f"E service acks: at {rate:,.0f} updates/s in the room p50 "
            f"{s['half_load_ack_ms_p50']} p99 {s['half_load_ack_ms_p99']} ms; alone at "
            f"{plan.lone_rate:g}/s p50 {s['lone_ack_ms_p50']} p99 {s['lone_ack_ms_p99']} ms; "
            f"/yjs update -> step 2 alone p50 {y['lone_stored_ms_p50']} "
            f"p99 {y['lone_stored_ms_p99']} ms"
        )
        return result
    finally:
        for server in servers.values():
            server.stop()
        for room in rooms:
            close_all(room.clients)


async def fill_store(server: Service, documents: dict[DocumentKey, bytes]) -> None:
    """Store documents the way the service does (its own SqliteStore), before it starts."""
    store = SqliteStore(server.store_path)
    await store.start()
    try:
        await asyncio.gather(*(store.append(key, update) for key, update in documents.items()))
    finally:
        await store.stop()


async def memory_service(plan: Plan, pinning: Pinning, log: Log) -> dict[str, Any]:
    """RSS growth when N held connections each open a stored document of ~10 KB (the sync
    step loads it into memory): the connections are open before the first reading, so the
    difference is the documents alone."""
    n = plan.document_count
    server = service(pinning, plan)
    contents = [document_update(plan.document_bytes, seed=i) for i in range(n + WARM)]
    projects = [f"mem-{i}" for i in range(n + WARM)]
    await fill_store(
        server, {DocumentKey(p, DOCUMENT_ID): u for p, u in zip(projects, contents, strict=True)}
    )
    await asyncio.to_thread(server.start)
    clients: list[Client] = []
    try:
        target, wire = target_of(SERVICE, server), wire_for(SERVICE)
        meter, health = Meter(), Health()
        sink = DocSink(meter)
        step1 = wire.step1(EMPTY_STATE_VECTOR)
        # Warm up: the first documents loaded pay for code paths, caches and the store.
        warm = await connect(target, projects[n:], [sink] * WARM, health, first_index=90_000)
        require(warm, WARM, health, "E memory warm-up")
        clients.extend(warm)
        for client in warm:
            client.send_text(step1)
        if not await sink.steps.reach(WARM, 60.0):
            raise BenchError("E memory: warm-up documents did not open")
        opened = await connect(target, projects[:n], [sink] * n, health)
        require(opened, n, health, f"E memory service N={n}")
        clients.extend(opened)
        await quiet(meter)
        await asyncio.sleep(1.0)
        before = server.rss_kib()
        for client in opened:
            client.send_text(step1)
        if not await sink.steps.reach(WARM + n, 120.0):
            raise BenchError(f"E memory: {sink.steps.received - WARM} of {n} documents opened")
        await quiet(meter)
        await asyncio.sleep(1.0)
        after = server.rss_kib()
        check([sink], health, "E memory service")
        return memory_result(SERVICE, n, before, after, contents[:n], log)
    finally:
        server.stop()
        close_all(clients)


async def memory_synced(kind: str, plan: Plan, pinning: Pinning, log: Log) -> dict[str, Any]:
    """The same documents on a binary server, put there by the same frames on both: each is
    opened by a connection that runs the sync step (answering the server's step 1 with its
    content), sends a step 1 with the content's state vector, whose answer says the content
    is applied (on the service: stored), and closes. The y-websocket server keeps a Y.Doc for
    each URL as long as it runs; the service keeps a document for DOCUMENT_GRACE after its
    last connection, lengthened here so that none goes before the reading. N connections
    opened and closed the same way on one document first warm the heap up to that many
    connections' garbage."""
    n = plan.document_count
    # The default grace (30 s) is near how long this takes on a busy machine.
    env = {"DOCUMENT_GRACE": "10m"} if kind == SERVICE_YJS else None
    server = await start(kind, pinning, plan, env)
    contents = [document_update(plan.document_bytes, seed=i) for i in range(n)]
    try:
        target, wire = target_of(kind, server), wire_for(kind)
        meter, health = Meter(), Health()
        sink = DocSink(meter)
        step1 = wire.step1(EMPTY_STATE_VECTOR)

        async def open_and_close(projects: list[str], updates: list[bytes]) -> None:
            base = sink.steps.received
            clients = await connect(target, projects, [sink] * len(projects), health)
            require(clients, len(projects), health, f"E memory {kind} N={n}")
            for client, update in zip(clients, updates, strict=True):
                client.send_frame(wire.opcode, step1)
                client.send_frame(wire.opcode, wire.step2(update))
                client.send_frame(wire.opcode, wire.step1(get_state(update)))
            if not await sink.steps.reach(base + 2 * len(projects), 120.0):
                raise BenchError(f"E memory {kind}: sync answers missing")
            # The y-websocket server echoes an applied update to every connection of its
            # document.
            await quiet(meter)
            check([sink], health, f"E memory {kind}")
            close_all(clients)

        await open_and_close(["mem-warm"] * n, [contents[0]] * n)
        await asyncio.sleep(2.0)
        before = server.rss_kib()
        await open_and_close([f"mem-{i}" for i in range(n)], contents)
        await asyncio.sleep(2.0)
        after = server.rss_kib()
        return memory_result(kind, n, before, after, contents, log)
    finally:
        server.stop()


def memory_result(
    kind: str, n: int, before: int, after: int, contents: list[bytes], log: Log
) -> dict[str, Any]:
    per_document = (after - before) / n
    update_kib = statistics.fmean(map(len, contents)) / 1024
    log(
        f"E {kind:11} {n} documents: RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB, "
        f"{per_document:.1f} KiB per document ({update_kib:.1f} KiB of Yjs update each)"
    )
    return {
        "documents": n,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "per_document_kib": round(per_document, 1),
        "update_kib": round(update_kib, 1),
    }


def url(kind: str, server: Process, project: str, index: int) -> str:
    if kind == YWEBSOCKET:
        return f"ws://127.0.0.1:{server.port}/ws/{project}"
    route = "ws" if kind == SERVICE else "yjs"
    document = f"/{DOCUMENT_ID}" if kind == SERVICE_YJS else ""
    return f"ws://127.0.0.1:{server.port}/{route}/{project}{document}?token={token(index)}"


async def until(ws: ClientConnection, head: str | bytes) -> str | bytes:
    """Read until a message starting with `head` arrives; a service error fails the run."""
    while True:
        message = await ws.recv()
        if isinstance(message, str) and message.startswith('{"type":"error"'):
            raise BenchError(f"E: the service refused: {message[:300]}")
        if isinstance(message, type(head)) and message.startswith(head):  # type: ignore[arg-type]
            return message


async def upload(kind: str, ws: ClientConnection, update: bytes) -> None:
    """Put `update` on the server and return once it has it: the service in parts, then its
    acknowledgement; y-websocket in one sync step 2, then the update's echo; the service on
    `/yjs/` in one sync step 2 too, then a step 1, answered once the update is stored (it
    echoes nothing to the sender)."""
    wire = wire_for(kind)
    if kind == YWEBSOCKET:
        await ws.send(wire.step2(update))
        await until(ws, b"\x00\x02")
        return
    if kind == SERVICE_YJS:
        await ws.send(wire.step2(update))
        await ws.send(wire.step1(get_state(update)))
        await until(ws, b"\x00\x01")
        return
    await until(ws, '{"type":"presence_state"')
    await ws.send(wire.step1(EMPTY_STATE_VECTOR).decode())
    await until(ws, '{"type":"yjs_sync_step2"')
    parts = [update[i : i + PART_BYTES] for i in range(0, len(update), PART_BYTES)]
    for index, part in enumerate(parts):
        payload = {
            "document_id": DOCUMENT_ID,
            "index": index,
            "final": index == len(parts) - 1,
            "data": b64(part),
        }
        await ws.send(json.dumps({"type": "yjs_update_part", "payload": payload}))
    await until(ws, '{"type":"yjs_ack"')


async def join_once(kind: str, server: Process, index: int, length: int) -> dict[str, Any]:
    """One late joiner: connect, send sync step 1 with an empty state vector, wait for step
    2, apply it to a fresh Doc; the text must be the whole document."""
    wire = wire_for(kind)
    started = now_ns()
    async with ws_connect(
        url(kind, server, "docs-late", index), compression=None, max_size=None, ping_interval=None
    ) as ws:
        opened = now_ns()
        step1 = wire.step1(EMPTY_STATE_VECTOR)
        await ws.send(step1.decode() if kind == SERVICE else step1)
        answer = await until(ws, '{"type":"yjs_sync_step2"' if kind == SERVICE else b"\x00\x01")
        received = now_ns()
    if isinstance(answer, str):
        update = base64.b64decode(json.loads(answer)["payload"]["update"])
    else:
        update = read_message(answer[2:])
    doc: Doc[Text] = Doc()
    doc.apply_update(update)
    got = len(doc.get(TEXT_NAME, type=Text))
    applied = now_ns()
    if got != length:
        raise BenchError(f"E late joiner on {kind}: {got} characters synced of {length}")
    return {
        "connect_ms": round((opened - started) / 1e6, 3),
        "step1_to_step2_ms": round((received - opened) / 1e6, 3),
        "decode_and_apply_ms": round((applied - received) / 1e6, 3),
        "total_ms": round((applied - started) / 1e6, 3),
        "update_bytes": len(update),
    }


async def joiners(
    kind: str, server: Process, count: int, first: int, length: int, core: int | None
) -> dict[str, Any]:
    """`count` late joiners one after the other, under one CPU window (a single sync is too
    short for /proc's ticks), for `quietly`."""
    cpu = Window.open({kind: server}, core)
    runs = []
    for index in range(first, first + count):
        runs.append(await join_once(kind, server, index, length))
        await asyncio.sleep(0.2)
    return {"joins": runs, "cpu": cpu.close()}


async def late_joiner(plan: Plan, pinning: Pinning, log: Log) -> dict[str, Any]:
    """A document of `late_document_bytes` characters put on each server by a first client,
    which stays (the document stays in memory, as while someone edits it); after one join
    each to warm up (Node compiles its code paths on first use), rounds of `late_joiners`
    joiners, alternating between the servers as B alternates rooms, a round taken again
    while the machine is busy."""
    update = document_update(plan.late_document_bytes, seed=7)
    doc: Doc[Text] = Doc()
    doc.apply_update(update)
    length = len(doc.get(TEXT_NAME, type=Text))
    core = pinning.server_core
    servers: dict[str, Process] = {}
    creators: list[ClientConnection] = []
    result: dict[str, Any] = {"characters": length, "update_bytes": len(update)}
    try:
        for kind in DOCUMENT_KINDS:
            servers[kind] = await start(kind, pinning, plan)
            creator = await ws_connect(
                url(kind, servers[kind], "docs-late", 0),
                compression=None,
                max_size=None,
                ping_interval=None,
            )
            creators.append(creator)
            began = time.monotonic()
            await upload(kind, creator, update)
            warm = await join_once(kind, servers[kind], 1, length)
            result[kind] = {"upload_seconds": round(time.monotonic() - began, 3), "warm": warm}
        rounds: dict[str, list[dict[str, Any]]] = {kind: [] for kind in DOCUMENT_KINDS}
        first = 2
        for repeat in range(plan.repeats):
            order = DOCUMENT_KINDS if repeat % 2 == 0 else DOCUMENT_KINDS[::-1]
            for kind in order:
                measure = functools.partial(
                    joiners, kind, servers[kind], plan.late_joiners, first, length, core
                )
                rounds[kind].append(await quietly(plan, measure))
                first += plan.late_joiners * (1 + plan.noise_retries)
        for kind in DOCUMENT_KINDS:
            runs = [run for kept in rounds[kind] for run in kept["joins"]]
            result[kind].update({f"{key}_median": summarize(runs, key) for key in JOIN_TIMINGS})
            result[kind]["rounds"] = rounds[kind]
            log(
                f"E {kind:11} late joiner, {length:,} characters ({len(update):,} bytes of "
                f"update): {result[kind]['total_ms_median']} ms median (step 1 -> step 2 "
                f"{result[kind]['step1_to_step2_ms_median']} ms; joins "
                + ", ".join(f"{run['total_ms']:.0f}" for run in runs)
                + ")"
            )
        return result
    finally:
        for creator in creators:
            await creator.close()
        for server in servers.values():
            server.stop()


@dataclass(frozen=True)
class Figure:
    """One figure of E for each kind that has it (None where it has not), with the JSON
    kind's metric name (the one earlier result files use) and the `/yjs/` kind's."""

    metric: str
    unit: str
    values: dict[str, float | None]
    yjs_metric: str = ""

    @property
    def yjs_ratio(self) -> float | None:
        """The service on `/yjs/` against the y-websocket server: the same client bytes."""
        ours, peer = self.values.get(SERVICE_YJS), self.values.get(YWEBSOCKET)
        return ours / peer if ours is not None and peer else None


def figures(
    plan: Plan, fan: dict[str, Any], memory: dict[str, Any], late: dict[str, Any]
) -> list[Figure]:
    size = plan.document_room
    room = f"room {size}"
    typing = f"{room}, {plan.lone_rate:g} updates/s"
    loaded = f"{room}, half the slowest kind's saturated rate"
    megabytes = plan.late_document_bytes / (1 << 20)

    def each(source: dict[str, Any], key: str) -> dict[str, float | None]:
        return {kind: source[kind].get(key) for kind in DOCUMENT_KINDS}

    found = [
        Figure(
            f"yjs_update deliveries/s, {room}, every update applied",
            "1/s",
            each(fan, "deliveries_per_s"),
            f"/yjs: sync update deliveries/s, {room}, same client bytes",
        ),
        Figure(
            f"yjs_update deliveries per server CPU-second, {room}",
            "1/s",
            each(fan, "deliveries_per_cpu_s"),
            f"/yjs: deliveries per server CPU-second, {room}",
        ),
    ]
    for label, prefix in ((typing, "typing"), (loaded, "loaded")):
        for key, q in (("per_delivery", "p50"), ("per_delivery", "p99"), ("whole_room", "p99")):
            what = f"{key.replace('_', '-')} latency {q}, {label}"
            found.append(Figure(what, "ms", each(fan, f"{prefix}_{key}_ms_{q}"), f"/yjs: {what}"))
    lone = f"lone client, {plan.lone_rate:g} updates/s"
    for label, prefix in ((f"{room}, half load", "half_load"), (lone, "lone")):
        for q in ("p50", "p99"):
            ack = fan[SERVICE][f"{prefix}_ack_ms_{q}"]
            found.append(Figure(f"yjs_ack latency {q}, {label}", "ms", {SERVICE: ack}))
    for q in ("p50", "p99"):
        found.append(
            Figure(
                "",
                "ms",
                {SERVICE_YJS: fan[SERVICE_YJS][f"lone_stored_ms_{q}"]},
                f"/yjs: update -> step 2 of the step 1 after it (stored) {q}, {lone}",
            )
        )
    found.append(
        Figure(
            f"RSS per open document, {plan.document_bytes:,} characters",
            "KiB",
            {kind: memory[kind]["per_document_kib"] for kind in DOCUMENT_KINDS},
            f"/yjs: RSS per resident document, {plan.document_bytes:,} characters",
        )
    )
    for label, key in (
        ("connect + sync + apply", "total_ms_median"),
        ("sync step 1 -> step 2", "step1_to_step2_ms_median"),
    ):
        what = f"late joiner, {megabytes:g} MiB document: {label}, median"
        found.append(
            Figure(what, "ms", {kind: late[kind][key] for kind in DOCUMENT_KINDS}, f"/yjs: {what}")
        )
    return found


def rows_of(found: list[Figure], peer: str) -> list[Row]:
    """The table's rows: each figure for the service over JSON against the y-websocket server
    (the rows of earlier runs), and next to it for the service over `/yjs/` against it."""
    rows = []
    for figure in found:
        ours, yjs, theirs = (figure.values.get(kind) for kind in DOCUMENT_KINDS)
        if figure.metric:
            rows.append(Row("E", figure.metric, figure.unit, ours, theirs))
        if figure.yjs_metric:
            note = "service column: the service on /yjs/, same client bytes as y-websocket"
            rows.append(Row("E", figure.yjs_metric, figure.unit, yjs, theirs, note=note))
    throughput = rows[0]
    throughput.target = "≥ 1x y-websocket"
    throughput.note = f"reference column: {peer}"
    ratio = throughput.ratio
    throughput.verdict = verdict(ratio is not None and ratio >= 1.0)
    return rows


def side_by_side(found: list[Figure]) -> list[dict[str, Any]]:
    return [
        {
            "metric": figure.metric or figure.yjs_metric,
            "unit": figure.unit,
            **{kind: figure.values.get(kind) for kind in DOCUMENT_KINDS},
            "ratio_service_yjs_to_y_websocket": (
                None if figure.yjs_ratio is None else round(figure.yjs_ratio, 3)
            ),
        }
        for figure in found
    ]


def show(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if unit == "1/s" else f"{value:,.3f}" if unit == "ms" else f"{value:.1f}"


def log_side_by_side(found: list[Figure], log: Log) -> None:
    """The three kinds in columns (the table below has two: service and reference)."""
    width = max(len(figure.metric or figure.yjs_metric) for figure in found) + 6
    head = f"{'/ws JSON':>10} {'/yjs':>10} {'y-websocket':>11} /yjs÷y-ws"
    log(f"E side by side: {'metric':{width}} {head}")
    for figure in found:
        ours, yjs, theirs = (show(figure.values.get(kind), figure.unit) for kind in DOCUMENT_KINDS)
        ratio = "" if figure.yjs_ratio is None else f"{figure.yjs_ratio:.2f}"
        name = f"{figure.metric or figure.yjs_metric} ({figure.unit})"
        log(f"E side by side: {name:{width}} {ours:>10} {yjs:>10} {theirs:>11} {ratio:>9}")


async def scenario_e(plan: Plan, pinning: Pinning, log: Log) -> Outcome:
    await asyncio.to_thread(install_peer)
    versions = peer_versions()
    log("E y-websocket: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    outcome = Outcome(details={"peer": versions})
    # The floor of an acknowledgement: the store commits with synchronous=FULL, one fsync
    # per batch, on the disk of the temporary directory where the service keeps it.
    with tempfile.TemporaryDirectory(prefix="bench-fsync-") as directory:
        p50, p99 = await asyncio.to_thread(fsync_latency, Path(directory))
    outcome.details["fsync_4kib_ms"] = {"p50": round(p50, 3), "p99": round(p99, 3)}
    log(f"E write + fsync of 4 KiB on the store's disk: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    fan = await fan_out(plan, pinning, log)
    memory = {SERVICE: await memory_service(plan, pinning, log)}
    for kind in BINARY_KINDS:
        memory[kind] = await memory_synced(kind, plan, pinning, log)
    late = await late_joiner(plan, pinning, log)
    found = figures(plan, fan, memory, late)
    log_side_by_side(found, log)
    outcome.details.update(
        {
            "fan_out": fan,
            "memory": memory,
            "late_joiner": late,
            "side_by_side": side_by_side(found),
        }
    )
    peer = f"@y/websocket-server {versions.get('@y/websocket-server', '?')}"
    outcome.rows.extend(rows_of(found, peer))
    return outcome
