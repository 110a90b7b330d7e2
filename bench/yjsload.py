"""Load-side Yjs for scenario E: real updates made with pycrdt ahead of the sends, written in
the service's JSON protocol or in y-websocket's binary one, and the sink that tells relayed
updates, sync answers and acknowledgements apart.

y-websocket's messages (y-protocols): a varUint message type (0 sync, 1 awareness); for sync a
varUint sub-type (0 step 1, 1 step 2, 2 update) and the payload as a varUint8Array. Every
type here is below 128, so each varUint is one byte and a frame can be classified by its
first two bytes. Both binary servers (the y-websocket server and the service on `/yjs/`)
greet a connection with their own step 1; the service also sends every connection an empty
awareness message (`KEEPALIVE`) every YJS_KEEPALIVE.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
from array import array
from collections import deque
from collections.abc import Iterator

from pycrdt import (
    Doc,
    Text,
    TransactionEvent,
    YMessageType,
    YSyncMessageType,
    create_update_message,
    write_message,
)

from bench.kinds import SERVICE
from bench.loadgen import Meter, Sink

DOCUMENT_ID = "main.tex"
# The Y.Text the TexFlow editor binds (the service's DOCUMENT_TEXT_NAME default).
TEXT_NAME = "content"
# Yjs's encoding of an empty state vector: a client that has nothing.
EMPTY_STATE_VECTOR = b"\x00"
SAMPLE = (
    "\\section{Results} The relay applies every update before it forwards it, so a late "
    "joiner gets the document from the server instead of from its peers. "
)
_UPDATE_HEAD = b'{"type":"yjs_update"'
_STEP2_HEAD = b'{"type":"yjs_sync_step2"'
_ACK_HEAD = b'{"type":"yjs_ack"'
_ERROR_HEAD = b'{"type":"error"'
# The service's keep-alive on `/yjs/`: an awareness message with no states.
KEEPALIVE = b"\x01\x01\x00"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Wire:
    """How one kind of server wants Yjs messages: the frame opcode and the payloads."""

    opcode = 0x1

    def update(self, update: bytes) -> bytes:
        raise NotImplementedError

    def step1(self, state_vector: bytes) -> bytes:
        raise NotImplementedError

    def step2(self, update: bytes) -> bytes:
        raise NotImplementedError


class JsonWire(Wire):
    """The service: JSON text, bytes in base64, every message naming its document."""

    opcode = 0x1

    def _message(self, kind: str, key: str, data: bytes) -> bytes:
        payload = {"document_id": DOCUMENT_ID, key: b64(data)}
        return json.dumps({"type": kind, "payload": payload}, separators=(",", ":")).encode()

    def update(self, update: bytes) -> bytes:
        return self._message("yjs_update", "update", update)

    def step1(self, state_vector: bytes) -> bytes:
        return self._message("yjs_sync_step1", "state_vector", state_vector)

    def step2(self, update: bytes) -> bytes:
        return self._message("yjs_sync_step2", "update", update)


class BinaryWire(Wire):
    """y-websocket: binary y-protocols messages, one document per connection (the URL's)."""

    opcode = 0x2

    def update(self, update: bytes) -> bytes:
        return create_update_message(update)

    def _sync(self, kind: YSyncMessageType, data: bytes) -> bytes:
        return bytes((YMessageType.SYNC, kind)) + write_message(data)

    def step1(self, state_vector: bytes) -> bytes:
        return self._sync(YSyncMessageType.SYNC_STEP1, state_vector)

    def step2(self, update: bytes) -> bytes:
        return self._sync(YSyncMessageType.SYNC_STEP2, update)


def wire_for(kind: str) -> Wire:
    return JsonWire() if kind == SERVICE else BinaryWire()


class Typist:
    """One client typing into a paragraph, a character per update, as an editor sends them:
    each update inserts at the cursor between two existing characters (so it carries both
    neighbours' ids) under a 32-bit client id, 25-26 bytes. `prepare` makes the frames
    before a measurement; `next` hands them out in order (it is a `blast`/`paced` message
    maker), so the server never sees a gap. Two typists with the same `client_id` type the
    same bytes: each server gets the same stream."""

    def __init__(self, wire: Wire, client_id: int) -> None:
        self._wire = wire
        self._doc: Doc[Text] = Doc(client_id=client_id)
        self._text = self._doc.get(TEXT_NAME, type=Text)
        self._made: list[bytes] = []
        self._doc.observe(self._captured)
        self._text.insert(0, SAMPLE * 4)
        # The paragraph the typing goes into: sent before any keystroke (`take_seed`).
        self._seed = wire.update(self._made.pop())
        self._cursor = len(SAMPLE)
        self._keys: Iterator[str] = itertools.cycle(SAMPLE)
        self._ready: deque[bytes] = deque()
        # Frames handed out, the seed included: the acknowledgements the service owes.
        self.sent = 0

    def take_seed(self) -> bytes:
        self.sent += 1
        return self._seed

    def state_vector(self) -> bytes:
        """The state vector after every frame prepared so far: a step 1 with it asks a server
        that has them all for nothing, so its step 2 is a few bytes whatever the document."""
        return self._doc.get_state()

    def _captured(self, event: TransactionEvent) -> None:
        self._made.append(event.update)

    def prepare(self, count: int) -> None:
        """Have at least `count` frames ready."""
        text, made, ready, wire = self._text, self._made, self._ready, self._wire
        while len(ready) < count:
            text.insert(self._cursor, next(self._keys))
            self._cursor += 1
            ready.append(wire.update(made.pop()))

    def next(self, seq: int, now: int) -> bytes:
        if not self._ready:
            # Not prepared for: made now (slower, but never a gap).
            self.prepare(1)
        self.sent += 1
        return self._ready.popleft()


def document_update(size: int, seed: int) -> bytes:
    """A Yjs update holding a text of about `size` characters, written as a document grows:
    lines of LaTeX inserted at random places, so its structure has one item per line or so
    rather than a single run."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test content, not secrets
    doc: Doc[Text] = Doc(client_id=rng.randrange(1, 2**32))
    text = doc.get(TEXT_NAME, type=Text)
    line_number = 0
    length = 0
    while length < size:
        line = f"% line {line_number}: {SAMPLE[: rng.randrange(40, len(SAMPLE))]}\n"
        text.insert(rng.randrange(0, length + 1), line)
        length += len(line)
        line_number += 1
    return doc.get_update()


class DocSink(Sink):
    """A Sink for Yjs traffic, of one connection or shared by several:
    `meter` counts relayed updates only (the service's `yjs_update`, a binary server's sync
    update), `steps` the sync step 2 answers (with their arrival times in `answers`), `acked`
    and `acks` the service's `yjs_ack`s (with their arrival times, in order). With `record`
    set, the arrival time of every relayed update is kept in `arrivals`: a sink per receiver
    then gives each update's latency by its rank, since every server relays one sender's
    updates to each connection in order. A binary server's greeting (its step 1) and other
    frames only move `meter.last_rx`, so that `quiet` waits for them too; the service's
    keep-alive is only counted, in `keepalives` (a timer's, not an answer to anything
    sent). Errors are kept (the first few) to fail the run on."""

    __slots__ = (
        "acked",
        "acks",
        "answers",
        "arrivals",
        "errors",
        "greetings",
        "keepalives",
        "others",
        "steps",
    )

    def __init__(self, meter: Meter, recipients: int = 0, steps: Meter | None = None) -> None:
        super().__init__(meter, recipients)
        # Shared by a room's per-receiver sinks, so that one wait covers them all.
        self.steps = steps if steps is not None else Meter()
        self.answers = array("q")
        self.acked = Meter()
        self.acks = array("q")
        self.arrivals = array("q")
        self.errors: list[str] = []
        self.greetings = 0
        self.keepalives = 0
        self.others = 0

    def reset(self, record: bool) -> None:
        super().reset(record)
        del self.arrivals[:]

    def text(self, data: bytes, start: int, end: int, now: int) -> None:
        if data.startswith(_UPDATE_HEAD, start, end):
            self.meter.hit(now)
            if self.record:
                self.arrivals.append(now)
            return
        self.meter.last_rx = now
        if data.startswith(_ACK_HEAD, start, end):
            self.acks.append(now)
            self.acked.hit(now)
        elif data.startswith(_STEP2_HEAD, start, end):
            self.answers.append(now)
            self.steps.hit(now)
        else:
            if data.startswith(_ERROR_HEAD, start, end) and len(self.errors) < 5:
                self.errors.append(data[start:end].decode("utf-8", "replace")[:300])
            self.others += 1

    def binary(self, data: bytes, start: int, end: int, now: int) -> None:
        kind = data[start + 1] if end - start >= 2 and data[start] == 0 else -1
        if kind == 2:
            self.meter.hit(now)
            if self.record:
                self.arrivals.append(now)
            return
        if end - start == len(KEEPALIVE) and data.startswith(KEEPALIVE, start, end):
            self.keepalives += 1
            return
        self.meter.last_rx = now
        if kind == 1:
            self.answers.append(now)
            self.steps.hit(now)
        elif kind == 0:
            self.greetings += 1
        else:
            self.others += 1
