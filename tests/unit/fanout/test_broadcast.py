"""broadcast: one encoding and one frame per protocol in use, shared by its recipients."""

from __future__ import annotations

import pytest

from app.errors import Refusal
from app.fanout.broadcast import broadcast
from app.fanout.connection import BacklogLimits, Connection
from app.protocols.json.codec import JsonCodec
from app.protocols.json.messages import InboundMessage
from app.rooms.events import Author, RoomEvent
from app.socket.frames import data_frame
from tests.unit.fakes import FakeTransport, RecordingObserver

LIMITS = BacklogLimits(messages=100, bytes=1_000_000)


class CountingCodec:
    """A binary protocol that tags each message with its type; counts its encodings."""

    name = "counting"
    binary = True
    acknowledges = True
    paced = False
    keepalive = None
    document_id = None

    def __init__(self, speaks: frozenset[str] = frozenset({"cursor_update"})) -> None:
        self.encoded = 0
        self.speaks = speaks

    def decode(self, text: str | None, data: bytes | None) -> InboundMessage:
        raise Refusal("unsupported_frame", "expected nothing")

    def closes_for(self, refusal: Refusal) -> None:
        return None

    def encode(self, event: RoomEvent) -> bytes | None:
        if event.type not in self.speaks:
            return None
        self.encoded += 1
        return b"\x00" + event.type.encode()


class Recorder(FakeTransport):
    """Also remembers the prepared frames it was offered, to check they are shared."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[bytes | None] = []
        self.binary: list[bool] = []

    def offer(self, data: bytes, frame: bytes | None = None, binary: bool = False) -> bool:
        self.frames.append(frame)
        self.binary.append(binary)
        return super().offer(data, frame, binary)


def member(client_id: str, codec: JsonCodec | CountingCodec) -> tuple[Connection, Recorder]:
    transport = Recorder()
    connection = Connection(
        client_id=client_id,
        user_id=client_id,
        username=client_id,
        project_id="p1",
        ip="10.0.0.1",
        transport=transport,
        codec=codec,
        limits=LIMITS,
        observer=RecordingObserver(),
    )
    return connection, transport


def event(message_type: str = "cursor_update", exclude: str | None = "j0") -> RoomEvent:
    return RoomEvent(
        "p1", message_type, b'{"line":1}', Author("u", "U", "j0"), 0.0, exclude=exclude
    )


@pytest.fixture
def counting() -> CountingCodec:
    return CountingCodec()


def test_each_protocol_encodes_once_and_its_recipients_share_one_frame(
    counting: CountingCodec,
) -> None:
    json_codec = JsonCodec()
    members = [member(f"j{n}", json_codec) for n in range(3)]
    members += [member(f"b{n}", counting) for n in range(3)]
    connections = {connection.client_id: connection for connection, _ in members}

    delivered = broadcast(event(), connections)

    assert delivered == 5
    assert counting.encoded == 1
    json_frames = [t.frames[0] for c, t in members if c.codec is json_codec and t.frames]
    binary_frames = [t.frames[0] for c, t in members if c.codec is counting]
    assert len(json_frames) == 2
    assert json_frames[0] is json_frames[1]
    assert len(binary_frames) == 3
    assert binary_frames[0] is binary_frames[1] is binary_frames[2]
    assert binary_frames[0] == data_frame(b"\x00cursor_update", binary=True)
    assert all(t.binary == [True] for c, t in members if c.codec is counting)


def test_recipients_whose_protocol_has_no_form_for_the_event_are_skipped(
    counting: CountingCodec,
) -> None:
    json_member, json_transport = member("j1", JsonCodec())
    binary_member, binary_transport = member("b1", counting)

    delivered = broadcast(
        event("compilation_started", exclude=None),
        {
            "j1": json_member,
            "b1": binary_member,
        },
    )

    assert delivered == 1
    assert len(json_transport.sent) == 1
    assert binary_transport.sent == []


def test_the_sender_alone_costs_no_encoding(counting: CountingCodec) -> None:
    alone, transport = member("j0", counting)

    assert broadcast(event(), {"j0": alone}) == 0
    assert counting.encoded == 0
    assert transport.sent == []
