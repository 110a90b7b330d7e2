"""The JavaScript client of docs/yjs.md (docs/clients/texflow-yjs.mjs) under Node, with real Yjs.

Each test runs one scenario of tests/js/yjs_driver.mjs against a real server that stores its
documents in SQLite, then checks the driver's report and the stored document itself. Node and
npm are required (never skipped); tests/support/node.py installs the npm packages.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.node import bundle, node
from tests.support.server import ROOT, ServerProcess, running_server
from tests.support.stores import sqlite_text

CLIENT = ROOT / "docs" / "clients" / "texflow-yjs.mjs"
DRIVER = ROOT / "tests" / "js" / "yjs_driver.mjs"
WAITING = ROOT / "tests" / "js" / "waiting.mjs"
DOCUMENT_ID = "main.tex"
# The server's DOCUMENT_TEXT_NAME (its default): the Y.Text the server reads as the text.
TEXT_NAME = "content"
# Guards against a hung run, not synchronisation: the driver waits for conditions.
WAIT_MS = 30_000
RUN_TIMEOUT = 120.0
SEED = 20260301
MIB = 1024 * 1024
MAX_MESSAGE_SIZE = 512 * 1024
TOKEN_TTL = 4.0
AWARENESS_WAIT_MS = 3_000


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client and the driver beside node_modules."""
    node()
    return bundle(tmp_path_factory.mktemp("node-client"), CLIENT, DRIVER, WAITING)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("documents") / "d.sqlite3"


@pytest.fixture(scope="module")
def server(database: Path) -> Iterator[ServerProcess]:
    # No leeway: the expiry test's token closes its connection when it says it expires.
    env = {"DOCUMENT_STORE": f"sqlite:///{database}", "JWT_LEEWAY": "0s"}
    with running_server(env) as running:
        yield running


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the default rate limit, which the tests' fast editors exceed."""
    database = tmp_path_factory.mktemp("limited") / "d.sqlite3"
    env = {
        "DOCUMENT_STORE": f"sqlite:///{database}",
        "RATE_LIMIT_PER_SECOND": "100",
        "RATE_LIMIT_BURST": "200",
    }
    with running_server(env) as running:
        yield running


def run(
    scripts: Path, server: ServerProcess, scenario: str, project: str, **options: Any
) -> dict[str, Any]:
    """Run one driver scenario; its report. Users are named by the scenario."""
    ttl = options.pop("ttl", 3600.0)
    users = ("alice", "bob", "carol", "fresh")
    config = {
        "scenario": scenario,
        "document_id": DOCUMENT_ID,
        "text_name": TEXT_NAME,
        "seed": SEED,
        "ops": 0,
        "paste_bytes": 0,
        "timeout_ms": WAIT_MS,
        "awareness_wait_ms": WAIT_MS,
        "interval": None,
        "urls": {user: server.ws_url(project, server.token(user, ttl=ttl)) for user in users},
        **options,
    }
    done = subprocess.run(
        [node(), str(scripts / DRIVER.name), json.dumps(config)],
        cwd=scripts,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"the {scenario} scenario failed ({done.returncode}):\n{done.stderr}\n"
            f"server log (last 4000 characters):\n{server.output()[-4000:]}",
            pytrace=False,
        )
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def assert_clean(client: dict[str, Any]) -> None:
    """Connected throughout, nothing refused, and every update sent acknowledged."""
    name = client["name"]
    assert client["closes"] == [], f"{name} was disconnected: {client['closes']}"
    assert client["errors"] == [], f"{name} got errors: {client['errors']}"
    assert client["connections"] == 1, name
    assert client["saved"], name
    assert client["sent"] == client["acked"] > 0, f"{name}: {client['sent']} sent"


def test_three_editors_converge_with_the_server(
    scripts: Path, server: ServerProcess, database: Path
) -> None:
    # Every change sent at once (no batching interval): as many updates crossing as can be.
    report = run(scripts, server, "concurrent", "node-concurrent", ops=300, interval=0)
    writers, fresh = report["writers"], report["fresh"]
    text = writers[0]["text"]
    assert len(text) > 100
    for client in [*writers, fresh]:
        assert_clean(client)
        assert client["text"] == text, client["name"]
    for writer in writers:
        # Live edits went out as yjs_update (after the one sync step answer each).
        assert writer["sent_types"]["yjs_sync_step2"] == 1, writer
        assert writer["sent_types"].get("yjs_update", 0) > 10, writer
    # Acknowledged means stored: the store holds exactly what every client shows.
    assert sqlite_text(database, "node-concurrent") == text


def test_editors_typing_past_the_rate_limit_stay_under_it(
    scripts: Path, limited_server: ServerProcess
) -> None:
    # Thousands of edits in well under a second, far past 100 messages a second: the client
    # merges what accumulates and sends at most once per interval, so nothing is dropped.
    report = run(scripts, limited_server, "concurrent", "node-limited", ops=3000)
    writers, fresh = report["writers"], report["fresh"]
    for client in [*writers, fresh]:
        assert_clean(client)
        assert client["text"] == fresh["text"], client["name"]


def test_a_newcomer_gets_the_text_with_nobody_online(
    scripts: Path, server: ServerProcess, database: Path
) -> None:
    report = run(scripts, server, "alone", "node-alone", ops=120)
    alice, bob = report["alice"], report["bob"]
    assert_clean(alice)
    assert_clean(bob)
    assert alice["text"]
    assert bob["text"] == alice["text"]
    # Alice's awareness entry left with her: Bob sees only himself.
    assert report["bob_sees"] == ["bob"]
    assert sqlite_text(database, "node-alone") == alice["text"]


def test_a_large_paste_goes_in_parts_and_reaches_everyone(
    scripts: Path, server: ServerProcess, database: Path
) -> None:
    report = run(scripts, server, "paste", "node-paste", paste_bytes=MIB)
    alice, bob, carol = report["clients"]
    assert report["paste_length"] == MIB
    for client in (alice, bob, carol):
        assert_clean(client)
        assert client["text"] == alice["text"], client["name"]
    assert len(alice["text"]) > MIB
    # Alice's paste went in parts, each under the server's limit; the others got it whole.
    assert alice["sent_types"].get("yjs_update_part", 0) >= 3, alice["sent_types"]
    assert alice["largest_sent"] <= MAX_MESSAGE_SIZE
    assert bob["largest_received"] > MIB
    assert carol["largest_received"] > MIB
    assert sqlite_text(database, "node-paste") == alice["text"]


@pytest.fixture(scope="module")
def reconnected(scripts: Path, server: ServerProcess) -> dict[str, Any]:
    # Alice's awareness entry normally reappears within milliseconds; past this, it is missing.
    return run(scripts, server, "reconnect", "node-reconnect", awareness_wait_ms=AWARENESS_WAIT_MS)


def test_a_dropped_connection_reconnects_and_syncs_both_ways(
    reconnected: dict[str, Any], database: Path
) -> None:
    report = reconnected
    alice, bob = report["clients"]
    assert_clean(bob)
    assert alice["closes"] == [1006]
    assert alice["connections"] == 2
    assert alice["errors"] == []
    assert alice["saved"]
    text = alice["text"]
    assert bob["text"] == text
    assert "typed offline by alice" in text
    assert "typed by bob meanwhile" in text
    assert "shared " not in text
    # The server told Bob that Alice's awareness entry went with her connection.
    assert report["bob_saw_alice_removed"]
    assert sqlite_text(database, "node-reconnect") == text


def test_awareness_is_back_right_after_a_reconnect(reconnected: dict[str, Any]) -> None:
    assert reconnected["bob_sees_alice_again"]


def test_an_expired_token_stops_reconnecting(scripts: Path, server: ServerProcess) -> None:
    report = run(scripts, server, "expiry", "node-expiry", ttl=TOKEN_TTL)
    alice = report["alice"]
    assert alice["closes"] == [4001]
    assert alice["status"] == "closed"
    assert alice["connections"] == 1
    codes = [error["code"] for error in alice["errors"]]
    assert codes == ["token_expiring", "token_expired"]
