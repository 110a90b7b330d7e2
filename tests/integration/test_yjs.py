"""Real Yjs documents (pycrdt, wire-compatible with Yjs) edited through the service.

Clients edit one shared text concurrently, on one instance and across two on Redis, and every
copy ends identical. A late joiner and a client cut off by a Redis outage catch up with the
peer-to-peer sync step (the old flow of docs/yjs.md, still relayed), which
`tests.support.yjs.YjsClient` follows exactly. Nothing sleeps: each
phase ends with markers every client reads (each sender's order is kept, so a marker comes after
everything its sender sent before it).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from functools import partial
from operator import contains
from typing import Any

import anyio
import pytest
from pycrdt import Doc, Text

from tests.support.clients import send
from tests.support.cluster import cluster, redis_state
from tests.support.redis_server import running_redis
from tests.support.server import ServerProcess
from tests.support.yjs import (
    EDIT_ORIGIN,
    SYNC_ORIGIN,
    Encoding,
    Received,
    YjsClient,
    b64,
    replay,
    replay_merged,
    yjs_client,
)

pytestmark = pytest.mark.anyio

SEED = 20260115


# Servers


@pytest.fixture(scope="module")
def pair() -> Iterator[list[ServerProcess]]:
    with running_redis() as redis, cluster(redis) as servers:
        yield servers


@pytest.fixture(params=["one-instance", "two-instances"])
async def placement(request: pytest.FixtureRequest) -> list[ServerProcess]:
    """Where the first, second and third client connect."""
    if request.param == "one-instance":
        server: ServerProcess = request.getfixturevalue("server")  # tests/integration/conftest
        return [server, server, server]
    one, two = request.getfixturevalue("pair")
    await redis_state(one, two, connected=True)
    return [one, two, one]


# Choreography


async def join(
    stack: AsyncExitStack,
    project: str,
    specs: list[tuple[ServerProcess, str, Encoding]],
    present: list[YjsClient] | None = None,
) -> list[YjsClient]:
    """Connect one client per spec, in order, each opening the document as the old flow says:
    every client already there reads the newcomer's user_joined (on a cluster, proof that the
    newcomer's instance is subscribed to the room), then the newcomer runs the sync step."""
    group = list(present or [])
    new = []
    for server, name, encoding in specs:
        url = server.ws_url(project, server.token(name))
        client = await stack.enter_async_context(yjs_client(url, name, encoding=encoding))
        for earlier in group:
            await earlier.read_until(partial(contains, earlier.joined, name))
        group.append(client)
        new.append(client)
        if len(group) > 1:
            await sync_round(group, client, f"joined-{name}")
    return new


async def converge(
    group: list[YjsClient],
    round_name: str,
    first: dict[str, Callable[[YjsClient], Awaitable[None]]] | None = None,
) -> None:
    """Each client runs its `first` step (if any), sends its marker, and reads until it has every
    other client's marker: then every message of the round has been read and applied."""

    async def run(client: YjsClient) -> None:
        others = {c.name for c in group} - {client.name}
        step = (first or {}).get(client.name)
        if step is not None:
            await step(client)
        await client.send_marker(round_name)
        await client.read_until(lambda: client.saw_markers(round_name, others))

    async with anyio.create_task_group() as tasks:
        for client in group:
            tasks.start_soon(run, client)


async def sync_round(group: list[YjsClient], requester: YjsClient, round_name: str) -> None:
    """The peer-to-peer sync step: `requester` sends its state vector; every peer answers
    with its diff, its awareness and its reply; the requester answers each reply with its own
    diff. Peers mark the round done once they answered, the requester once every peer replied."""
    peers = {c.client_id for c in group} - {requester.client_id}
    answered_before = {c.name: c.answered[requester.client_id] for c in group}

    async def request(client: YjsClient) -> None:
        await client.request_sync()
        await client.read_until(lambda: client.replies >= peers)

    async def answer(client: YjsClient) -> None:
        before = answered_before[client.name]
        await client.read_until(lambda: client.answered[requester.client_id] > before)

    steps = {c.name: answer for c in group if c is not requester}
    await converge(group, round_name, {**steps, requester.name: request})


async def edit_concurrently(
    group: list[YjsClient], round_name: str, bursts: int, seed: int = SEED
) -> None:
    """Every client edits at random while applying the others' updates as they come, then the
    round ends with markers.

    The first edits are concurrent by construction: each client inserts at the start of its
    copy before any of them reads anything. Halfway, each client waits until it has applied an
    update from every other client, so later edits interleave with theirs.
    """
    for client in group:
        client.text.insert(0, client.letter * 5)

    async def run(client: YjsClient, rng: random.Random) -> None:
        others = {c.name for c in group} - {client.name}
        peers = {c.client_id for c in group} - {client.client_id}
        start = len(client.received_updates)

        def heard_from_every_peer() -> bool:
            return peers <= {r.sender for r in client.received_updates[start:]}

        async def halfway() -> None:
            await client.wait_for(heard_from_every_peer)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(client.read_until, lambda: client.saw_markers(round_name, others))
            await client.flush()
            await client.edit_randomly(rng, bursts, halfway)
            await client.send_marker(round_name)

    async with anyio.create_task_group() as tasks:
        for index, client in enumerate(group):
            tasks.start_soon(run, client, random.Random(f"{seed}-{round_name}-{index}"))


def assert_identical(group: list[YjsClient]) -> str:
    texts = {client.name: str(client) for client in group}
    assert len(set(texts.values())) == 1, f"copies differ: {texts}"
    return texts[group[0].name]


def assert_relayed_intact(
    group: list[YjsClient], before_join: dict[tuple[str, str], int] | None = None
) -> None:
    """Each client received every other client's live updates byte for byte, in sending order;
    `before_join[(receiver, sender)]` counts the sender's updates sent before receiver joined."""
    for client in group:
        for other in group:
            if other is client:
                continue
            got = [
                r.data
                for r in client.received_updates
                if r.sender == other.client_id and r.origin == EDIT_ORIGIN
            ]
            skipped = (before_join or {}).get((client.name, other.name), 0)
            assert got == other.sent_updates[skipped:], f"{client.name} from {other.name}"


def project_id(kind: str) -> str:
    return f"yjs-{kind}-{uuid.uuid4().hex[:8]}"


# Tests


async def test_three_clients_editing_one_text_converge(placement: list[ServerProcess]) -> None:
    """Concurrent inserts and deletes from three clients end in three identical texts, equal to
    a fresh document's replay of every update; each update was relayed byte for byte, in order,
    whichever of the three accepted encodings its sender used."""
    # The three byte encodings the service accepts, one per client; it relays base64 to all.
    specs: list[tuple[ServerProcess, str, Encoding]] = [
        (placement[0], "ann", "base64"),
        (placement[1], "bob", "array"),
        (placement[2], "cat", "object"),
    ]
    async with AsyncExitStack() as stack:
        group = await join(stack, project_id("edit"), specs)
        await edit_concurrently(group, "edits", bursts=150)

        final = assert_identical(group)
        assert len(final) > 200
        assert set(final) == {"a", "b", "c"}, "every client's inserts survive somewhere"
        sent = [client.sent_updates for client in group]
        assert sum(map(len, sent)) >= 3 * 150
        for seed in range(3):
            assert replay(sent, seed) == final
        assert replay_merged(sent) == final
        assert_relayed_intact(group)


async def test_late_joiner_syncs_through_the_relay_then_edits_live(
    placement: list[ServerProcess],
) -> None:
    """A client joining an edited document gets all of it (and its peers' awareness) from one
    sync step through the relay, then edits live with the others to one identical text."""
    specs: list[tuple[ServerProcess, str, Encoding]] = [
        (placement[0], "ann", "base64"),
        (placement[1], "bob", "array"),
    ]
    async with AsyncExitStack() as stack:
        project = project_id("late")
        ann, bob = await join(stack, project, specs)
        await ann.set_awareness({"user": {"name": "Ann"}})
        await bob.set_awareness({"user": {"name": "Bob"}})
        await edit_concurrently([ann, bob], "before", bursts=100)
        before = assert_identical([ann, bob])
        assert len(before) > 100

        before_join = {("cat", c.name): len(c.sent_updates) for c in (ann, bob)}
        # Cat joins with an empty document: its sync step (inside join) brings it up to date.
        (cat,) = await join(stack, project, [(placement[2], "cat", "base64")], [ann, bob])

        assert assert_identical([ann, bob, cat]) == before
        # All of it came as sync answers, one from each peer (nothing was edited meanwhile).
        assert {r.origin for r in cat.received_updates} == {SYNC_ORIGIN}
        assert sorted(r.sender for r in cat.received_updates) == sorted(
            [ann.client_id, bob.client_id]
        )
        # Cat had nothing of its own: its answers to the replies hold no structs (a leading
        # count of 0), only the delete set every Yjs diff carries.
        assert all(diff[0] == 0 for diff in cat.sent_sync)
        assert cat.awareness.states[ann.doc.client_id] == {"user": {"name": "Ann"}}
        assert cat.awareness.states[bob.doc.client_id] == {"user": {"name": "Bob"}}

        await edit_concurrently([ann, bob, cat], "after", bursts=100)
        final = assert_identical([ann, bob, cat])
        assert set(final) == {"a", "b", "c"}
        sent = [client.sent_updates for client in (ann, bob, cat)]
        assert replay(sent) == final
        assert replay_merged(sent) == final
        assert_relayed_intact([ann, bob, cat], before_join)


async def test_awareness_bytes_arrive_intact_and_apply(placement: list[ServerProcess]) -> None:
    """Real awareness updates reach every peer as the bytes sent and apply there: a state, a
    change, a removal. Updates for another document_id are left alone."""
    specs: list[tuple[ServerProcess, str, Encoding]] = [
        (placement[0], "ann", "base64"),
        (placement[1], "bob", "array"),
        (placement[2], "cat", "object"),
    ]
    async with AsyncExitStack() as stack:
        ann, bob, cat = group = await join(stack, project_id("awareness"), specs)

        async def everyone_else_gets(sender: YjsClient, data: bytes, state: Any) -> None:
            expected = Received(sender.client_id, None, data)
            for client in group:
                if client is sender:
                    continue
                await client.read_until(partial(contains, client.received_awareness, expected))
                assert client.received_awareness[-1] == expected
                assert client.awareness.states.get(sender.awareness.client_id) == state

        ann_state = {"user": {"name": "Ann", "color": "#30bced"}, "cursor": {"anchor": 3}}
        data = await ann.set_awareness(ann_state)
        await everyone_else_gets(ann, data, ann_state)

        bob_state = {"user": {"name": "Bob", "color": "#6eeb83"}, "cursor": None}
        data = await bob.set_awareness(bob_state)
        await everyone_else_gets(bob, data, bob_state)

        moved = {**ann_state, "cursor": {"anchor": 9}}
        data = await ann.set_awareness(moved)
        await everyone_else_gets(ann, data, moved)

        # Leaving the document: a null state removes Ann's entry from every peer.
        data = await ann.set_awareness(None)
        await everyone_else_gets(ann, data, None)
        assert ann.awareness.client_id not in cat.awareness.states
        assert [c.received_updates for c in group] == [[], [], []]

        # One connection carries every document of the project: an update for another file
        # reaches everyone and is left to that file's Doc (here: nobody has it open).
        other: Doc[Text] = Doc()
        other.get("content", type=Text).insert(0, "@book{knuth}")
        await send(
            cat.ws, "yjs_update", {"update": b64(other.get_update()), "document_id": "refs.bib"}
        )
        for client in (ann, bob):

            def ignored_it(client: YjsClient = client) -> bool:
                return client.foreign_documents == 1

            await client.read_until(ignored_it)
            assert str(client) == ""


def delete_randomly(client: YjsClient, rng: random.Random, count: int) -> None:
    for _ in range(count):
        length = len(client.text)
        start = rng.randrange(length)
        del client.text[start : min(length, start + rng.randint(1, 3))]


async def test_sync_step_after_redis_outage_heals_both_sides() -> None:
    """Documents that diverged across instances during a Redis outage become identical again
    after one client runs the sync step, deletions included."""
    with running_redis() as redis, cluster(redis) as (one, two):
        await redis_state(one, two, connected=True)
        specs: list[tuple[ServerProcess, str, Encoding]] = [
            (one, "ann", "base64"),
            (two, "bob", "array"),
            (one, "cat", "base64"),
        ]
        async with AsyncExitStack() as stack:
            ann, bob, cat = group = await join(stack, project_id("outage"), specs)
            await edit_concurrently(group, "before", bursts=60)
            assert_identical(group)

            redis.stop()
            await redis_state(one, two, connected=False)
            # Instance one's clients keep editing together; Bob, alone on instance two, only
            # deletes: deletions do not advance a state vector, only the diff carries them.
            await edit_concurrently([ann, cat], "outage", bursts=40)
            delete_randomly(bob, random.Random(SEED), 25)
            await bob.flush()
            assert str(ann) == str(cat) != str(bob)

            redis.start()
            await redis_state(one, two, connected=True)

            # The service sends no notice of the outage: a client runs the step on its own
            # schedule (the old flow); here Bob does, once.
            await sync_round(group, bob, "healed")

            final = assert_identical(group)
            assert bob.sent_sync, "Bob's deletions went back to the others as sync answers"
            sent = [client.sent_updates for client in group]
            assert replay(sent) == final
            assert replay_merged(sent) == final
