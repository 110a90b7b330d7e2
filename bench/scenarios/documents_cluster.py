"""F. Documents across two instances on one Redis and one PostgreSQL: scenario C with
server-side documents. Both instances hold every document and apply every update (live
through Redis, and from the store at each catch-up); each stores what its own clients send
in the PostgreSQL database they share, and acknowledges it once committed.

What it measures, on a fresh PostgreSQL and a fresh Redis of its own:

- bytes per document: in PostgreSQL (a 10,000-character document, with the longest log the
  service keeps before compacting, then compacted by the service itself) and in Redis (with
  every document resident on both instances);
- the catch-up's cost: what the heads query costs PostgreSQL per resident document per second;
- acknowledgement latency and delivery latency to the sender's instance and to the other one,
  for a lone typist and in a room of 100 at half its saturated rate;
- the store's write rate at saturation: many documents, a typist on each (half on each
  instance, each awaiting its acknowledgement before typing on) and a reader on the other
  instance, with the CPU of every process, PostgreSQL's statements and its WAL syncs;
- PostgreSQL alone: PostgresStore's appends from the load process, the instances idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import string
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from pycrdt import Doc, Text
from redis.asyncio import Redis

from app.documents.store import DocumentKey, PostgresStore
from bench.documents import fsync_latency
from bench.kinds import SERVICE
from bench.loadgen import Client, Health, Meter, close_all, connect, now_ns, paced, quiet, settle
from bench.measure import Window, latency_ms
from bench.scenarios.harness import BenchError, Log, Outcome, Plan, Row, require, target_of
from bench.scenarios.room import FanRoom, quietly, saturate, saturation_messages, summarize
from bench.servers import Pinning, PostgresProcess, Process, RedisProcess, Service
from bench.yjsload import (
    DOCUMENT_ID,
    EMPTY_STATE_VECTOR,
    TEXT_NAME,
    DocSink,
    JsonWire,
    Typist,
    Wire,
)

# The typists' client ids (fixed, so every run types the same bytes).
LONE_TYPIST, ROOM_TYPIST, STORE_TYPIST, LOG_TYPIST = 3_301, 3_302, 3_303, 3_304
# As in E: `yjs_update` is durable, so a reader is closed 256 messages behind, never skipped.
DOCUMENT_WINDOW = 64
_UPDATE = b'{"type":"yjs_update"'
_FROM_STORE = b'"origin":"store"'
_UPDATE_KEY = b'"update":"'
# The instances' settings beyond C's: the store, and a short grace so that documents closed by
# one phase are unloaded (and compacted, by the service itself) before the next.
GRACE = "1s"


def _vocabulary() -> tuple[list[str], list[float]]:
    rng = random.Random(0)  # noqa: S311 - reproducible test content, not secrets
    words = [
        "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 11)))
        for _ in range(3000)
    ]
    # Zipf's law, as words in prose: the r-th most frequent ~ 1/r.
    return words, [1 / rank for rank in range(1, len(words) + 1)]


VOCABULARY, FREQUENCIES = _vocabulary()
MARKUP = ("\\emph{", "\\cite{", "\\ref{", "$x_{", "\\textbf{")


def prose_update(size: int, seed: int) -> bytes:
    """A Yjs update holding about `size` characters of LaTeX-like prose, lines inserted at
    random places as E's `document_update` writes them, but made of words drawn from a
    vocabulary with Zipf frequencies rather than one repeated sentence: stored bytes depend
    on how well PostgreSQL's TOAST compression (pglz) packs the content, and repeated text
    would pack far better than a real document."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test content, not secrets
    doc: Doc[Text] = Doc(client_id=rng.randrange(1, 2**32))
    text = doc.get(TEXT_NAME, type=Text)
    length = 0
    while length < size:
        words = rng.choices(VOCABULARY, FREQUENCIES, k=rng.randint(6, 16))
        if rng.random() < 0.3:
            at = rng.randrange(len(words))
            words[at] = rng.choice(MARKUP) + words[at] + "}"
        line = " ".join(words).capitalize() + ".\n"
        text.insert(rng.randrange(0, length + 1), line)
        length += len(line)
    return doc.get_update()


class RawWire(Wire):
    """Updates as they are stored: no envelope (to fill the store directly)."""

    def update(self, update: bytes) -> bytes:
        return update


def update_of(frame: bytes, start: int = 0, end: int | None = None) -> bytes:
    """The base64 `update` of a `yjs_update` frame, as sent or relayed: what names an update
    (every keystroke is unique in its document)."""
    end = len(frame) if end is None else end
    at = frame.find(_UPDATE_KEY, start, end) + len(_UPDATE_KEY)
    return frame[at : frame.find(b'"', at, end)]


class Lane(DocSink):
    """One connection's Yjs frames. While `record` is set, the arrival time of each
    `yjs_update` relayed live, by the update it carries; updates the connection got from the
    instance's catch-up instead (origin `store`: ones the live path had not brought yet) are
    only counted, in `fetched`. Acknowledgements and sync answers as in DocSink."""

    __slots__ = ("arrived", "fetched", "live")

    def __init__(self, meter: Meter) -> None:
        super().__init__(meter)
        self.arrived: dict[bytes, int] = {}
        self.fetched = 0
        self.live = 0

    def text(self, data: bytes, start: int, end: int, now: int) -> None:
        if data.startswith(_UPDATE, start, end):
            if data.find(_FROM_STORE, start, end) >= 0:
                self.fetched += 1
                self.meter.last_rx = now
                return
            if self.record:
                self.arrived[update_of(data, start, end)] = now
            self.live += 1
            self.meter.hit(now)
            return
        super().text(data, start, end, now)


@dataclass
class Cluster:
    postgres: PostgresProcess
    redis: RedisProcess
    a: Service
    b: Service
    pg: asyncpg.Connection
    kv: Redis
    prefix: str
    pinning: Pinning
    clients: list[Client] = field(default_factory=list)

    @property
    def processes(self) -> dict[str, Process]:
        return {
            "instance_a": self.a,
            "instance_b": self.b,
            "postgres": self.postgres,
            "redis": self.redis,
        }

    def instance(self, index: int) -> Service:
        return self.a if index % 2 == 0 else self.b


def fail_on(lanes: Sequence[DocSink], health: Health, what: str) -> None:
    errors = [error for lane in lanes for error in lane.errors]
    if errors or health.dropped:
        raise BenchError(f"{what}: {health.dropped} connections dropped; errors: {errors[:3]}")


async def open_lanes(
    cluster: Cluster,
    projects: Sequence[str],
    on: Sequence[Service],
    meter: Meter,
    health: Health,
    first_index: int,
    what: str,
) -> tuple[list[Client], list[Lane]]:
    """A connection per project, on the instance given for it, each with its own Lane; each
    runs the sync step (which loads the document on its instance). Returns them in order."""
    lanes = [Lane(meter) for _ in projects]
    clients: list[Client | None] = [None] * len(projects)
    for service in {id(s): s for s in on}.values():
        slots = [i for i, s in enumerate(on) if s is service]
        opened = await connect(
            target_of(SERVICE, service),
            [projects[i] for i in slots],
            [lanes[i] for i in slots],
            health,
            first_index=first_index + slots[0],
        )
        require(opened, len(slots), health, what)
        for slot, client in zip(slots, opened, strict=True):
            clients[slot] = client
    ready = [client for client in clients if client is not None]
    cluster.clients.extend(ready)
    step1 = JsonWire().step1(EMPTY_STATE_VECTOR)
    for client in ready:
        client.send_text(step1)
    deadline = time.monotonic() + 120
    while sum(lane.steps.received for lane in lanes) < len(lanes):
        if time.monotonic() > deadline:
            done = sum(lane.steps.received for lane in lanes)
            raise BenchError(f"{what}: {done} of {len(lanes)} sync answers")
        await asyncio.sleep(0.05)
    fail_on(lanes, health, what)
    return ready, lanes


# PostgreSQL's side: statements, WAL, sizes.

# The store's statements (app/documents/store/postgres.py) by a piece of their text; with
# pg_stat_statements.track = all, the foreign key's check run for each row inserted into
# yjs_updates is counted too, and the explicit BEGIN/COMMIT of compactions.
STATEMENT_KINDS = (
    ("append", "WITH batch AS"),
    ("heads", "SELECT d.project_id, d.document_id, d.last_seq"),
    ("since", "SELECT d.snapshot_seq, d.last_seq"),
    ("load", "SELECT d.snapshot, d.snapshot_seq"),
    ("compact_lock", "FOR UPDATE"),
    ("compact", "DELETE FROM yjs_updates"),
    ("foreign_key_check", "FOR KEY SHARE"),
    ("transaction", "BEGIN"),
    ("transaction", "COMMIT"),
    ("transaction", "ROLLBACK"),
)


def statement_kind(query: str) -> str:
    for kind, marker in STATEMENT_KINDS:
        if marker in query:
            return kind
    return "other"


async def pg_counters(pg: asyncpg.Connection) -> dict[str, float]:
    """Cumulative counters: per kind of statement its calls, rows and execution time (ms,
    pg_stat_statements), and the WAL's records, bytes, writes and syncs with their time."""
    counters: dict[str, float] = {}
    statements = await pg.fetch(
        "SELECT query, calls, rows, total_exec_time,"
        " shared_blks_hit + shared_blks_read AS blocks FROM pg_stat_statements"
    )
    for row in statements:
        kind = statement_kind(row["query"])
        for name in ("calls", "rows", "total_exec_time", "blocks"):
            key = f"{kind}_{name}"
            counters[key] = counters.get(key, 0.0) + float(row[name])
    wal = await pg.fetchrow(
        "SELECT wal_records, wal_bytes, wal_write, wal_sync, wal_write_time, wal_sync_time"
        " FROM pg_stat_wal"
    )
    assert wal is not None
    counters.update(
        {f"wal_{name.removeprefix('wal_')}": float(value) for name, value in wal.items()}
    )
    tables = await pg.fetchrow(
        "SELECT sum(n_tup_ins) AS inserted, sum(n_tup_upd) AS updated,"
        " sum(n_tup_hot_upd) AS hot_updated, sum(n_tup_del) AS deleted,"
        " sum(autovacuum_count) AS autovacuums, sum(autoanalyze_count) AS autoanalyzes"
        " FROM pg_stat_user_tables WHERE relname IN ('yjs_documents', 'yjs_updates')"
    )
    assert tables is not None
    counters.update({f"tables_{name}": float(value or 0) for name, value in tables.items()})
    return counters


def per_second(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, Any]:
    """The counters' growth over a window, per second, and per call of each statement."""
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    out: dict[str, Any] = {"seconds": round(seconds, 3)}
    kinds = sorted({key.rpartition("_calls")[0] for key in delta if key.endswith("_calls")})
    for kind in kinds:
        calls = delta.get(f"{kind}_calls", 0.0)
        if not calls:
            continue
        exec_ms = delta.get(f"{kind}_total_exec_time", 0.0)
        out[kind] = {
            "calls_per_s": round(calls / seconds, 1),
            "rows_per_s": round(delta.get(f"{kind}_rows", 0.0) / seconds, 1),
            "rows_per_call": round(delta.get(f"{kind}_rows", 0.0) / calls, 2),
            "exec_ms_per_call": round(exec_ms / calls, 4),
            # Shared buffers touched: how much of the tables a call reads.
            "blocks_per_call": round(delta.get(f"{kind}_blocks", 0.0) / calls, 1),
            "exec_share_pct": round(exec_ms / 1000 / seconds * 100, 1),
        }
    syncs = delta.get("wal_sync", 0.0)
    out["wal"] = {
        "records_per_s": round(delta.get("wal_records", 0.0) / seconds, 1),
        "bytes_per_s": round(delta.get("wal_bytes", 0.0) / seconds, 1),
        "writes_per_s": round(delta.get("wal_write", 0.0) / seconds, 1),
        "syncs_per_s": round(syncs / seconds, 1),
        "sync_ms_per_sync": round(delta.get("wal_sync_time", 0.0) / syncs, 4) if syncs else None,
        # Share of the wall time some process was waiting for a WAL fsync.
        "sync_busy_pct": round(delta.get("wal_sync_time", 0.0) / 1000 / seconds * 100, 1),
    }
    # Rows of the two tables (cumulative statistics: flushed by each backend at most once a
    # second, so a few seconds' window is approximate) and autovacuum's runs on them.
    out["tables"] = {
        key.removeprefix("tables_"): round(value / seconds, 1)
        for key, value in delta.items()
        if key.startswith("tables_")
    }
    return out


def role_rates(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """% of a core each kind of PostgreSQL process used over a window."""
    return {
        role: round((after.get(role, 0.0) - before.get(role, 0.0)) / seconds * 100, 1)
        for role in sorted(set(before) | set(after))
        if after.get(role, 0.0) - before.get(role, 0.0) > 0
    }


SIZES = """
SELECT c.relname, pg_total_relation_size(c.oid) AS total, pg_relation_size(c.oid) AS heap,
    pg_indexes_size(c.oid) AS indexes,
    coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast
FROM pg_class c WHERE c.relname IN ('yjs_documents', 'yjs_updates') AND c.relkind = 'r'
"""


async def pg_sizes(pg: asyncpg.Connection) -> dict[str, Any]:
    sizes: dict[str, Any] = {}
    for row in await pg.fetch(SIZES):
        sizes[row["relname"]] = {k: int(row[k]) for k in ("total", "heap", "indexes", "toast")}
    documents = await pg.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(length(snapshot)), 0) AS snapshots,"
        " coalesce(sum(stored_bytes), 0) AS stored FROM yjs_documents"
    )
    updates = await pg.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(length(data)), 0) AS data FROM yjs_updates"
    )
    assert documents is not None
    assert updates is not None
    sizes["total_bytes"] = sum(s["total"] for s in sizes.values() if isinstance(s, dict))
    sizes["documents"] = int(documents["n"])
    sizes["snapshot_bytes"] = int(documents["snapshots"])
    sizes["stored_bytes"] = int(documents["stored"])
    sizes["update_rows"] = int(updates["n"])
    sizes["update_bytes"] = int(updates["data"])
    return sizes


# Redis's side.


async def redis_memory(kv: Redis, prefix: str) -> dict[str, Any]:
    """Redis's memory: used_memory and its parts (INFO memory), every key's MEMORY USAGE
    summed by kind (the part of its name after `prefix` up to the next colon), and the
    pub/sub channels. used_memory also holds the clients' buffers, which come and go with
    the traffic: `without_clients` leaves them out."""
    await asyncio.sleep(0.5)
    info = await kv.info("memory")
    keys: dict[str, dict[str, int]] = {}
    async for key in kv.scan_iter(count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        kind = name.removeprefix(prefix).split(":")[0]
        usage = await kv.memory_usage(key) or 0
        entry = keys.setdefault(kind, {"keys": 0, "bytes": 0})
        entry["keys"] += 1
        entry["bytes"] += int(usage)
    channels = await kv.pubsub_channels()
    used = int(info["used_memory"])
    clients = int(info.get("mem_clients_normal", 0))
    return {
        "used_memory": used,
        "mem_clients_normal": clients,
        "without_clients": used - clients,
        "used_memory_dataset": int(info.get("used_memory_dataset", 0)),
        "used_memory_overhead": int(info.get("used_memory_overhead", 0)),
        "keys": keys,
        "key_bytes": sum(entry["bytes"] for entry in keys.values()),
        "key_count": sum(entry["keys"] for entry in keys.values()),
        "channels": len(channels),
    }


async def redis_counters(kv: Redis) -> dict[str, float]:
    stats = await kv.info("stats")
    commands = await kv.info("commandstats")
    publish = commands.get("cmdstat_publish", {})
    return {
        "commands": float(stats["total_commands_processed"]),
        "net_in": float(stats["total_net_input_bytes"]),
        "net_out": float(stats["total_net_output_bytes"]),
        "publish_calls": float(publish.get("calls", 0)),
        "publish_usec": float(publish.get("usec", 0)),
    }


def redis_rates(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, Any]:
    publishes = after["publish_calls"] - before["publish_calls"]
    return {
        "publishes_per_s": round(publishes / seconds, 1),
        "commands_per_s": round((after["commands"] - before["commands"]) / seconds, 1),
        "bytes_in_per_publish": round((after["net_in"] - before["net_in"]) / publishes, 1)
        if publishes
        else None,
        "bytes_out_per_publish": round((after["net_out"] - before["net_out"]) / publishes, 1)
        if publishes
        else None,
        "publish_usec_per_call": round(
            (after["publish_usec"] - before["publish_usec"]) / publishes, 2
        )
        if publishes
        else None,
    }


# Starting and stopping.


async def start_cluster(plan: Plan, pinning: Pinning, log: Log) -> Cluster:
    postgres = PostgresProcess(pinning)
    redis = RedisProcess(pinning)
    started: list[Process] = []
    try:
        await asyncio.to_thread(postgres.start)
        started.append(postgres)
        await asyncio.to_thread(redis.start)
        started.append(redis)
        prefix = f"bench-{os.getpid()}-{int(time.time())}:"
        instances = []
        for name in ("a", "b"):
            env = {
                "REDIS_ADDR": redis.addr,
                "INSTANCE_ID": f"bench-{name}",
                "REDIS_CHANNEL_PREFIX": prefix,
                "DOCUMENT_STORE": postgres.dsn(),
                "DOCUMENT_GRACE": GRACE,
            }
            instance = Service(pinning, env, plan.service_patches)
            await asyncio.to_thread(instance.start)
            started.append(instance)
            await asyncio.to_thread(instance.wait_ready, True)
            instances.append(instance)
        pg = await asyncpg.connect(postgres.dsn(), timeout=10)
        kv = Redis(host="127.0.0.1", port=redis.port)
        # pg_stat_statements counts from here: the schema's creation is not in the figures.
        await pg.execute("SELECT pg_stat_statements_reset()")
        version = await pg.fetchval("SHOW server_version")
        log(f"F PostgreSQL {version} and Redis of its own, two instances on them")
        return Cluster(postgres, redis, instances[0], instances[1], pg, kv, prefix, pinning)
    except BaseException:
        for process in started:
            process.stop()
        raise


async def stop_cluster(cluster: Cluster) -> None:
    close_all(cluster.clients)
    # The servers are killed next: a client that fails to close says nothing worth knowing.
    with contextlib.suppress(Exception):
        await cluster.pg.close(timeout=5)
    with contextlib.suppress(Exception):
        await cluster.kv.aclose()
    for process in (cluster.a, cluster.b, cluster.redis, cluster.postgres):
        process.stop()


async def release(cluster: Cluster, clients: Sequence[Client], projects_like: str) -> float:
    """Close `clients`, then wait until their documents were unloaded, which compacts each
    (the service does it a grace period after the last user left); returns how long."""
    close_all(clients)
    closing = set(map(id, clients))
    cluster.clients = [c for c in cluster.clients if id(c) not in closing]
    started = time.monotonic()
    query = (
        "SELECT count(*) FROM yjs_documents WHERE project_id LIKE $1 AND snapshot_seq < last_seq"
    )
    while time.monotonic() - started < 120:
        await asyncio.sleep(0.5)
        if not await cluster.pg.fetchval(query, projects_like):
            break
    # The last compactions' commits, and the unloads after them.
    await asyncio.sleep(float(GRACE.rstrip("s")) + 1.0)
    return round(time.monotonic() - started, 1)


# Phase 1: bytes per document, and what resident documents cost the catch-up.


async def fill(store: PostgresStore, keys: Sequence[DocumentKey], updates: Sequence[bytes]) -> None:
    """Append `updates`, in order, to each document (the documents at once, so that their
    appends share commits, as an instance's do)."""

    async def one(key: DocumentKey) -> None:
        for update in updates:
            await store.append(key, update)

    await asyncio.gather(*(one(key) for key in keys))


async def idle_cost(cluster: Cluster, seconds: float, core: int | None) -> dict[str, Any]:
    """CPU of every process and PostgreSQL's statements over `seconds` of nothing but the
    instances' own timers (catch-up, presence)."""
    counters = await pg_counters(cluster.pg)
    cpu = Window.open(cluster.processes, core)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    usage = cpu.close()
    return {"cpu": usage, "postgres": per_second(counters, await pg_counters(cluster.pg), elapsed)}


async def documents_at_rest(
    cluster: Cluster, plan: Plan, core: int | None, log: Log
) -> dict[str, Any]:
    n, keystrokes = plan.cluster_documents, plan.cluster_log - 2
    projects = [f"f-size-{i}" for i in range(n)]
    keys = [DocumentKey(project, DOCUMENT_ID) for project in projects]
    typist = Typist(RawWire(), LOG_TYPIST)
    typist.prepare(keystrokes)
    log_updates = [typist.take_seed()] + [typist.next(i, 0) for i in range(keystrokes)]
    contents = [prose_update(plan.document_bytes, seed=i) for i in range(n)]
    sizes: dict[str, Any] = {"empty": await pg_sizes(cluster.pg)}
    store = PostgresStore(cluster.postgres.dsn())
    await store.start()
    try:
        started = time.monotonic()
        await asyncio.gather(*(store.append(k, c) for k, c in zip(keys, contents, strict=True)))
        sizes["seeded"] = await pg_sizes(cluster.pg)
        await fill(store, keys, log_updates)
        filled = time.monotonic() - started
        sizes["with_log"] = await pg_sizes(cluster.pg)
    finally:
        await store.stop()
    heads = await heads_cost(cluster, keys)
    log(
        f"F {n} documents of {plan.document_bytes:,} characters and {len(log_updates) + 1} "
        f"updates each stored in {filled:.1f} s"
    )
    redis: dict[str, Any] = {"baseline": await redis_memory(cluster.kv, cluster.prefix)}
    rss: dict[str, Any] = {"baseline": {"a": cluster.a.rss_kib(), "b": cluster.b.rss_kib()}}
    health = Health()
    meter = Meter()
    # One connection per document on each instance, without documents first: the rooms'
    # cost (presence, subscriptions), then the documents on top of them.
    on = [cluster.a] * n + [cluster.b] * n
    lanes = [Lane(meter) for _ in on]
    clients = []
    for service, part in ((cluster.a, lanes[:n]), (cluster.b, lanes[n:])):
        opened = await connect(
            target_of(SERVICE, service), projects, part, health, first_index=len(clients)
        )
        require(opened, n, health, "F rooms")
        clients.extend(opened)
    cluster.clients.extend(clients)
    await quiet(meter, silence=1.0)
    # Read after the idle stretch: each instance rewrites its `instance:` key (its rooms'
    # counts) every 5 s, so both readings see the rooms of the moment.
    idle_rooms = await idle_cost(cluster, plan.idle_seconds, core)
    redis["rooms"] = await redis_memory(cluster.kv, cluster.prefix)
    rss["rooms"] = {"a": cluster.a.rss_kib(), "b": cluster.b.rss_kib()}
    step1 = JsonWire().step1(EMPTY_STATE_VECTOR)
    started = time.monotonic()
    for client in clients:
        client.send_text(step1)
    deadline = time.monotonic() + 300
    while sum(lane.steps.received for lane in lanes) < len(lanes):
        if time.monotonic() > deadline:
            raise BenchError("F: the documents did not all open")
        await asyncio.sleep(0.1)
    opened_in = time.monotonic() - started
    fail_on(lanes, health, "F documents")
    await quiet(meter, silence=1.0)
    idle_documents = await idle_cost(cluster, plan.idle_seconds, core)
    redis["documents"] = await redis_memory(cluster.kv, cluster.prefix)
    rss["documents"] = {"a": cluster.a.rss_kib(), "b": cluster.b.rss_kib()}
    log(f"F {n} documents opened on both instances in {opened_in:.1f} s")
    before = await pg_counters(cluster.pg)
    compacted_in = await release(cluster, clients, "f-size-%")
    unload = per_second(before, await pg_counters(cluster.pg), 1.0)
    sizes["compacted"] = await pg_sizes(cluster.pg)
    await cluster.pg.execute("VACUUM yjs_updates, yjs_documents")
    sizes["vacuumed"] = await pg_sizes(cluster.pg)
    await cluster.pg.execute("VACUUM FULL yjs_updates, yjs_documents")
    sizes["vacuum_full"] = await pg_sizes(cluster.pg)
    result = per_document(
        n,
        plan,
        len(log_updates) + 1,
        sizes,
        redis,
        rss,
        idle_rooms,
        idle_documents,
        opened_in,
        compacted_in,
    )
    result["heads_direct"] = heads
    # Statements while both instances unloaded the documents (counts: a 1 s "window").
    result["unload_statements"] = {
        kind: {
            "calls": value["calls_per_s"],
            "exec_ms": round(value["calls_per_s"] * value["exec_ms_per_call"], 1),
        }
        for kind, value in unload.items()
        if isinstance(value, dict) and "calls_per_s" in value
    }
    return result


def per_document(
    n: int,
    plan: Plan,
    appends: int,
    sizes: dict[str, Any],
    redis: dict[str, Any],
    rss: dict[str, Any],
    idle_rooms: dict[str, Any],
    idle_documents: dict[str, Any],
    opened_in: float,
    compacted_in: float,
) -> dict[str, Any]:
    empty = sizes["empty"]["total_bytes"]
    postgres = {
        stage: round((sizes[stage]["total_bytes"] - empty) / n, 1)
        for stage in ("seeded", "with_log", "compacted", "vacuumed", "vacuum_full")
    }
    log_rows = sizes["with_log"]["update_rows"] - sizes["seeded"]["update_rows"]
    per_row = (sizes["with_log"]["total_bytes"] - sizes["seeded"]["total_bytes"]) / log_rows
    row_data = (sizes["with_log"]["update_bytes"] - sizes["seeded"]["update_bytes"]) / log_rows

    def redis_delta(later: str, earlier: str, key: str) -> float:
        return round((redis[later][key] - redis[earlier][key]) / n, 1)

    def cpu_pct(run: dict[str, Any], name: str) -> float:
        return float(run["cpu"][f"{name}_cpu_pct"])

    seconds = idle_documents["cpu"]["seconds"]
    heads = idle_documents["postgres"].get("heads", {})
    resident = 2 * n
    extra_pg = cpu_pct(idle_documents, "postgres") - cpu_pct(idle_rooms, "postgres")
    return {
        "documents": n,
        "characters": plan.document_bytes,
        "appends_per_document": appends,
        "yjs_bytes_per_document": round(sizes["with_log"]["stored_bytes"] / n, 1),
        "snapshot_bytes_per_document": round(sizes["vacuum_full"]["snapshot_bytes"] / n, 1),
        "postgres_bytes_per_document": postgres,
        "postgres_bytes_per_log_row": round(per_row, 1),
        "log_row_data_bytes": round(row_data, 1),
        "redis_bytes_per_document": redis_delta("documents", "rooms", "without_clients"),
        "redis_key_bytes_per_document": redis_delta("documents", "rooms", "key_bytes"),
        "redis_bytes_per_room": redis_delta("rooms", "baseline", "without_clients"),
        "redis_key_bytes_per_room": redis_delta("rooms", "baseline", "key_bytes"),
        "rss_kib_per_document": {
            name: round((rss["documents"][name] - rss["rooms"][name]) / n, 1) for name in "ab"
        },
        "heads": {
            "resident_per_instance": n,
            "calls_per_s": heads.get("calls_per_s"),
            "exec_ms_per_call": heads.get("exec_ms_per_call"),
            "exec_us_per_document": round(heads["exec_ms_per_call"] * 1000 / n, 3)
            if heads
            else None,
            # What PostgreSQL's processes used more, per resident document per second, with
            # the documents resident than with the same rooms and no documents.
            "postgres_cpu_us_per_document_s": round(extra_pg / 100 * 1e6 / resident, 3),
            "postgres_cpu_pct_rooms": cpu_pct(idle_rooms, "postgres"),
            "postgres_cpu_pct_documents": cpu_pct(idle_documents, "postgres"),
            "seconds": seconds,
        },
        "open_seconds": round(opened_in, 1),
        "compaction_wait_seconds": compacted_in,
        "sizes": sizes,
        "redis": redis,
        "rss_kib": rss,
        "idle_rooms": idle_rooms,
        "idle_documents": idle_documents,
    }


# Phase 2: latency, one document on both instances.


def delivery_ms(sent: Sequence[tuple[bytes, int]], lanes: Sequence[Lane]) -> dict[str, Any]:
    """Latency from each send to its live arrival at each lane (updates a lane did not get
    live are left out, and counted in `count`)."""
    return latency_ms(
        lane.arrived[update] - at for lane in lanes for update, at in sent if update in lane.arrived
    )


async def paced_lanes(
    sender: Client,
    own: Lane,
    typist: Typist,
    groups: dict[str, list[Lane]],
    meter: Meter,
    rate: float,
    seconds: float,
    processes: dict[str, Process],
    core: int | None,
) -> dict[str, Any]:
    """The typist paced at `rate`: acknowledgement latency, and delivery latency to each group
    of lanes (the sender's instance, the other one), and to the whole room."""
    if not await own.acked.reach(typist.sent, 30.0):
        raise BenchError(f"{typist.sent - own.acked.received} earlier updates never acknowledged")
    count = int(max(rate * seconds, 100))
    typist.prepare(count)
    sent: list[tuple[bytes, int]] = []

    def message(seq: int, now: int) -> bytes:
        frame = typist.next(seq, now)
        sent.append((frame, now))
        return frame

    lanes = [lane for group in groups.values() for lane in group]
    for lane in lanes:
        lane.arrived.clear()
        lane.record = True
    fetched = sum(lane.fetched for lane in lanes)
    first_ack = len(own.acks)
    base = meter.received
    cpu = Window.open(processes, core)
    achieved = await paced(sender, rate, count, message=message, opcode=0x1)
    delivered = await settle(meter, base + count * len(lanes))
    acked = await own.acked.reach(typist.sent, 30.0)
    usage = cpu.close()
    for lane in lanes:
        lane.record = False
    sent = [(update_of(frame), at) for frame, at in sent]
    acks = own.acks[first_ack : first_ack + count]
    whole = [
        max(lane.arrived[update] for lane in lanes) - at
        for update, at in sent
        if all(update in lane.arrived for lane in lanes)
    ]
    return {
        "rate_updates_per_s": round(rate, 1),
        "achieved_updates_per_s": round(achieved, 1),
        "updates": count,
        "recipients": len(lanes),
        "deliveries": meter.received - base,
        "expected_deliveries": count * len(lanes),
        "fetched_again": sum(lane.fetched for lane in lanes) - fetched,
        "complete": bool(delivered and acked),
        "ack_ms": latency_ms(a - at for a, (_, at) in zip(acks, sent, strict=False)),
        "by_group_ms": {name: delivery_ms(sent, group) for name, group in groups.items()},
        "whole_room_ms": latency_ms(whole),
        "cpu": usage,
    }


async def paragraph_delivered(lanes: Sequence[Lane], owns: Sequence[Lane], what: str) -> None:
    """Until every lane got its typist's paragraph, live or from the store, and every typist
    its acknowledgement."""
    deadline = time.monotonic() + 30.0
    while True:
        got = sum(1 for lane in lanes if lane.live or lane.fetched)
        acked = sum(1 for own in owns if own.acked.received)
        if got == len(lanes) and acked == len(owns):
            return
        if time.monotonic() > deadline:
            raise BenchError(
                f"{what}: the paragraph reached {got} of {len(lanes)} readers, and"
                f" {acked} of {len(owns)} typists had it acknowledged"
            )
        await asyncio.sleep(0.05)


@dataclass
class DocRoom:
    sender: Client
    own: Lane
    typist: Typist
    groups: dict[str, list[Lane]]
    meter: Meter
    health: Health
    clients: list[Client]


async def open_room(
    cluster: Cluster, project: str, on_a: int, on_b: int, typist_id: int, first: int
) -> DocRoom:
    """A document with its typist on instance A, `on_a` readers on A and `on_b` on B, every
    one synced, the typist's paragraph delivered to all."""
    meter, health = Meter(), Health()
    on = [cluster.a] * on_a + [cluster.b] * on_b
    readers, lanes = await open_lanes(
        cluster, [project] * len(on), on, meter, health, first, f"F {project}"
    )
    own_meter = Meter()
    senders, owns = await open_lanes(
        cluster, [project], [cluster.a], own_meter, health, first + len(on), f"F {project} typist"
    )
    typist = Typist(JsonWire(), typist_id)
    senders[0].send_text(typist.take_seed())
    await paragraph_delivered(lanes, owns, f"F {project}")
    return DocRoom(
        senders[0],
        owns[0],
        typist,
        {"same_instance": lanes[:on_a], "other_instance": lanes[on_a:]},
        meter,
        health,
        [*readers, *senders],
    )


async def latency(cluster: Cluster, plan: Plan, core: int | None, log: Log) -> dict[str, Any]:
    processes = cluster.processes
    lone = await open_room(cluster, "f-lone", 1, 1, LONE_TYPIST, 10_000)
    lone_runs = [
        await quietly(
            plan,
            lambda: paced_lanes(
                lone.sender,
                lone.own,
                lone.typist,
                lone.groups,
                lone.meter,
                plan.lone_rate,
                plan.lone_seconds,
                processes,
                core,
            ),
        )
        for _ in range(plan.repeats)
    ]
    recipients = plan.cluster_room - 1
    on_a = recipients // 2
    room = await open_room(cluster, "f-room", on_a, recipients - on_a, ROOM_TYPIST, 20_000)
    fan = FanRoom(SERVICE, processes, room.meter, {}, room.sender, recipients, [])
    saturation = []
    for _ in range(plan.repeats):
        room.typist.prepare(saturation_messages(plan, recipients))
        run = await quietly(
            plan,
            lambda: saturate(fan, plan, core, room.typist.next, 0x1, DOCUMENT_WINDOW),
        )
        saturation.append(run)
    rate = summarize(saturation, "messages_per_s") / 2
    half = [
        await quietly(
            plan,
            lambda: paced_lanes(
                room.sender,
                room.own,
                room.typist,
                room.groups,
                room.meter,
                rate,
                plan.half_load_seconds,
                processes,
                core,
            ),
        )
        for _ in range(plan.repeats)
    ]
    readers = [lane for group in room.groups.values() for lane in group]
    fail_on([lone.own, room.own, *readers], room.health, "F room")
    # Closed, so that the next phase has only its own documents resident.
    await release(cluster, [*lone.clients, *room.clients], "f-%")
    result = {
        "lone": lone_runs,
        "room_saturation": saturation,
        "room_half_load": half,
        "room_half_load_updates_per_s": round(rate, 1),
        "room_size": plan.cluster_room,
    }
    ack = summarize(lone_runs, "ack_ms", "p50")
    far = summarize(lone_runs, "by_group_ms", "other_instance", "p50")
    updates = summarize(saturation, "messages_per_s")
    log(
        f"F lone typist at {plan.lone_rate:g}/s: ack p50 {ack} ms, other instance p50 {far} ms;"
        f" room {plan.cluster_room}: {updates:,.0f} updates/s saturated"
    )
    return result


# Phase 3: the store's write rate at saturation.


@dataclass
class Typing:
    """Typists each on a document, each sending its next update once the previous one is
    acknowledged; `sent` holds each one's send times, `owns` its acknowledgements (index 0:
    its paragraph's), `lanes` its reader on the other instance, `updates` what each of
    `frames` carries."""

    writers: list[Client]
    owns: list[Lane]
    lanes: list[Lane]
    frames: Sequence[bytes]
    updates: list[bytes] = field(default_factory=list)
    sent: list[array[int]] = field(default_factory=list)
    stopped: bool = False
    exhausted: int = 0

    def __post_init__(self) -> None:
        self.updates = [update_of(frame) for frame in self.frames]
        self.sent = [array("q") for _ in self.writers]
        for lane in self.lanes:
            lane.record = True

    def acked(self) -> int:
        return sum(own.acked.received for own in self.owns)

    def counts(self) -> list[int]:
        return [len(times) for times in self.sent]

    async def type_on(self, i: int) -> None:
        writer, own = self.writers[i], self.owns[i]
        times = self.sent[i]
        for k, frame in enumerate(self.frames):
            if self.stopped:
                return
            times.append(now_ns())
            writer.send_frame(0x1, frame)
            if not await own.acked.reach(k + 2, 30.0):
                raise BenchError(f"F typist {i}: update {k} not acknowledged in 30 s")
        self.exhausted += 1

    def latencies(self, before: list[int], after: list[int]) -> tuple[list[int], list[int]]:
        """Acknowledgement and other-instance delivery latency of the updates sent between
        two `counts()`."""
        acks: list[int] = []
        far: list[int] = []
        for i, times in enumerate(self.sent):
            acked, arrived = self.owns[i].acks, self.lanes[i].arrived
            for k in range(before[i], after[i]):
                if k + 1 < len(acked):
                    acks.append(acked[k + 1] - times[k])
                at = arrived.get(self.updates[k])
                if at is not None:
                    far.append(at - times[k])
        return acks, far


def apart_noise(cluster: Cluster, usage: dict[str, float]) -> None:
    """With PostgreSQL and Redis moved to the load core, what other processes took of each
    core: the server core's share is what the instances did not use of it."""
    server, load = cluster.pinning.server, cluster.pinning.load
    if not server or not load:
        return
    busy = usage.get(f"cpu{min(server)}_busy_pct", 0.0)
    ours = usage["instance_a_cpu_pct"] + usage["instance_b_cpu_pct"]
    usage["server_core_other_pct"] = round(max(0.0, busy - ours), 1)
    busy = usage.get(f"cpu{min(load)}_busy_pct", 0.0)
    ours = usage["postgres_cpu_pct"] + usage["redis_cpu_pct"] + usage["loadgen_cpu_pct"]
    usage["load_core_other_pct"] = round(max(0.0, busy - ours), 1)


async def typing_window(
    cluster: Cluster, typing: Typing, seconds: float, core: int | None
) -> dict[str, Any]:
    """One measured stretch of `seconds` while the typists type."""
    acks_before, counts_before = typing.acked(), typing.counts()
    pg_before, kv_before = await pg_counters(cluster.pg), await redis_counters(cluster.kv)
    roles = cluster.postgres.cpu_by_role()
    cpu = Window.open(cluster.processes, core)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    acks = typing.acked() - acks_before
    usage = cpu.close()
    roles = role_rates(roles, cluster.postgres.cpu_by_role(), elapsed)
    apart_noise(cluster, usage)
    counts_after = typing.counts()
    pg_after, kv_after = await pg_counters(cluster.pg), await redis_counters(cluster.kv)
    postgres = per_second(pg_before, pg_after, elapsed)
    appends = postgres.get("append", {})
    rate = acks / elapsed
    return {
        "seconds": round(elapsed, 3),
        "acks_per_s": round(rate, 1),
        "appends_per_s": appends.get("rows_per_s"),
        "commits_per_s": appends.get("calls_per_s"),
        "appends_per_commit": appends.get("rows_per_call"),
        # Which updates were sent in the window: their latencies are read once every one of
        # them is acknowledged and delivered (`store_saturation`).
        "sent_span": (counts_before, counts_after),
        "cpu": usage,
        "postgres_cpu_pct_by_process": roles,
        "cpu_us_per_ack": {
            name: round(usage[f"{name}_cpu_pct"] / 100 * 1e6 / rate, 1)
            for name in cluster.processes
        }
        if rate
        else {},
        "postgres": postgres,
        "redis": redis_rates(kv_before, kv_after, elapsed),
    }


async def store_saturation(
    cluster: Cluster,
    plan: Plan,
    typists: int,
    frames: list[bytes],
    seed: bytes,
    core: int | None,
) -> dict[str, Any]:
    """`typists` documents, each with a typist (on A for even ones, B for odd) and a reader on
    the other instance. After a warm-up second, windows of `store_seconds` are measured until
    one is quiet (other processes under `noise_limit` % of the server core; at most
    1 + `noise_retries`); the quietest is kept.

    Meanwhile PostgreSQL and Redis run on the load core (whose load generator, in this
    phase, only answers acknowledgements): sharing the instances' core, each process woken
    by a write of another preempts the writer, and the saturated core would not tell which
    of them runs out first. With a core to themselves, the instances' core saturates and
    PostgreSQL's and Redis's CPU shows how far they are from theirs."""
    pinning = cluster.pinning
    if pinning.load:
        cluster.postgres.pin(pinning.load)
        cluster.redis.pin(pinning.load)
    try:
        return await saturated(cluster, plan, typists, frames, seed, core)
    finally:
        cluster.postgres.pin()
        cluster.redis.pin()


async def saturated(
    cluster: Cluster,
    plan: Plan,
    typists: int,
    frames: list[bytes],
    seed: bytes,
    core: int | None,
) -> dict[str, Any]:
    projects = [f"f-sat{typists}-{i}" for i in range(typists)]
    meter, own_meter, health = Meter(), Meter(), Health()
    writers, owns = await open_lanes(
        cluster,
        projects,
        [cluster.instance(i) for i in range(typists)],
        own_meter,
        health,
        100_000,
        f"F {typists} typists",
    )
    readers, lanes = await open_lanes(
        cluster,
        projects,
        [cluster.instance(i + 1) for i in range(typists)],
        meter,
        health,
        200_000,
        f"F {typists} readers",
    )
    for writer in writers:
        writer.send_text(seed)
    await paragraph_delivered(lanes, owns, f"F {typists} typists")
    typing = Typing(writers, owns, lanes, frames)
    base = meter.received
    tasks = [asyncio.create_task(typing.type_on(i)) for i in range(typists)]
    windows: list[dict[str, Any]] = []
    try:
        await asyncio.sleep(1.0)
        for _ in range(1 + plan.noise_retries):
            windows.append(await typing_window(cluster, typing, plan.store_seconds, core))
            if windows[-1]["cpu"].get("server_core_other_pct", 0.0) <= plan.noise_limit:
                break
        typing.stopped = True
        await asyncio.gather(*tasks)
    finally:
        typing.stopped = True
        for task in tasks:
            task.cancel()
    total = sum(typing.counts())
    delivered = await settle(meter, base + total)
    fail_on([*owns, *lanes], health, f"F {typists} typists")
    for window in windows:
        ack_samples, far_samples = typing.latencies(*window.pop("sent_span"))
        window["ack_ms"] = latency_ms(ack_samples)
        window["other_instance_ms"] = latency_ms(far_samples)
    best = min(windows, key=lambda w: float(w["cpu"].get("server_core_other_pct", 0.0)))
    result = {
        "typists": typists,
        **best,
        "attempts": len(windows),
        "fetched_again": sum(lane.fetched for lane in lanes),
        "delivered_all": delivered,
        "exhausted_typists": typing.exhausted,
        "other_windows": [w for w in windows if w is not best],
    }
    await release(cluster, [*writers, *readers], f"f-sat{typists}-%")
    return result


# Phase 4: PostgreSQL alone.


async def store_alone(
    cluster: Cluster,
    plan: Plan,
    writers: int,
    appenders: int,
    update: bytes,
    core: int | None,
) -> dict[str, Any]:
    """`writers` PostgresStores (each the writer connection of one instance) in the load
    process, `appenders` documents spread over them, each appending one update after
    the other: the store's statements with nothing of the service around them. Windows as in
    `store_saturation`."""
    stores = [PostgresStore(cluster.postgres.dsn()) for _ in range(writers)]
    for store in stores:
        await store.start()
    keys = [DocumentKey(f"f-alone{writers}x{appenders}", f"doc-{a}") for a in range(appenders)]
    latencies: list[float] = []
    stopped = False

    async def appender(a: int) -> None:
        store, key = stores[a % writers], keys[a]
        while not stopped:
            started = time.perf_counter()
            await store.append(key, update)
            latencies.append(time.perf_counter() - started)

    windows: list[dict[str, Any]] = []
    try:
        await asyncio.gather(*(stores[a % writers].append(k, update) for a, k in enumerate(keys)))
        tasks = [asyncio.create_task(appender(a)) for a in range(appenders)]
        await asyncio.sleep(1.0)
        for _ in range(1 + plan.noise_retries):
            done = len(latencies)
            before = await pg_counters(cluster.pg)
            roles = cluster.postgres.cpu_by_role()
            cpu = Window.open({"postgres": cluster.postgres}, core)
            began = time.monotonic()
            await asyncio.sleep(plan.store_seconds)
            elapsed = time.monotonic() - began
            usage = cpu.close()
            roles = role_rates(roles, cluster.postgres.cpu_by_role(), elapsed)
            postgres = per_second(before, await pg_counters(cluster.pg), elapsed)
            rate = (len(latencies) - done) / elapsed
            append = postgres.get("append", {})
            windows.append(
                {
                    "appends_per_s": round(rate, 1),
                    "commits_per_s": append.get("calls_per_s"),
                    "appends_per_commit": append.get("rows_per_call"),
                    "append_ms": latency_ms(int(x * 1e9) for x in latencies[done:]),
                    "postgres_cpu_us_per_append": round(
                        usage["postgres_cpu_pct"] / 100 * 1e6 / rate, 2
                    ),
                    "cpu": usage,
                    "postgres_cpu_pct_by_process": roles,
                    "postgres": postgres,
                }
            )
            if usage.get("server_core_other_pct", 0.0) <= plan.noise_limit:
                break
        stopped = True
        await asyncio.gather(*tasks)
    finally:
        stopped = True
        for store in stores:
            await store.stop()
    best = min(windows, key=lambda w: float(w["cpu"].get("server_core_other_pct", 0.0)))
    return {
        "writers": writers,
        "appenders": appenders,
        **best,
        "attempts": len(windows),
        "other_windows": [w for w in windows if w is not best],
    }


async def heads_cost(cluster: Cluster, keys: Sequence[DocumentKey]) -> dict[str, Any]:
    """The catch-up's heads query for 1 key and for every key of `keys`, 30 times each, from
    a PostgresStore of the load process: PostgreSQL's execution time per call
    (pg_stat_statements) and the round trip, so that the cost per resident document is the
    slope between the two."""
    store = PostgresStore(cluster.postgres.dsn())
    await store.start()
    result: dict[str, Any] = {}
    try:
        for count in sorted({1, len(keys) // 4, len(keys)}):
            chosen = list(keys[:count])
            await store.heads(chosen)
            before = await pg_counters(cluster.pg)
            started = time.perf_counter()
            for _ in range(30):
                await store.heads(chosen)
            elapsed = time.perf_counter() - started
            after = await pg_counters(cluster.pg)
            calls = after["heads_calls"] - before["heads_calls"]
            exec_ms = after["heads_total_exec_time"] - before["heads_total_exec_time"]
            result[str(count)] = {
                "exec_ms_per_call": round(exec_ms / calls, 4),
                "round_trip_ms": round(elapsed / 30 * 1000, 4),
            }
    finally:
        await store.stop()
    low, high = result["1"], result[str(len(keys))]
    span = max(len(keys) - 1, 1)
    result["exec_us_per_key"] = round(
        (high["exec_ms_per_call"] - low["exec_ms_per_call"]) * 1000 / span, 3
    )
    result["round_trip_us_per_key"] = round(
        (high["round_trip_ms"] - low["round_trip_ms"]) * 1000 / span, 3
    )
    return result


# The scenario.


async def scenario_f(plan: Plan, pinning: Pinning, log: Log) -> Outcome:
    outcome = Outcome()
    core = pinning.server_core
    cluster = await start_cluster(plan, pinning, log)
    try:
        # The disk under PostgreSQL's data (a temporary directory too): a commit's floor.
        with tempfile.TemporaryDirectory(prefix="bench-fsync-") as directory:
            p50, p99 = await asyncio.to_thread(fsync_latency, Path(directory))
        outcome.details["fsync_4kib_ms"] = {"p50": round(p50, 3), "p99": round(p99, 3)}
        rest = await documents_at_rest(cluster, plan, core, log)
        lat = await latency(cluster, plan, core, log)
        typist = Typist(JsonWire(), STORE_TYPIST)
        seed = typist.take_seed()
        typist.prepare(plan.store_frames)
        frames = [typist.next(k, 0) for k in range(plan.store_frames)]
        saturation = []
        for typists in plan.store_typists:
            run = await store_saturation(cluster, plan, typists, frames, seed, core)
            saturation.append(run)
            shares = ", ".join(f"{name} {run['cpu'][f'{name}_cpu_pct']}" for name in CPU_NAMES)
            log(
                f"F {typists} typists: {run['acks_per_s']:,.0f} acks/s,"
                f" {run['appends_per_s']} appends/s in {run['commits_per_s']} commits/s;"
                f" ack p50 {run['ack_ms']['p50']} p99 {run['ack_ms']['p99']} ms; CPU %: {shares};"
                f" others {run['cpu'].get('server_core_other_pct')}"
            )
        raw = Typist(RawWire(), STORE_TYPIST)
        raw.prepare(1)
        keystroke = raw.next(0, 0)
        alone = []
        for writers, appenders in plan.store_alone:
            run = await store_alone(cluster, plan, writers, appenders, keystroke, core)
            alone.append(run)
            log(
                f"F PostgreSQL alone, {writers} writers, {appenders} appenders:"
                f" {run['appends_per_s']:,.0f} appends/s,"
                f" {run['appends_per_commit']} a commit, PostgreSQL at"
                f" {run['cpu']['postgres_cpu_pct']}% of a core, load"
                f" {run['cpu']['loadgen_cpu_pct']}%"
            )
        outcome.details.update(
            {"at_rest": rest, "latency": lat, "store_saturation": saturation, "store_alone": alone}
        )
        outcome.rows.extend(rows(plan, rest, lat, saturation, alone))
        return outcome
    finally:
        await stop_cluster(cluster)


CPU_NAMES = ("instance_a", "instance_b", "postgres", "redis")


def rows(
    plan: Plan,
    rest: dict[str, Any],
    lat: dict[str, Any],
    saturation: list[dict[str, Any]],
    alone: list[dict[str, Any]],
) -> list[Row]:
    out: list[Row] = []
    for label, runs in (
        (f"lone typist, {plan.lone_rate:g} updates/s", lat["lone"]),
        (f"room {plan.cluster_room}, half load", lat["room_half_load"]),
    ):
        for q in ("p50", "p99"):
            ack = summarize(runs, "ack_ms", q)
            out.append(Row("F", f"yjs_ack {q}, {label}", "ms", ack, None))
        for q in ("p50", "p99"):
            near = summarize(runs, "by_group_ms", "same_instance", q)
            far = summarize(runs, "by_group_ms", "other_instance", q)
            note = f"sender's instance {near} ms: the hop adds {round(far - near, 4)} ms"
            metric = f"yjs_update to the other instance {q}, {label}"
            out.append(Row("F", metric, "ms", far, None, note=note))
    updates = summarize(lat["room_saturation"], "messages_per_s")
    metric = f"yjs_update updates/s saturated, room {plan.cluster_room} over 2 instances"
    out.append(Row("F", metric, "1/s", updates, None))
    best = max(saturation, key=lambda run: run["acks_per_s"])
    shares = ", ".join(f"{name} {best['cpu'][f'{name}_cpu_pct']}" for name in CPU_NAMES)
    note = (
        f"{best['appends_per_s']} appends/s in {best['commits_per_s']} commits/s;"
        f" CPU, % of a core: {shares} (the instances on one core; PostgreSQL and Redis on"
        " the load generator's)"
    )
    metric = f"acks/s at saturation, {best['typists']} typists on as many documents"
    out.append(Row("F", metric, "1/s", best["acks_per_s"], None, note=note))
    for q in ("p50", "p99"):
        metric = f"yjs_ack {q} at saturation, {best['typists']} typists"
        out.append(Row("F", metric, "ms", best["ack_ms"][q], None))
    per_ack = best["cpu_us_per_ack"]
    service = round(per_ack["instance_a"] + per_ack["instance_b"], 1)
    note = "the instance that stores it and the one that applies it, together"
    metric = "service CPU per acknowledged update at saturation"
    out.append(Row("F", metric, "µs", service, None, note=note))
    metric = "PostgreSQL CPU per acknowledged update at saturation"
    note = f"{best['appends_per_commit']} appends a commit"
    out.append(Row("F", metric, "µs", per_ack["postgres"], None, note=note))
    metric = "Redis CPU per published update at saturation"
    note = f"{best['redis']['bytes_out_per_publish']} B sent per publish (2 subscribers)"
    out.append(Row("F", metric, "µs", per_ack["redis"], None, note=note))
    top = max(alone, key=lambda run: run["appends_per_s"])
    note = (
        f"PostgreSQL at {top['cpu']['postgres_cpu_pct']}% of its core,"
        f" {top['postgres_cpu_us_per_append']} µs of its CPU per append"
    )
    metric = f"PostgreSQL alone: appends/s, {top['writers']} writer connections"
    out.append(Row("F", metric, "1/s", top["appends_per_s"], None, note=note))
    wal = top["postgres"]["wal"]
    metric = "PostgreSQL alone: WAL bytes per append"
    note = f"{wal['syncs_per_s']} WAL syncs/s of {wal['sync_ms_per_sync']} ms"
    out.append(
        Row("F", metric, "B", round(wal["bytes_per_s"] / top["appends_per_s"], 1), None, note=note)
    )
    pg = rest["postgres_bytes_per_document"]
    metric = f"PostgreSQL bytes per document, {rest['appends_per_document']} appends in its log"
    out.append(Row("F", metric, "B", pg["with_log"], None))
    metric = "PostgreSQL bytes per document, compacted, after VACUUM FULL"
    out.append(Row("F", metric, "B", pg["vacuum_full"], None))
    note = (
        f"keys: {rest['redis_key_bytes_per_document']} B;"
        f" a room (a connection on each instance): {rest['redis_bytes_per_room']} B"
    )
    metric = "Redis bytes per document resident on both instances"
    out.append(Row("F", metric, "B", rest["redis_bytes_per_document"], None, note=note))
    heads = rest["heads_direct"]
    note = f"{heads['1']['exec_ms_per_call']} ms for one document"
    metric = "catch-up heads query, PostgreSQL time per resident document"
    out.append(Row("F", metric, "µs", heads["exec_us_per_key"], None, note=note))
    return out
