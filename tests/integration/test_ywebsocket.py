"""The y-websocket protocol on `/yjs/{project_id}/{document_id}`, with a Python provider that
speaks it frame by frame, beside JSON clients on the same documents of a real server."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.protocols.ywebsocket.frames import (
    AwarenessUpdate,
    SyncStep1,
    write_query_awareness,
    write_sync_update,
)
from tests.support.clients import exchange, member, receive, send, upgrade_headers
from tests.support.server import ServerProcess, running_server
from tests.support.waiting import eventually
from tests.support.yjs import synced_client
from tests.support.ywebsocket import provider, yjs_url

pytestmark = pytest.mark.anyio

PROJECT = "yws"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("ywebsocket") / "d.sqlite3"
    env = {
        "DOCUMENT_STORE": f"sqlite:///{path}",
        "DOCUMENT_GRACE": "0s",
        # Short enough to see within a test, long enough that a test's reads see the hold.
        "YJS_KEEPALIVE": "300ms",
        "YJS_REFUSAL_HOLD": "1s",
    }
    with running_server(env) as run:
        yield run


def url(server: ServerProcess, document_id: str, user: str = "ada", **token: object) -> str:
    return yjs_url(server.port, PROJECT, document_id, server.token(user, **token))


async def backend(server: ServerProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A call of the backend API with a service token."""
    token = server.token("backend", extra={"roles": ["service"]})
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        return await http.request(
            method, path, headers={"Authorization": "Bearer " + token}, **kwargs
        )


async def metric(server: ServerProcess, name: str) -> float:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        body = (await http.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


async def stored_text(server: ServerProcess, document_id: str) -> str:
    response = await backend(server, "GET", f"/internal/projects/{PROJECT}/documents/{document_id}")
    assert response.status_code == 200, response.text
    text: str = response.json()["text"]
    return text


async def test_the_server_greets_with_its_step_1_and_answers_a_step_1_with_the_document(
    server: ServerProcess,
) -> None:
    document_id = "chapters/intro.tex"
    bob = server.ws_url(PROJECT, server.token("bob"))
    async with synced_client(bob, "bob", document_id=document_id) as writer:
        writer.text.insert(0, "\\section{Intro}")
        await writer.flush()
        await writer.read_until(lambda: writer.saved)
    async with provider(url(server, document_id), synced=False) as client:
        first = await client.receive_frame()
        assert isinstance(first, SyncStep1), "the server's step 1 comes first, unasked"
        await client.open()
        await client.read_until(lambda: client.synced)
        assert client.content == "\\section{Intro}"
    # The path is percent-decoded: %2F is the same document as /.
    async with provider(url(server, "chapters%2Fintro.tex")) as client:
        assert client.content == "\\section{Intro}"


async def test_edits_and_awareness_cross_between_the_two_protocols(server: ServerProcess) -> None:
    document_id = "interop.tex"
    json_user = server.ws_url(PROJECT, server.token("json-user"))
    async with synced_client(json_user, "j", document_id=document_id) as writer:
        async with provider(url(server, document_id, "provider-user")) as client:
            # The provider's user joins the project's presence like any other.
            await writer.read_until(lambda: "provider-user" in writer.joined)
            await client.edit(0, "from the provider. ")
            await writer.read_until(lambda: "from the provider" in str(writer.text))
            writer.text.insert(0, "From JSON. ")
            await writer.flush()
            await client.read_until(lambda: "From JSON" in client.content)
            assert client.content == str(writer.text)

            client.awareness.set_local_state({"user": {"name": "Provider"}})
            await client.send_awareness()
            await writer.read_until(
                lambda: any(
                    s.get("user", {}).get("name") == "Provider"
                    for s in writer.awareness.states.values()
                )
            )
            await writer.set_awareness({"user": {"name": "Json"}})
            await client.read_until(
                lambda: any(
                    s.get("user", {}).get("name") == "Json" for s in client.states().values()
                )
            )
            # Query-awareness (3) is answered with every state the document has.
            before = len(client.frames)
            await client.ws.send(write_query_awareness())
            await client.read_until(
                lambda: any(isinstance(f, AwarenessUpdate) for f in client.frames[before:])
            )
            provider_id = client.awareness.client_id
        # Its awareness goes with the connection: the JSON client is told.
        await writer.read_until(lambda: provider_id not in writer.awareness.states)
        await writer.read_until(lambda: writer.saved)
    assert await stored_text(server, document_id) == str(writer.text)


async def test_a_whole_large_document_travels_in_one_frame(server: ServerProcess) -> None:
    """Larger than MAX_MESSAGE_SIZE (512 KiB), the JSON route's limit: one step 2 each way."""
    big = "x" * MIB
    async with provider(url(server, "big.tex")) as client:
        await client.edit(0, big)
        await client.sync()
        await client.read_until(lambda: client.synced)
    async with provider(url(server, "big.tex")) as fresh:
        assert fresh.content == big
    assert await stored_text(server, "big.tex") == big


async def test_step_2_answers_only_once_every_earlier_update_is_stored(
    server: ServerProcess,
) -> None:
    async with provider(url(server, "durable.tex")) as client:
        for index in range(50):
            await client.edit(index, "a")
        await client.sync()
        await client.read_until(lambda: client.synced)
        # Read from the store directly after the step 2: every edit is there.
        assert await stored_text(server, "durable.tex") == "a" * 50


async def test_a_quiet_provider_gets_keep_alives(server: ServerProcess) -> None:
    async with provider(url(server, "quiet.tex")) as client:
        await client.read_until(lambda: client.keepalives >= 2)
        assert client.content == ""


async def test_an_update_the_document_cannot_take_closes_with_1007_and_nobody_notices(
    server: ServerProcess,
) -> None:
    async with member(server.ws_url(PROJECT, server.token("watcher"))) as (ws, _):
        async with provider(url(server, "broken.tex")) as client:
            await client.ws.send(write_sync_update(b"\xff\xff\xff\x01garbage"))
            assert await client.close_code() == 1007
        # The watcher saw the provider come, show its awareness and go: no update, no error.
        seen = [(await receive(ws))["type"]]
        while seen[-1] != "user_left":
            seen.append((await receive(ws))["type"])
        assert set(seen) == {"user_joined", "yjs_awareness", "user_left"}
    assert "Traceback" not in server.output()


async def test_a_path_without_a_document_is_refused_before_the_upgrade(
    server: ServerProcess,
) -> None:
    status, _, body = exchange(
        server.port,
        f"/yjs/{PROJECT}?token={server.token('ada')}",
        upgrade_headers(server.port),
    )
    assert status == 400
    assert b"invalid_document_id" in body


async def test_a_refused_token_is_told_inside_the_socket_then_held(server: ServerProcess) -> None:
    bad = yjs_url(server.port, PROJECT, "main.tex", "not-a-token")
    async with provider(bad, synced=False) as client:
        # What the stock provider gets and logs: the auth message with the reason.
        await client.read_until(lambda: bool(client.denied))
        assert client.denied[0].startswith("unauthorized: ")
        await client.open()  # what it sends is read and dropped
        assert await client.close_code() == 4401
    other = yjs_url(server.port, PROJECT, "main.tex", server.token("eve", projects=["elsewhere"]))
    async with provider(other, synced=False) as client:
        await client.read_until(lambda: bool(client.denied))
        assert client.denied[0].startswith("forbidden: ")
        assert await client.close_code() == 4403
    assert "Traceback" not in server.output()


async def test_revoking_access_ends_a_providers_session_and_its_token(
    server: ServerProcess,
) -> None:
    token = server.token("mallory", ttl=3600)
    address = yjs_url(server.port, PROJECT, "revoked.tex", token)
    async with provider(address) as client:
        response = await backend(
            server, "POST", f"/internal/projects/{PROJECT}/disconnect", json={"user_id": "mallory"}
        )
        assert response.status_code == 202
        assert await client.close_code() == 4403
        assert client.denied[:1] == ["access_revoked: access to this project was revoked"]
    # The same token again: told and held, never served.
    async with provider(address, synced=False) as again:
        await again.read_until(lambda: bool(again.denied))
        assert again.denied[0].startswith("access_revoked: ")
        assert not any(isinstance(f, SyncStep1) for f in again.frames)
        assert await again.close_code() == 4403


async def test_an_update_paced_by_the_rate_limit_is_delayed_never_dropped(
    tmp_path: Path,
) -> None:
    env = {"RATE_LIMIT_PER_SECOND": "20", "RATE_LIMIT_BURST": "5", "DOCUMENT_STORE": "memory"}
    with running_server(env) as paced:
        async with provider(yjs_url(paced.port, PROJECT, "paced.tex", paced.token("ada"))) as c:
            for index in range(40):
                await c.edit(index, "z")
            await c.sync()
            await c.read_until(lambda: c.synced)
        async with provider(yjs_url(paced.port, PROJECT, "paced.tex", paced.token("bo"))) as d:
            assert d.content == "z" * 40


async def test_deleting_the_document_closes_its_providers_with_4410(server: ServerProcess) -> None:
    async with provider(url(server, "gone.tex")) as client:
        await client.edit(0, "soon gone")
        await client.sync()
        await client.read_until(lambda: client.synced)
        response = await backend(
            server, "DELETE", f"/internal/projects/{PROJECT}/documents/gone.tex"
        )
        assert response.status_code == 204, response.text
        assert await client.close_code() == 4410


async def test_a_providers_edit_reaches_the_others_only_once_stored(tmp_path: Path) -> None:
    """The stock protocol has no acknowledgement: an edit others can see must be durable."""
    path = tmp_path / "d.sqlite3"
    with running_server({"DOCUMENT_STORE": f"sqlite:///{path}"}) as srv:
        address = yjs_url(srv.port, PROJECT, "held.tex", srv.token("ada"))
        async with (
            synced_client(
                srv.ws_url(PROJECT, srv.token("watcher")), "w", document_id="held.tex"
            ) as watcher,
            provider(address) as client,
        ):
            # Another process holds the database's write lock: every append fails.
            lock = sqlite3.connect(path, isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            try:
                await client.edit(0, "typed while the disk was stuck")

                async def append_failed() -> bool:
                    return await metric(srv, "websocket_document_store_errors_total") >= 1

                await eventually(append_failed, within=30)
                # Processed (its append failed) and not relayed: the pong comes first.
                await send(watcher.ws, "ping", {"n": 1})
                while (message := await watcher.receive_one())["type"] != "pong":
                    assert message["type"] != "yjs_update", "relayed before it was stored"
                assert str(watcher.text) == ""
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            await watcher.read_until(lambda: str(watcher.text) == "typed while the disk was stuck")
            await client.sync()
            await client.read_until(lambda: client.synced)


async def test_a_draining_instance_closes_the_refusals_it_holds() -> None:
    with running_server({"YJS_REFUSAL_HOLD": "10m", "DOCUMENT_STORE": "memory"}) as srv:
        bad = yjs_url(srv.port, PROJECT, "main.tex", "not-a-token")
        async with provider(bad, synced=False) as client:
            await client.read_until(lambda: bool(client.denied))
            srv.signal(signal.SIGTERM)
            # Long before the ten-minute hold: with the instance's other connections.
            assert await client.close_code() == 4401
