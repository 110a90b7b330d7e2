"""E. Documents, every update applied by the server: `yjs_update` fan-out in a room of 100
against the y-websocket server (`@y/websocket-server`, which applies every update to its
Y.Doc too), the service's acknowledgement latency, memory per open document, and how long a
late joiner takes to sync a 1 MiB document."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import statistics
import tempfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrdt import Doc, Text, read_message
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from app.documents.store import DocumentKey, SqliteStore
from bench.documents import fsync_latency
from bench.kinds import DOCUMENT_KINDS, SERVICE, YWEBSOCKET
from bench.loadgen import Client, Health, Meter, close_all, connect, now_ns, paced, quiet, settle
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
    """A FanRoom on one document: the receivers' frames go to `sink`, the sender types with
    `typist` and its own frames (the service's acknowledgements) go to `own`."""

    wire: Wire
    typist: Typist
    sink: DocSink
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
    meter, health = Meter(), Health()
    sink = DocSink(meter, recipients)
    target = target_of(kind, server)
    clients = await connect(target, [project] * recipients, [sink] * recipients, health)
    require(clients, recipients, health, f"E {kind} room {size}")
    own = DocSink(Meter())
    senders = await connect(target, [project], [own], health, first_index=recipients)
    require(senders, 1, health, f"E {kind} sender")
    step1 = wire.step1(EMPTY_STATE_VECTOR)
    for client in [*clients, *senders]:
        client.send_frame(wire.opcode, step1)
    synced = await sink.steps.reach(recipients, 60.0) and await own.steps.reach(1, 60.0)
    if not synced:
        raise BenchError(f"E {kind}: {sink.steps.received} of {recipients} sync answers")
    typist = Typist(wire, ROOM_TYPIST)
    base = meter.received
    senders[0].send_frame(wire.opcode, typist.take_seed())
    if not await meter.reach(base + recipients, 30.0):
        raise BenchError(f"E {kind}: the paragraph reached {meter.received - base} members")
    check([sink, own], health, f"E {kind} room {size}")
    processes: dict[str, Process] = {kind: server}
    return DocRoom(kind, processes, meter, {"all": sink}, senders[0], recipients,
                   [*clients, *senders], wire, typist, sink, own, health)  # fmt: skip


async def saturate_updates(room: FanRoom, plan: Plan, core: int | None) -> dict[str, Any]:
    """B's saturation with the room's typist: every message a new keystroke, made before."""
    assert isinstance(room, DocRoom)
    room.typist.prepare(saturation_messages(plan, room.recipients))
    return await saturate(room, plan, core, room.typist.next, room.wire.opcode, DOCUMENT_WINDOW)


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


async def lone_client(server: Process, plan: Plan, core: int | None) -> list[dict[str, Any]]:
    """A client alone in its project: sync step, its paragraph, then typing at `lone_rate`."""
    wire = wire_for(SERVICE)
    health = Health()
    own = DocSink(Meter())
    clients = await connect(
        target_of(SERVICE, server), ["docs-lone"], [own], health, first_index=500
    )
    require(clients, 1, health, "E lone client")
    try:
        clients[0].send_text(wire.step1(EMPTY_STATE_VECTOR))
        if not await own.steps.reach(1, 30.0):
            raise BenchError("E lone client: no sync answer")
        typist = Typist(wire, LONE_TYPIST)
        clients[0].send_text(typist.take_seed())
        measure = functools.partial(
            ack_latency,
            clients[0],
            own,
            typist,
            {SERVICE: server},
            (Meter(), 0),
            plan.lone_rate,
            plan.lone_seconds,
            core,
        )
        runs = [await quietly(plan, measure) for _ in range(plan.repeats)]
        check([own], health, "E lone client")
        return runs
    finally:
        close_all(clients)


async def fan_out(plan: Plan, pinning: Pinning, log: Log) -> dict[str, Any]:
    """Both servers up at once with a room each, measured alternately as in B; then the
    service's acknowledgements at half its saturated rate and for a lone client."""
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
        ours = rooms[0]
        rate = summarize(saturation[SERVICE], "messages_per_s") / 2
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
        lone = await lone_client(servers[SERVICE], plan, core)
        for room in rooms:
            check([room.sink, room.own], room.health, f"E {room.kind} room {size}")
        result: dict[str, Any] = {"room_size": size, "recipients": size - 1}
        for kind in DOCUMENT_KINDS:
            result[kind] = {
                "deliveries_per_s": summarize(saturation[kind], "deliveries_per_s"),
                "deliveries_per_cpu_s": summarize(saturation[kind], "deliveries_per_cpu_s"),
                "updates_per_s": summarize(saturation[kind], "messages_per_s"),
                "saturation_runs": saturation[kind],
                "warmup_run": warmup[kind],
            }
            log(
                f"E {kind:11} room {size}: {result[kind]['deliveries_per_s']:9,.0f} "
                "deliveries/s (runs: "
                + ", ".join(
                    f"{run['deliveries_per_s']:,.0f} @ {run['cpu'].get(kind + '_cpu_pct')}% CPU"
                    for run in saturation[kind]
                )
                + ")"
            )
        result[SERVICE].update(
            {
                "half_load_updates_per_s": round(rate, 1),
                "half_load_ack_ms_p50": summarize(half, "ack_ms", "p50"),
                "half_load_ack_ms_p99": summarize(half, "ack_ms", "p99"),
                "lone_ack_ms_p50": summarize(lone, "ack_ms", "p50"),
                "lone_ack_ms_p99": summarize(lone, "ack_ms", "p99"),
                "half_load_runs": half,
                "lone_runs": lone,
            }
        )
        s = result[SERVICE]
        log(
            f"E service acks: at {rate:,.0f} updates/s in the room p50 "
            f"{s['half_load_ack_ms_p50']} p99 {s['half_load_ack_ms_p99']} ms; alone at "
            f"{plan.lone_rate:g}/s p50 {s['lone_ack_ms_p50']} p99 {s['lone_ack_ms_p99']} ms"
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


async def memory_peer(plan: Plan, pinning: Pinning, log: Log) -> dict[str, Any]:
    """The same documents on the y-websocket server, which keeps a Y.Doc for each URL as
    long as it runs: each is opened by a connection that runs the sync step (answering the
    server's step 1 with its content) and then closes. N connections opened and closed the
    same way on one document first warm the heap up to that many connections' garbage."""
    n = plan.document_count
    server = await start(YWEBSOCKET, pinning, plan)
    contents = [document_update(plan.document_bytes, seed=i) for i in range(n)]
    try:
        target, wire = target_of(YWEBSOCKET, server), wire_for(YWEBSOCKET)
        meter, health = Meter(), Health()
        sink = DocSink(meter)
        step1 = wire.step1(EMPTY_STATE_VECTOR)

        async def open_and_close(projects: list[str], updates: list[bytes]) -> None:
            base = sink.steps.received
            clients = await connect(target, projects, [sink] * len(projects), health)
            require(clients, len(projects), health, f"E memory y-websocket N={n}")
            for client, update in zip(clients, updates, strict=True):
                client.send_frame(wire.opcode, step1)
                client.send_frame(wire.opcode, wire.step2(update))
            if not await sink.steps.reach(base + len(projects), 120.0):
                raise BenchError("E memory y-websocket: sync answers missing")
            # The server echoes an applied update to every connection of its document.
            await quiet(meter)
            close_all(clients)

        await open_and_close(["mem-warm"] * n, [contents[0]] * n)
        await asyncio.sleep(2.0)
        before = server.rss_kib()
        await open_and_close([f"mem-{i}" for i in range(n)], contents)
        await asyncio.sleep(2.0)
        after = server.rss_kib()
        return memory_result(YWEBSOCKET, n, before, after, contents, log)
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
    path = f"ws://127.0.0.1:{server.port}/ws/{project}"
    return f"{path}?token={token(index)}" if kind == SERVICE else path


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
    acknowledgement; y-websocket in one sync step 2, then the update's echo."""
    wire = wire_for(kind)
    if kind != SERVICE:
        await ws.send(wire.step2(update))
        await until(ws, b"\x00\x02")
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
    memory = {
        SERVICE: await memory_service(plan, pinning, log),
        YWEBSOCKET: await memory_peer(plan, pinning, log),
    }
    late = await late_joiner(plan, pinning, log)
    outcome.details.update({"fan_out": fan, "memory": memory, "late_joiner": late})
    s, y = fan[SERVICE], fan[YWEBSOCKET]
    size = plan.document_room
    peer = f"@y/websocket-server {versions.get('@y/websocket-server', '?')}"
    throughput = Row(
        "E",
        f"yjs_update deliveries/s, room {size}, every update applied",
        "1/s",
        s["deliveries_per_s"],
        y["deliveries_per_s"],
        target="≥ 1x y-websocket",
        note=f"reference column: {peer}",
    )
    ratio = throughput.ratio
    throughput.verdict = verdict(ratio is not None and ratio >= 1.0)
    rows = [
        throughput,
        Row(
            "E",
            f"yjs_update deliveries per server CPU-second, room {size}",
            "1/s",
            s["deliveries_per_cpu_s"],
            y["deliveries_per_cpu_s"],
        ),
    ]
    for label, prefix in (
        (f"room {size}, half load", "half_load"),
        (f"lone client, {plan.lone_rate:g} updates/s", "lone"),
    ):
        for q in ("p50", "p99"):
            rows.append(
                Row("E", f"yjs_ack latency {q}, {label}", "ms", s[f"{prefix}_ack_ms_{q}"], None)
            )
    rows.append(
        Row(
            "E",
            f"RSS per open document, {plan.document_bytes:,} characters",
            "KiB",
            memory[SERVICE]["per_document_kib"],
            memory[YWEBSOCKET]["per_document_kib"],
        )
    )
    megabytes = plan.late_document_bytes / (1 << 20)
    for label, key in (
        ("connect + sync + apply", "total_ms_median"),
        ("sync step 1 -> step 2", "step1_to_step2_ms_median"),
    ):
        rows.append(
            Row(
                "E",
                f"late joiner, {megabytes:g} MiB document: {label}, median",
                "ms",
                late[SERVICE][key],
                late[YWEBSOCKET][key],
            )
        )
    outcome.rows.extend(rows)
    return outcome
