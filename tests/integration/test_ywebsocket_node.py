"""The stock y-websocket provider (npm, majors 2 and 3) under Node on `/yjs/`, run by
tests/js/provider_driver.mjs: two instances, one Redis, one PostgreSQL store, JSON clients."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from app.documents.document import LiveDocument
from app.documents.store.base import DocumentKey
from app.documents.store.postgres import PostgresStore
from tests.support.cluster import cluster, redis_state
from tests.support.node import bundle, node
from tests.support.postgres_server import PostgresServer, running_postgres
from tests.support.redis_server import RedisServer
from tests.support.server import ROOT, ServerProcess
from tests.support.yjs import DOCUMENT_ID, TEXT_NAME, YjsClient, synced_client

pytestmark = pytest.mark.anyio

DRIVER = ROOT / "tests" / "js" / "provider_driver.mjs"
WAITING = ROOT / "tests" / "js" / "waiting.mjs"
# The npm aliases y-websocket-2 and y-websocket-3 of tests/js/package.json.
MAJORS = ["2", "3"]
# Guards against a hung run, not synchronisation: the driver waits for conditions.
WAIT_MS = 30_000
RUN_TIMEOUT = 150.0
SEED = 20260302
# Lines each client inserts per round of the converge scenario.
LINES = 12
ROUNDS = 2
SEED_BYTES = 1024 * 1024
NESTED_DOCUMENT_ID = "chapters/intro.tex"
# Revoked: watched this long after the revocation, well within YJS_REFUSAL_HOLD (30 s).
REVOCATION_WINDOW_MS = 10_000
# Twice y-websocket's own no-message timeout (30 s, checked every 3 s).
LONE_WINDOW_MS = 60_000


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The driver and its waiting module beside node_modules."""
    node()
    return bundle(tmp_path_factory.mktemp("provider-driver"), DRIVER, WAITING)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def store_dsn(postgres: PostgresServer) -> str:
    return postgres.dsn(postgres.create_database())


@pytest.fixture(scope="module")
def servers(redis_server: RedisServer, store_dsn: str) -> Iterator[list[ServerProcess]]:
    """Two instances on one Redis and one store. Each test uses projects of its own, so they
    share the instances; the failover test kills the first and starts it again."""
    env = {
        "DOCUMENT_STORE": store_dsn,
        "DOCUMENT_GRACE": "0s",
        "DOCUMENT_CATCH_UP_INTERVAL": "200ms",
        "PRESENCE_TTL": "2s",
        # The 1 MiB seed goes through the documents API in one request.
        "MAX_BODY_BYTES": str(4 * SEED_BYTES),
    }
    with cluster(redis_server, 2, **env) as running:
        yield running


def yjs_base(server: ServerProcess, project: str) -> str:
    """The provider's serverUrl: it appends `/{document_id}?token=...` itself."""
    return f"ws://127.0.0.1:{server.port}/yjs/{project}"


def provider(server: ServerProcess, project: str, user: str) -> dict[str, str]:
    return {"server": yjs_base(server, project), "token": server.token(user)}


def service_token(server: ServerProcess) -> str:
    return server.token("project-service", extra={"roles": ["service"]})


def driver_command(scripts: Path, scenario: str, major: str, **options: Any) -> list[str]:
    config = {
        "scenario": scenario,
        "major": major,
        "document_id": DOCUMENT_ID,
        "text_name": TEXT_NAME,
        "seed": SEED,
        "timeout_ms": WAIT_MS,
        **options,
    }
    return [node(), str(scripts / DRIVER.name), json.dumps(config)]


def parse_report(
    scenario: str, returncode: int, stdout: bytes, stderr: bytes, servers: list[ServerProcess]
) -> dict[str, Any]:
    if returncode != 0:
        logs = "".join(
            f"\n{server.env['INSTANCE_ID']} log (last 3000 characters):\n{server.output()[-3000:]}"
            for server in servers
        )
        pytest.fail(
            f"the {scenario} scenario failed ({returncode}):\n{stderr.decode()}{logs}",
            pytrace=False,
        )
    report: dict[str, Any] = json.loads(stdout.decode().splitlines()[-1])
    return report


async def drive(
    scripts: Path, servers: list[ServerProcess], scenario: str, major: str, **options: Any
) -> dict[str, Any]:
    """Run one driver scenario to its end; its report."""
    command = driver_command(scripts, scenario, major, **options)
    with anyio.fail_after(RUN_TIMEOUT):
        done = await anyio.run_process(command, cwd=scripts, check=False)
    return parse_report(scenario, done.returncode, done.stdout, done.stderr, servers)


@dataclass
class Background:
    """A driver run started earlier, its output going to files."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    async def report(self, servers: list[ServerProcess]) -> dict[str, Any]:
        returncode = await anyio.to_thread.run_sync(
            functools.partial(self.process.wait, RUN_TIMEOUT)
        )
        return parse_report(
            "lone", returncode, self.stdout.read_bytes(), self.stderr.read_bytes(), servers
        )


@pytest.fixture(scope="module", autouse=True)
def lone(
    scripts: Path, servers: list[ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Background]]:
    """One lone provider per major on the second instance (never killed), started before the
    module's first test; the module's last tests read their reports. Its minute passes while
    the other tests run, so the module waits for it once, not once per major."""
    _, two = servers
    folder = tmp_path_factory.mktemp("lone")
    running: dict[str, Background] = {}
    with ExitStack() as files:
        try:
            for major in MAJORS:
                command = driver_command(
                    scripts,
                    "lone",
                    major,
                    window_ms=LONE_WINDOW_MS,
                    providers={"lou": provider(two, f"lone-{major}", "lou")},
                )
                stdout, stderr = folder / f"{major}.out", folder / f"{major}.err"
                process = subprocess.Popen(
                    command,
                    cwd=scripts,
                    stdout=files.enter_context(stdout.open("wb")),
                    stderr=files.enter_context(stderr.open("wb")),
                )
                running[major] = Background(process, stdout, stderr)
            yield running
        finally:
            for background in running.values():
                if background.process.poll() is None:
                    background.process.kill()
                    background.process.wait()


async def stored_text(dsn: str, project: str, document_id: str = DOCUMENT_ID) -> str:
    """The document as the store holds it, read by nobody's copy."""
    key = DocumentKey(project, document_id)
    store = PostgresStore(dsn)
    await store.start()
    try:
        stored = await store.load(key)
    finally:
        await store.stop()
    assert stored is not None, f"nothing stored for {project}/{document_id}"
    return LiveDocument(key, TEXT_NAME, stored).text()


def line_name(name: str, phase: object, index: int) -> str:
    """As the driver names its lines."""
    return f"{name}-{phase}-{index}"


def insert_line(client: YjsClient, rng: random.Random, line: str) -> None:
    """A whole line at the start of a random line, as the driver inserts them: other lines stay
    intact, so each one's presence says whether that edit arrived."""
    text = str(client)
    starts = [0, *(at + 1 for at, char in enumerate(text) if char == "\n")]
    client.text.insert(rng.choice(starts), f"{line}\n")


def has_lines(text: str, wanted: list[str]) -> bool:
    return set(wanted) <= set(text.splitlines())


def awareness_names(client: YjsClient) -> set[str]:
    return {
        state["user"]["name"]
        for state in client.awareness.states.values()
        if state and isinstance(state.get("user"), dict)
    }


async def read_all(client: YjsClient) -> None:
    """Read (and apply) everything that comes, until cancelled: silence is no failure here."""
    while True:
        await client.handle(json.loads(await client.ws.recv()))


async def follow(client: YjsClient, condition: Callable[[], bool]) -> None:
    """Read until `condition` holds. Bounded by more than the driver's own waits, so that when
    the providers are stuck, the driver's report of where they stood is what fails the test."""
    with anyio.fail_after(WAIT_MS / 1000 + 10):
        while not condition():
            await client.handle(json.loads(await client.ws.recv()))


@pytest.mark.parametrize("major", MAJORS)
async def test_providers_and_a_json_client_converge_across_instances(
    scripts: Path, servers: list[ServerProcess], store_dsn: str, major: str
) -> None:
    one, two = servers
    await redis_state(one, two, connected=True)
    project = f"converge-{major}"
    everyone = ["ann", "bob", "jill"]
    rng = random.Random(f"{SEED}-{major}")
    report: dict[str, Any] = {}
    # Jill is there first, with an awareness state: Ann, on her instance, gets it as she joins;
    # Jill sees both providers join.
    async with synced_client(one.ws_url(project, one.token("jill")), "jill") as jill:
        await jill.set_awareness({"user": {"name": "jill"}})

        async def providers() -> None:
            report.update(
                await drive(
                    scripts,
                    servers,
                    "converge",
                    major,
                    others=["jill"],
                    rounds=ROUNDS,
                    lines=LINES,
                    providers={
                        "ann": provider(one, project, "ann"),
                        "bob": provider(two, project, "bob"),
                    },
                )
            )

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(providers)
            # Nothing more from Jill's awareness: Bob's instance did not hold the document when
            # she announced herself, and learns her state by asking the others as it loads it.
            await follow(jill, lambda: {"ann", "bob"} <= awareness_names(jill))
            # Each round starts once everyone's previous one arrived, so every round's edits
            # cross each other in flight.
            for round_index in range(ROUNDS):
                for index in range(LINES):
                    insert_line(jill, rng, line_name("jill", round_index, index))
                    await jill.flush()
                wanted = [line_name(n, round_index, i) for n in everyone for i in range(LINES)]

                def arrived(wanted: list[str] = wanted) -> bool:
                    return has_lines(str(jill), wanted)

                await follow(jill, arrived)
            await follow(
                jill,
                lambda: (
                    jill.saved
                    and {"ann", "bob"} <= awareness_names(jill)
                    and {"ann", "bob"} <= jill.joined
                ),
            )
        text = str(jill)
    every_line = {line_name(n, r, i) for n in everyone for r in range(ROUNDS) for i in range(LINES)}
    assert set(text.splitlines()) == every_line
    assert len(text.splitlines()) == len(every_line)
    for name, got in zip(["ann", "bob"], report["providers"], strict=True):
        assert got["name"] == name
        assert got["text"] == text, name
        assert (got["connections"], got["synced"], got["wsconnected"]) == (1, True, True), got
        assert "jill" in got["sees"], got["sees"]
    assert await stored_text(store_dsn, project) == text


def large_text(rng: random.Random, size: int) -> str:
    lines: list[str] = []
    total = 0
    while total < size:
        line = f"{rng.getrandbits(48):x} {'x' * rng.randrange(70)}\n"
        lines.append(line)
        total += len(line)
    return "".join(lines)[:size]


@pytest.mark.parametrize("major", MAJORS)
async def test_a_provider_alone_gets_the_whole_document(
    scripts: Path, servers: list[ServerProcess], major: str
) -> None:
    one, two = servers
    project = f"seeded-{major}"
    seed = large_text(random.Random(f"{SEED}-{major}"), SEED_BYTES)
    path = f"/internal/projects/{project}/documents/{NESTED_DOCUMENT_ID}"
    async with httpx.AsyncClient(base_url=one.http_url, timeout=30) as http:
        headers = {"Authorization": f"Bearer {service_token(one)}"}
        created = await http.put(path, json={"text": seed}, headers=headers)
        assert created.status_code == 201, created.text
    # Nobody online, and on the instance that did not create it: from the store.
    report = await drive(
        scripts,
        servers,
        "join",
        major,
        document_id=NESTED_DOCUMENT_ID,
        providers={"nia": provider(two, project, "nia")},
    )
    nia = report["provider"]
    assert nia["sockets"][0]["server"] == f"{yjs_base(two, project)}/{NESTED_DOCUMENT_ID}"
    assert nia["connections"] == 1
    # Digests, not the texts: a failure should not print two megabytes.
    assert (nia["length"], nia["sha256"]) == (len(seed), hashlib.sha256(seed.encode()).hexdigest())


async def revive(server: ServerProcess) -> None:
    """Start a killed instance again, for the tests after this one."""
    if server.process is not None and server.process.poll() is not None:
        server.start()
        await redis_state(server, connected=True)


@pytest.mark.parametrize("major", MAJORS)
async def test_a_provider_whose_instance_is_killed_loses_nothing(
    scripts: Path, servers: list[ServerProcess], store_dsn: str, major: str
) -> None:
    one, two = servers
    assert one.process is not None
    project = f"failover-{major}"
    try:
        # The driver kills the instance itself, between two of its own steps.
        report = await drive(
            scripts,
            servers,
            "failover",
            major,
            lines=LINES,
            kill_pid=one.process.pid,
            failover_server=yjs_base(two, project),
            providers={"fay": provider(one, project, "fay")},
        )
        assert one.wait() == -signal.SIGKILL
    finally:
        await revive(one)
    fay = report["provider"]
    killed, survivor = fay["sockets"]
    assert killed["server"].startswith(yjs_base(one, project))
    assert killed["close"] == 1006
    assert survivor["server"].startswith(yjs_base(two, project))
    phases = ("acknowledged", "in-flight", "offline")
    every_line = {line_name("fay", phase, i) for phase in phases for i in range(LINES)}
    assert set(fay["text"].splitlines()) == every_line
    assert await stored_text(store_dsn, project) == fay["text"]


@pytest.mark.parametrize("major", MAJORS)
async def test_revoking_access_ends_a_providers_session_for_good(
    scripts: Path, servers: list[ServerProcess], store_dsn: str, major: str
) -> None:
    one, two = servers
    await redis_state(one, two, connected=True)
    project = f"revoked-{major}"
    async with synced_client(one.ws_url(project, one.token("jill")), "jill") as jill:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read_all, jill)
            # Revoked through the other instance: the provider's must learn it too.
            report = await drive(
                scripts,
                servers,
                "revoked",
                major,
                window_ms=REVOCATION_WINDOW_MS,
                revoke={
                    "url": f"{two.http_url}/internal/projects/{project}/disconnect",
                    "token": service_token(two),
                },
                providers={"rex": provider(one, project, "rex")},
            )
            tasks.cancel_scope.cancel()
        # The server's whole copy, whatever was or was not relayed.
        await jill.sync_with_server()
        await jill.read_until(lambda: jill.synced)
        at_jill = str(jill).splitlines()
    rex, after = report["provider"], report["after_revocation"]
    revoked = rex["sockets"][0]
    assert revoked["denied"], revoked
    assert revoked["denied"][0].startswith("access_revoked"), revoked["denied"]
    # In 4400-4499, where y-websocket 3.1 stops reconnecting.
    assert revoked["close"] == 4403
    # What y-websocket itself makes of it: a warning, and the status.
    assert after["warnings"], "no permission-denied warning"
    assert all("Permission denied to access" in warning for warning in after["warnings"])
    assert after["statuses"][0] == "disconnected", after["statuses"]
    assert True not in after["syncs"]
    assert not rex["synced"]
    if major == "3":
        # Stopped for good: not one connection more.
        assert report["stopped"] is True
        assert after["sockets"] == []
    else:
        # One further connection in the window, refused and held open: not one every 100 ms.
        assert report["stopped"] is False
        (held,) = after["sockets"]
        assert held["opened"], held
        assert held["close"] is None, held
        assert len(held["denied"]) == 1, held
        assert held["denied"][0].startswith("access_revoked"), held["denied"]
        assert not [k for k in held["received"] if k.startswith("sync")], held["received"]
    # The edits made after the revocation are the provider's alone.
    assert {"rex-before", "rex-offline", "rex-held"} <= set(rex["text"].splitlines())
    stored = (await stored_text(store_dsn, project)).splitlines()
    for seen in (at_jill, stored):
        assert "rex-before" in seen
        assert "rex-offline" not in seen
        assert "rex-held" not in seen

    # A token minted after the revocation (its iat a whole second later) is admitted again.
    await anyio.sleep(max(0.0, math.floor(report["revocation"]["revoked_at"]) + 1 - time.time()))
    rejoined = await drive(
        scripts, servers, "join", major, providers={"rex": provider(one, project, "rex")}
    )
    again = rejoined["provider"]
    assert (again["synced"], again["connections"]) == (True, 1), again
    assert again["text"].splitlines() == stored


@pytest.mark.parametrize("major", MAJORS)
async def test_a_lone_provider_outlives_its_own_timeout(
    lone: dict[str, Background], servers: list[ServerProcess], store_dsn: str, major: str
) -> None:
    report = await lone[major].report(servers)
    lou, during = report["provider"], report["during"]
    # Connected and synced throughout: no status change, no new connection.
    assert (during["statuses"], during["syncs"], during["sockets"]) == ([], [], []), during
    assert report["after_window"] == {"synced": True, "wsconnected": True}
    assert lou["connections"] == 1
    # It sent nothing meanwhile (no awareness state): these frames were the server's.
    assert report["frames_during"], "nothing received in the window"
    stored = await stored_text(store_dsn, f"lone-{major}")
    assert "lou-after-the-window" in stored.splitlines()
