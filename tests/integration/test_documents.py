"""Server-side documents over the JSON protocol, with real pycrdt clients on a real server: the
server keeps every document, validates every update by applying it, and acknowledges what is
durable; nothing acknowledged is lost, across unloads, restarts, `kill -9` and a stuck disk."""

from __future__ import annotations

import base64
import random
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest
from pycrdt import Doc, Text, TransactionEvent
from websockets.exceptions import ConnectionClosed

from tests.support.clients import member, receive, send
from tests.support.server import ServerProcess, running_server
from tests.support.waiting import eventually
from tests.support.yjs import DOCUMENT_ID, TEXT_NAME, YjsClient, b64, synced_client

pytestmark = pytest.mark.anyio


def store_env(path: Path, **extra: str) -> dict[str, str]:
    return {"DOCUMENT_STORE": f"sqlite:///{path}", "DOCUMENT_GRACE": "0s", **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(store_env(tmp_path_factory.mktemp("documents") / "d.sqlite3")) as run:
        yield run


async def text_on_server(url: str, name: str = "reader") -> str:
    """What a client that joins with nothing gets from the server alone."""
    async with synced_client(url, name) as reader:
        return str(reader)


async def all_saved(client: YjsClient) -> None:
    await client.read_until(lambda: client.saved)


async def answers(client: YjsClient) -> None:
    """The connection is open and read up to now: a ping comes back as a pong."""
    await send(client.ws, "ping", {"n": 1})
    while (await client.receive_one())["type"] != "pong":
        pass


async def metric(server: ServerProcess, name: str) -> float:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        body = (await http.get("/metrics")).text
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def unloaded(server: ServerProcess) -> None:
    async def nothing_resident() -> bool:
        return await metric(server, "websocket_documents_resident") == 0

    await eventually(nothing_resident)


def out_of_order_edits() -> tuple[str, list[bytes]]:
    """One client's updates "aa", "hh" inside, "c" inside that, "ff" at the start: applied as
    1, 3, 4, 2, plain yrs loses the "c" (docs/documents.md)."""
    doc: Doc[Text] = Doc()
    text = doc.get(TEXT_NAME, type=Text)
    updates: list[bytes] = []

    def keep(event: TransactionEvent) -> None:
        updates.append(event.update)

    doc.observe(keep)
    for index, chunk in ((0, "aa"), (1, "hh"), (2, "c"), (0, "ff")):
        text.insert(index, chunk)
    return str(text), updates


async def send_in_parts(client: YjsClient, update: bytes, part: int) -> None:
    pieces = [update[i : i + part] for i in range(0, len(update), part)]
    for index, piece in enumerate(pieces):
        payload = {
            "document_id": client.document_id,
            "index": index,
            "final": index == len(pieces) - 1,
            "data": b64(piece),
        }
        await send(client.ws, "yjs_update_part", payload)
    client.expected_acks += 1
    client.unacked.append(update)


async def test_a_document_outlives_its_editors_an_unload_and_a_restart(tmp_path: Path) -> None:
    env = store_env(tmp_path / "d.sqlite3")
    with running_server(env) as first:
        url = first.ws_url("alone", first.token("ann"))
        async with synced_client(url, "ann") as ann:
            ann.text.insert(0, "written alone")
            await ann.flush()
            await ann.read_until(lambda: ann.saved)
        # Nobody else was ever online: the text comes from the server.
        assert await text_on_server(url) == "written alone"
        await unloaded(first)
        assert await text_on_server(url) == "written alone"
    with running_server(env) as second:
        url = second.ws_url("alone", second.token("bob"))
        assert await text_on_server(url) == "written alone"


async def test_every_acknowledged_update_survives_kill_9(tmp_path: Path) -> None:
    env = store_env(tmp_path / "d.sqlite3")
    victim = ServerProcess(env).start()
    url = victim.ws_url("typing", victim.token("ann"))
    clients: list[YjsClient] = []
    try:
        async with (
            synced_client(url, "ann") as ann,
            synced_client(url, "bob") as bob,
            synced_client(url, "cat") as cat,
            anyio.create_task_group() as tasks,
        ):
            clients = [ann, bob, cat]

            async def read(client: YjsClient) -> None:
                try:
                    while True:
                        await client.receive_one()
                except ConnectionClosed:
                    return

            async def type_until_killed(client: YjsClient, seed: int) -> None:
                rng = random.Random(seed)
                try:
                    while True:
                        client.random_edit(rng)
                        await client.flush()
                        await anyio.lowlevel.checkpoint()
                except ConnectionClosed:
                    return

            for seed, client in enumerate(clients):
                tasks.start_soon(read, client)
                tasks.start_soon(type_until_killed, client, seed)
            # Killed while everyone types, once plenty has been acknowledged.
            await ann.wait_for(lambda: sum(len(c.acknowledged) for c in clients) >= 300)
            victim.signal(signal.SIGKILL)
            victim.wait()
    finally:
        victim.close()

    acknowledged = [update for client in clients for update in client.acknowledged]
    unacknowledged = sum(len(client.unacked) for client in clients)
    assert len(acknowledged) >= 300
    with running_server(env) as restarted:
        async with synced_client(restarted.ws_url("typing", restarted.token("dan")), "dan") as dan:
            before = (str(dan), dan.doc.get_state())
            # Every acknowledged update is already in the restored document: applying them
            # all again changes neither the text nor the state.
            for update in acknowledged:
                dan.apply_remote(update)
            assert (str(dan), dan.doc.get_state()) == before
            assert len(str(dan)) > 0
    print(f"{len(acknowledged)} acknowledged, {unacknowledged} unacknowledged at the kill")


async def test_a_mebibyte_reaches_every_peer_a_late_joiner_and_the_store(
    server: ServerProcess,
) -> None:
    url = server.ws_url("big", server.token("ann"))
    rng = random.Random(7)
    big = "".join(rng.choice("abcdefghij \n") for _ in range(1024 * 1024))
    async with synced_client(url, "ann") as ann, synced_client(url, "bob") as bob:
        ann.text.insert(0, big)
        (update,) = ann.take_unsent()
        # Over MAX_MESSAGE_SIZE (512 KiB) in one message: sent in parts of 256 KiB.
        await send_in_parts(ann, update, 256 * 1024)
        await ann.read_until(lambda: ann.saved)
        await bob.read_until(lambda: len(bob.text) == len(big))
        assert str(bob) == big
        async with synced_client(url, "cat") as cat:
            assert str(cat) == big
        # Nobody was disconnected: both still answer.
        await answers(ann)
        await answers(bob)
    service = server.token("compiler", extra={"roles": ["service"]})
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        stored = await http.get(
            f"/internal/projects/big/documents/{DOCUMENT_ID}",
            headers={"Authorization": f"Bearer {service}"},
        )
    assert stored.json()["text"] == big


async def test_bytes_that_are_not_an_update_are_refused_relayed_to_nobody(
    server: ServerProcess,
) -> None:
    url = server.ws_url("invalid", server.token("ann"))
    async with synced_client(url, "ann") as ann, synced_client(url, "bob") as bob:
        ann.text.insert(0, "kept")
        await ann.flush()
        await ann.read_until(lambda: ann.saved)
        await bob.read_until(lambda: str(bob) == "kept")
        state = base64.b64encode(b"\x01\x02\x03").decode()
        await send(ann.ws, "yjs_update", {"document_id": DOCUMENT_ID, "update": state})
        error = await receive(ann.ws)
        assert error["type"] == "error"
        assert error["payload"]["code"] == "invalid_update"
        # Still open, and bob's next message is ann's marker: nothing was relayed before it.
        await ann.send_marker("after")
        message = await receive(bob.ws)
        assert message["type"] == "document_update"
        assert message["payload"]["done"] == "ann"
        assert await text_on_server(url) == "kept"


async def test_updates_out_of_their_senders_order_lose_nothing(server: ServerProcess) -> None:
    final, updates = out_of_order_edits()
    url = server.ws_url("reordered", server.token("ann"))
    async with synced_client(url, "ann") as ann:
        for index in (0, 2, 3, 1):
            await ann._send_update(updates[index], "edit")
        await ann.read_until(lambda: ann.saved)
        assert await text_on_server(url) == final
    await unloaded(server)
    # Loaded again from the store's log.
    assert await text_on_server(url) == final


async def test_concurrent_first_users_load_the_document_once(server: ServerProcess) -> None:
    loads = await metric(server, "websocket_document_load_seconds_count")
    url = server.ws_url("crowd", server.token("ann"))
    async with anyio.create_task_group() as tasks:
        for index in range(8):
            tasks.start_soon(text_on_server, url, name=f"crowd-{index}")
    assert await metric(server, "websocket_document_load_seconds_count") == loads + 1


async def test_a_document_stays_for_its_grace_period_then_unloads(tmp_path: Path) -> None:
    with running_server(store_env(tmp_path / "d.sqlite3", DOCUMENT_GRACE="3s")) as srv:
        url = srv.ws_url("grace", srv.token("ann"))
        assert await text_on_server(url) == ""
        # Back within the grace period: no second load.
        assert await text_on_server(url) == ""
        assert await metric(srv, "websocket_document_load_seconds_count") == 1
        await unloaded(srv)
        assert await text_on_server(url) == ""
        assert await metric(srv, "websocket_document_load_seconds_count") == 2


async def test_a_stuck_store_delays_acknowledgements_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite3"
    env = store_env(path)
    with running_server(env) as srv:
        url = srv.ws_url("stuck", srv.token("ann"))
        async with synced_client(url, "ann") as ann, synced_client(url, "bob") as bob:
            # Another process holds the database's write lock: every append fails.
            lock = sqlite3.connect(path, isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            acknowledged = ann.acks
            try:
                ann.text.insert(0, "typed while the disk was stuck")
                await ann.flush()
                # Relayed live meanwhile.
                await bob.read_until(lambda: str(bob) == "typed while the disk was stuck")

                async def append_failed() -> bool:
                    return await metric(srv, "websocket_document_store_errors_total") >= 1

                await eventually(append_failed, within=30)
                async with httpx.AsyncClient(base_url=srv.http_url) as http:
                    ready = (await http.get("/ready")).json()
                # Still ready (every instance shares the store), and saying what is wrong.
                assert ready["status"] == "ready"
                assert ready["document_store"] == "failing"
                assert ready["document_pending_bytes"] > 0
                await send(ann.ws, "ping", {"n": 1})
                pong = await receive(ann.ws)
                # The next message is the pong: no acknowledgement came before it.
                assert pong["type"] == "pong"
                assert ann.acks == acknowledged
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            await ann.read_until(lambda: ann.saved)
        events = [line for line in srv.logs().splitlines() if "document_store_" in line]
        assert sum('"document_store_down"' in line for line in events) == 1
        assert sum('"document_store_up"' in line for line in events) == 1
    with running_server(env) as restarted:
        url = restarted.ws_url("stuck", restarted.token("cat"))
        assert await text_on_server(url) == "typed while the disk was stuck"


async def test_a_joiner_gets_every_awareness_state_and_a_leaver_is_removed(
    server: ServerProcess,
) -> None:
    url = server.ws_url("aware", server.token("ann"))
    async with synced_client(url, "bob") as bob:
        async with synced_client(url, "ann") as ann:
            sent = await ann.set_awareness({"user": "ann", "cursor": 4})
            await bob.read_until(lambda: len(bob.received_awareness) == 1)
            assert bob.received_awareness[0].data == sent
            async with synced_client(url, "cat") as cat:
                assert cat.awareness.states[ann.awareness.client_id] == {
                    "user": "ann",
                    "cursor": 4,
                }
        # ann's connection closed: the server removes its state for the others.
        await bob.read_until(lambda: ann.awareness.client_id not in bob.awareness.states)


async def test_clients_editing_concurrently_through_the_server_converge(
    server: ServerProcess,
) -> None:
    url = server.ws_url("converge", server.token("ann"))
    names = {"ann", "bob", "cat"}
    async with (
        synced_client(url, "ann") as ann,
        synced_client(url, "bob") as bob,
        synced_client(url, "cat") as cat,
    ):
        clients = [ann, bob, cat]
        async with anyio.create_task_group() as tasks:

            async def work(client: YjsClient, seed: int) -> None:
                async with anyio.create_task_group() as inner:
                    others = names - {client.name}
                    inner.start_soon(client.read_until, lambda: client.saw_markers("end", others))
                    await client.edit_randomly(random.Random(seed), 60)
                    await client.send_marker("end")

            for seed, client in enumerate(clients):
                tasks.start_soon(work, client, seed)
        for client in clients:
            await all_saved(client)
        texts = {str(client) for client in clients}
        assert len(texts) == 1
        assert await text_on_server(url) == texts.pop()


async def test_a_document_whose_stored_state_cannot_be_read_is_refused_and_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.sqlite3"
    env = store_env(path)
    with running_server(env) as srv:
        url = srv.ws_url("corrupt", srv.token("ann"))
        async with synced_client(url, "ann") as ann:
            ann.text.insert(0, "precious")
            await ann.flush()
            await ann.read_until(lambda: ann.saved)
    with sqlite3.connect(path) as db:
        # Compacted at shutdown: the text is in the snapshot.
        assert db.execute("UPDATE documents SET snapshot = x'0105'").rowcount == 1
    with running_server(env) as srv:
        url = srv.ws_url("corrupt", srv.token("ann"))
        async with member(url) as (ws, _):
            await send(ws, "yjs_sync_step1", {"document_id": DOCUMENT_ID, "state_vector": "AA=="})
            error = await receive(ws)
            assert error["type"] == "error"
            assert error["payload"]["code"] == "document_unavailable"
            # The connection stays usable.
            await send(ws, "ping", {"n": 1})
            assert (await receive(ws))["type"] == "pong"
    with sqlite3.connect(path) as db:
        # Never replaced by an empty document.
        assert db.execute("SELECT snapshot FROM documents").fetchall() == [(b"\x01\x05",)]
