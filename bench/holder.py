"""A child load process that holds many idle connections to one server (scenario D).

Ten thousand connections to each server at once need more sockets than one process may open
(RLIMIT_NOFILE), so each server gets its own holder; both run on the load core (they inherit
the parent's affinity). The parent talks to a holder over its stdin and stdout, one JSON
object per line:

    holder -> {"event": "ready", ...}    once every connection is open and announcements drained
    parent -> report                     holder -> {"event": "status", ...}
    parent -> exit (or closes stdin)     holder closes its connections and exits
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import uvloop

from bench.kinds import SERVICE
from bench.loadgen import Client, Health, Meter, Sink, Target, close_all, connect, quiet
from bench.tokens import token


@dataclass(frozen=True)
class HoldSpec:
    kind: str
    port: int
    connections: int
    rooms: int
    source_ips: tuple[str, ...]


def status(clients: list[Client], health: Health, event: str) -> dict[str, Any]:
    return {
        "event": event,
        "open": sum(client.open for client in clients),
        "connected": len(clients),
        "failed": health.failed,
        "failures": health.failures,
        "dropped": health.dropped,
        "pings_answered": health.pings_answered,
        "close_codes": health.close_codes,
    }


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def hold(spec: HoldSpec) -> None:
    service = spec.kind == SERVICE
    target = Target("127.0.0.1", spec.port, ready_on_pong=not service, token=token)
    meter, health = Meter(), Health()
    rooms = [f"many-{index % spec.rooms}" for index in range(spec.connections)]
    started = time.monotonic()
    clients = await connect(
        target, rooms, [Sink(meter)] * len(rooms), health, source_ips=spec.source_ips
    )
    seconds = time.monotonic() - started
    await quiet(meter)
    emit({**status(clients, health, "ready"), "connect_seconds": round(seconds, 2)})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := (await reader.readline()).strip():
            if line == b"report":
                emit(status(clients, health, "status"))
            elif line == b"exit":
                break
    finally:
        close_all(clients)


def main() -> int:
    raw = json.loads(sys.argv[1])
    spec = HoldSpec(**{**raw, "source_ips": tuple(raw["source_ips"])})
    uvloop.run(hold(spec))
    return 0


def spec_json(spec: HoldSpec) -> str:
    return json.dumps(asdict(spec))


if __name__ == "__main__":
    sys.exit(main())
