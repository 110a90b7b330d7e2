"""A Yjs client over the service, written with pycrdt, following the old peer-to-peer flow.

That flow (docs/yjs.md, *The old peer-to-peer flow*) predates server-side documents: it still
works through the relay, and the tests keep it working.

One `YjsClient` is one browser tab editing one document: a pycrdt `Doc` with a shared `Text`,
an `Awareness`, and the WebSocket it talks through. It sends every local change as a
`yjs_update`, applies every remote one, and runs the peer-to-peer sync step: a
`document_update` `{"yjs_sync": "request", "state_vector"}` answered by each peer with the diff
(a `yjs_update` with origin `sync`), its awareness, and a `{"yjs_sync": "reply", "to",
"state_vector"}` that the requester answers with its own diff.

Nothing here sleeps: every wait reads messages until a condition holds, each read bounded by
RECEIVE_TIMEOUT.
"""

from __future__ import annotations

import base64
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.lowlevel
from pycrdt import Awareness, Doc, Text, TransactionEvent, merge_updates
from websockets.asyncio.client import ClientConnection

from tests.support.clients import RECEIVE_TIMEOUT, member, receive, send

DOCUMENT_ID = "main.tex"
TEXT_NAME = "content"
EDIT_ORIGIN = "edit"
SYNC_ORIGIN = "sync"
# Yjs's encoding of an update that holds nothing: no structs, an empty delete set.
EMPTY_UPDATE = b"\x00\x00"

# How a client writes bytes: the three forms the service accepts. It always relays base64.
Encoding = Literal["base64", "array", "object"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def typed_update(text: str, doc: Doc[Text] | None = None) -> bytes:
    """The update that inserting `text` at the start of `doc`'s text makes (a new doc's)."""
    doc = doc if doc is not None else Doc()
    updates: list[bytes] = []
    subscription = doc.observe(lambda event: updates.append(event.update))
    doc.get(TEXT_NAME, type=Text).insert(0, text)
    doc.unobserve(subscription)
    return merge_updates(*updates)


def encode_bytes(data: bytes, encoding: Encoding) -> str | list[int] | dict[str, int]:
    if encoding == "base64":
        return b64(data)
    if encoding == "array":
        return list(data)
    # What JSON.stringify(new Uint8Array(...)) produces in a browser.
    return {str(index): value for index, value in enumerate(data)}


@dataclass(frozen=True)
class Received:
    """A relayed yjs_update or yjs_awareness: who sent it (connection id) and the bytes."""

    sender: str
    origin: str | None
    data: bytes


class LocalEdits:
    """A Doc's local changes, in the order Yjs made them, waiting to be sent. Yjs emits an
    update for every transaction, remote ones included; only local changes go out (in
    y-websocket terms: `if (origin !== provider) send(update)`)."""

    def __init__(self, doc: Doc[Text]) -> None:
        self._doc = doc
        self._applying_remote = False
        self.pending: list[bytes] = []
        self._subscription = doc.observe(self._on_update)

    def _on_update(self, event: TransactionEvent) -> None:
        if not self._applying_remote:
            self.pending.append(event.update)

    def apply_remote(self, update: bytes) -> None:
        self._applying_remote = True
        try:
            self._doc.apply_update(update)
        finally:
            self._applying_remote = False

    def take(self) -> bytes | None:
        """The oldest change not sent yet, or None."""
        return self.pending.pop(0) if self.pending else None

    def detach(self) -> None:
        self._doc.unobserve(self._subscription)


class YjsClient:
    def __init__(
        self,
        name: str,
        ws: ClientConnection,
        presence_state: dict[str, Any],
        *,
        encoding: Encoding = "base64",
        document_id: str = DOCUMENT_ID,
        doc: Doc[Text] | None = None,
    ) -> None:
        self.name = name
        self.ws = ws
        # presence_state is about its recipient: its client_id is this connection's.
        self.client_id: str = presence_state["client_id"]
        self.encoding: Encoding = encoding
        self.document_id = document_id
        # A doc of its own, or one that outlives connections (a tab that reconnects).
        self.doc: Doc[Text] = doc if doc is not None else Doc()
        self.text = self.doc.get(TEXT_NAME, type=Text)
        self.awareness = Awareness(self.doc)
        self._edits = LocalEdits(self.doc)
        # What went out and came in, for the tests' assertions.
        self.sent_updates: list[bytes] = []
        self.sent_sync: list[bytes] = []
        self.received_updates: list[Received] = []
        self.received_awareness: list[Received] = []
        self.markers: dict[str, set[str]] = {}
        self.replies: set[str] = set()
        self.answered: Counter[str] = Counter()
        self.joined: set[str] = set()
        self.foreign_documents = 0
        # The server's side: acknowledgements of what this client sent, and its sync step.
        self.acks = 0
        self.expected_acks = 0
        # What was sent and awaits its yjs_ack (in order), and what was acknowledged.
        self.unacked: deque[bytes] = deque()
        self.acknowledged: list[bytes] = []
        self.synced = False
        # The server's own step 1 was answered: what we had that it lacked is on its way.
        self.answered_server = False
        self._changed = anyio.Event()

    def detach(self) -> None:
        """Stop following the doc (before another connection takes it over)."""
        self._edits.detach()

    # The document

    def __str__(self) -> str:
        return str(self.text)

    def apply_remote(self, update: bytes) -> None:
        self._edits.apply_remote(update)

    def take_unsent(self) -> list[bytes]:
        """The local changes not sent yet, which the caller sends its own way."""
        unsent, self._edits.pending = self._edits.pending, []
        return unsent

    def random_edit(self, rng: random.Random) -> None:
        """Insert a run of this client's letter, or delete a few characters, at random."""
        length = len(self.text)
        if length > 4 and rng.random() < 0.3:
            start = rng.randrange(length)
            del self.text[start : min(length, start + rng.randint(1, 3))]
        else:
            self.text.insert(rng.randint(0, length), self.letter * rng.randint(1, 4))

    @property
    def letter(self) -> str:
        return self.name[0]

    async def flush(self) -> None:
        """Send every local update, in the order Yjs produced them, as a yjs_update."""
        while (update := self._edits.take()) is not None:
            self.sent_updates.append(update)
            await self._send_update(update, EDIT_ORIGIN)

    async def _send_update(self, update: bytes, origin: str) -> None:
        payload = {
            "update": encode_bytes(update, self.encoding),
            "origin": origin,
            "document_id": self.document_id,
        }
        await send(self.ws, "yjs_update", payload)
        self.expected_acks += 1
        self.unacked.append(update)

    @property
    def saved(self) -> bool:
        """Everything this client sent is durable on the server."""
        return self.acks == self.expected_acks

    async def sync_with_server(self) -> None:
        """The server's sync step: send our state vector; the server answers with what we lack
        and its own state vector, which we answer with what it lacks (handled by `handle`)."""
        self.synced = self.answered_server = False
        await send(
            self.ws,
            "yjs_sync_step1",
            {"document_id": self.document_id, "state_vector": b64(self.doc.get_state())},
        )

    async def edit_randomly(
        self, rng: random.Random, bursts: int, halfway: Callable[[], Any] | None = None
    ) -> None:
        """`bursts` rounds of 1-4 edits, each round sent before the next; the reader task applies
        remote updates in between. Some rounds are one transaction (one update), some not."""
        for index in range(bursts):
            if halfway is not None and index == bursts // 2:
                await halfway()
            edits = rng.randint(1, 4)
            if rng.random() < 0.5:
                with self.doc.transaction():
                    for _ in range(edits):
                        self.random_edit(rng)
            else:
                for _ in range(edits):
                    self.random_edit(rng)
            await self.flush()
            await anyio.lowlevel.checkpoint()

    # Awareness

    async def set_awareness(self, state: dict[str, Any] | None) -> bytes:
        """Set this client's awareness state (None: gone) and send it; the bytes sent."""
        self.awareness.set_local_state(state)
        return await self.send_awareness()

    async def send_awareness(self) -> bytes:
        """This client's own awareness entry only: the service may coalesce a slow reader's
        backlog to each sender's latest yjs_awareness, so one must not carry others' states."""
        data = self.awareness.encode_awareness_update([self.awareness.client_id])
        payload = {"update": encode_bytes(data, self.encoding), "document_id": self.document_id}
        await send(self.ws, "yjs_awareness", payload)
        return data

    # The sync step

    async def request_sync(self) -> None:
        self.replies.clear()
        await send(
            self.ws,
            "document_update",
            {
                "document_id": self.document_id,
                "yjs_sync": "request",
                "state_vector": b64(self.doc.get_state()),
            },
        )

    async def _answer_request(self, requester: str, state_vector: bytes) -> None:
        await self._send_diff(state_vector)
        await self.send_awareness()
        # Our state vector, so the requester can send what we lack (edits it made offline, or
        # on the other side of a Redis outage).
        await send(
            self.ws,
            "document_update",
            {
                "document_id": self.document_id,
                "yjs_sync": "reply",
                "to": requester,
                "state_vector": b64(self.doc.get_state()),
            },
        )

    async def _send_diff(self, state_vector: bytes) -> None:
        # Never skip by comparing state vectors: deletions do not advance them, but the diff
        # carries the whole delete set. Only an update that holds nothing is left unsent.
        diff = self.doc.get_update(state_vector)
        if diff != EMPTY_UPDATE:
            self.sent_sync.append(diff)
            await self._send_update(diff, SYNC_ORIGIN)

    # Quiescence markers

    async def send_marker(self, round_name: str) -> None:
        """After every update this client sent: the service keeps each sender's order, so a
        peer that reads this marker has applied all of them."""
        payload = {"document_id": self.document_id, "done": self.name, "round": round_name}
        await send(self.ws, "document_update", payload)

    def saw_markers(self, round_name: str, names: set[str]) -> bool:
        return self.markers.get(round_name, set()) >= names

    # Reading

    async def receive_one(self) -> dict[str, Any]:
        message = await receive(self.ws)
        await self.handle(message)
        self._changed.set()
        self._changed = anyio.Event()
        return message

    async def read_until(self, condition: Callable[[], bool]) -> None:
        """Read and handle messages until `condition` holds (each read is time-bounded)."""
        while not condition():
            await self.receive_one()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """For a task other than the reader: wait until the reader has made `condition` true."""
        with anyio.fail_after(RECEIVE_TIMEOUT):
            while not condition():
                await self._changed.wait()

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        payload: dict[str, Any] = message.get("payload") or {}
        if kind == "user_joined":
            self.joined.add(message["user_id"])
            return
        if kind == "user_left":
            return
        assert kind != "error", f"{self.name} got an error: {message}"
        if kind == "yjs_ack":
            self.acks += 1
            assert self.unacked, f"{self.name} got more acks than it sent"
            self.acknowledged.append(self.unacked.popleft())
            return
        if payload.get("document_id") != self.document_id:
            self.foreign_documents += 1  # another file of the project: another Doc's business
            return
        sender: str = message["client_id"]
        if kind == "yjs_update":
            assert isinstance(payload["update"], str), "updates are relayed as base64"
            update = base64.b64decode(payload["update"], validate=True)
            self.received_updates.append(Received(sender, payload.get("origin"), update))
            self.apply_remote(update)
        elif kind == "yjs_sync_step2":
            self.apply_remote(base64.b64decode(payload["update"], validate=True))
            self.synced = True
        elif kind == "yjs_sync_step1":
            diff = self.doc.get_update(base64.b64decode(payload["state_vector"], validate=True))
            await send(
                self.ws,
                "yjs_sync_step2",
                {"document_id": self.document_id, "update": encode_bytes(diff, self.encoding)},
            )
            self.expected_acks += 1
            self.unacked.append(diff)
            self.answered_server = True
        elif kind == "yjs_awareness":
            assert isinstance(payload["update"], str), "awareness is relayed as base64"
            data = base64.b64decode(payload["update"], validate=True)
            self.received_awareness.append(Received(sender, None, data))
            self.awareness.apply_awareness_update(data, "remote")
        elif kind == "document_update":
            sync = payload.get("yjs_sync")
            if sync == "request":
                await self._answer_request(sender, base64.b64decode(payload["state_vector"]))
                self.answered[sender] += 1
            elif sync == "reply":
                if payload["to"] == self.client_id:
                    self.replies.add(sender)
                    await self._send_diff(base64.b64decode(payload["state_vector"]))
            elif "done" in payload:
                self.markers.setdefault(payload["round"], set()).add(payload["done"])
        else:
            raise AssertionError(f"{self.name} got an unexpected {kind}: {message}")


@asynccontextmanager
async def yjs_client(
    url: str,
    name: str,
    *,
    encoding: Encoding = "base64",
    doc: Doc[Text] | None = None,
    document_id: str = DOCUMENT_ID,
) -> AsyncIterator[YjsClient]:
    async with member(url) as (ws, state):
        yield YjsClient(name, ws, state, encoding=encoding, doc=doc, document_id=document_id)


@asynccontextmanager
async def synced_client(
    url: str, name: str, *, doc: Doc[Text] | None = None, document_id: str = DOCUMENT_ID
) -> AsyncIterator[YjsClient]:
    """A client that ran the sync step with the server, and whose answer was stored."""
    async with yjs_client(url, name, doc=doc, document_id=document_id) as client:
        await client.sync_with_server()
        await client.read_until(lambda: client.synced and client.answered_server and client.saved)
        try:
            yield client
        finally:
            client.detach()


def _text_of(updates: list[bytes]) -> str:
    doc: Doc[Text] = Doc()
    text = doc.get(TEXT_NAME, type=Text)
    for update in updates:
        doc.apply_update(update)
    return str(text)


def replay(per_sender: list[list[bytes]], seed: int = 0) -> str:
    """The text a fresh document gets from every sender's updates, interleaved at random but in
    each sender's order: the only order the service promises."""
    rng = random.Random(seed)
    queues = [list(updates) for updates in per_sender if updates]
    interleaved = []
    while queues:
        queue = rng.choice(queues)
        interleaved.append(queue.pop(0))
        if not queue:
            queues.remove(queue)
    return _text_of(interleaved)


def replay_merged(per_sender: list[list[bytes]], seed: int = 0) -> str:
    """The text of a fresh document given all the updates merged into one, in any order."""
    everything = [update for updates in per_sender for update in updates]
    random.Random(seed).shuffle(everything)
    return _text_of([merge_updates(*everything)])
