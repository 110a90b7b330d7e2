"""y-protocols frames: round trips, the same bytes as pycrdt's helpers and y-protocols' auth.js,
and a refusal for every malformed frame."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pycrdt import (
    Awareness,
    Doc,
    Text,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
)

from app.documents.lib0 import write_var_uint
from app.errors import Refusal
from app.protocols.ywebsocket.frames import (
    AwarenessUpdate,
    Frame,
    PermissionDenied,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    read_frame,
    write_awareness,
    write_frame,
    write_permission_denied,
    write_query_awareness,
    write_sync_step1,
    write_sync_step2,
    write_sync_update,
)


def doc_with(text: str, client_id: int = 1) -> Doc[Text]:
    doc: Doc[Text] = Doc(client_id=client_id)
    doc["t"] = Text(text)
    return doc


# 200 and 20 000 bytes: lengths of two and three varint bytes.
PAYLOADS = [b"\x00", b"\x01\x02\x03", bytes(range(256))[:200], b"\xab" * 20_000]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("make", [SyncStep1, SyncStep2, SyncUpdate, AwarenessUpdate])
def test_every_payload_frame_reads_back_as_written(
    make: Callable[[bytes], Frame], payload: bytes
) -> None:
    frame = make(payload)

    assert read_frame(write_frame(frame)) == frame


@pytest.mark.parametrize("reason", ["", "no access", "accès refusé 😀"])
def test_permission_denied_reads_back_as_written(reason: str) -> None:
    assert read_frame(write_permission_denied(reason)) == PermissionDenied(reason)


def test_query_awareness_is_the_single_byte_3() -> None:
    assert write_query_awareness() == b"\x03"
    assert write_frame(QueryAwareness()) == b"\x03"
    assert read_frame(b"\x03") == QueryAwareness()


def test_sync_step1_is_the_bytes_of_pycrdts_create_sync_message() -> None:
    doc = doc_with("hello")

    message = create_sync_message(doc)

    assert write_sync_step1(doc.get_state()) == message
    assert read_frame(message) == SyncStep1(doc.get_state())


def test_sync_step2_is_the_bytes_of_pycrdts_answer_to_a_step1() -> None:
    server = doc_with("server text " * 50, client_id=1)
    client = doc_with("client", client_id=2)

    answer = handle_sync_message(create_sync_message(client)[1:], server)

    assert answer is not None
    missing = server.get_update(client.get_state())
    assert write_sync_step2(missing) == answer
    assert read_frame(answer) == SyncStep2(missing)


def test_sync_update_is_the_bytes_of_pycrdts_create_update_message() -> None:
    doc = doc_with("x" * 300)
    update = doc.get_update()

    message = create_update_message(update)

    assert write_sync_update(update) == message
    assert read_frame(message) == SyncUpdate(update)


def test_awareness_is_the_bytes_of_pycrdts_awareness_message() -> None:
    doc: Doc[Text] = Doc(client_id=7)
    awareness = Awareness(doc)
    awareness.set_local_state({"user": {"name": "Ünïcode", "color": "#ff0000"}})
    update = awareness.encode_awareness_update([7])

    message = create_awareness_message(update)

    assert write_awareness(update) == message
    assert read_frame(message) == AwarenessUpdate(update)
    # And pycrdt reads back what was written.
    other = Awareness(Doc(client_id=8))
    frame = read_frame(write_awareness(update))
    assert isinstance(frame, AwarenessUpdate)
    other.apply_awareness_update(frame.update, "test")
    assert other.states[7] == {"user": {"name": "Ünïcode", "color": "#ff0000"}}


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        # auth.js: varUint(2 auth), varUint(0 permission denied), varString(reason).
        ("no", b"\x02\x00\x02no"),
        ("", b"\x02\x00\x00"),
        # lib0 counts UTF-8 bytes: "é" is one character but two bytes.
        ("é", b"\x02\x00\x02\xc3\xa9"),
        ("a" * 130, b"\x02\x00\x82\x01" + b"a" * 130),
    ],
)
def test_permission_denied_matches_hand_written_auth_js_bytes(reason: str, expected: bytes) -> None:
    assert write_permission_denied(reason) == expected
    assert read_frame(expected) == PermissionDenied(reason)


def varint(value: int) -> bytes:
    out = bytearray()
    write_var_uint(out, value)
    return bytes(out)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "expected a message type, got an empty frame"),
        (b"\x04", "expected a message type 0 to 3, got 4"),
        (b"\x80\x01", "expected a message type 0 to 3, got 128"),
        (b"\x00\x03\x01\x00", "expected a sync message type 0 to 2, got 3"),
        (b"\x02\x01\x00", "expected an auth message type 0, got 1"),
        # Truncated: a varint cut short, a message type with nothing after it.
        (b"\x80", "expected a varint, got the end of the data"),
        (b"\x00", "expected a varint, got the end of the data"),
        (b"\x00\x00", "expected a varint, got the end of the data"),
        (b"\x01", "expected a varint, got the end of the data"),
        (b"\x02", "expected a varint, got the end of the data"),
        (b"\x02\x00", "expected a varint, got the end of the data"),
        (b"\x00\x02\x81", "expected a varint, got the end of the data"),
        (b"\xff" * 10 + b"\x01", "expected a varint of at most 64 bits"),
        # Lengths beyond the data, small and huge (nothing is allocated for the claim).
        (b"\x00\x01\x05abc", "expected 5 bytes, got 3"),
        (b"\x01\x02a", "expected 2 bytes, got 1"),
        (b"\x00\x02" + varint(10**12) + b"ab", "expected 1000000000000 bytes, got 2"),
        (b"\x02\x00\x03ab", "expected 3 bytes, got 2"),
        (b"\x02\x00\x02\xff\xfe", "expected UTF-8 text"),
        # Trailing bytes after one whole message.
        (b"\x03\x00", "expected the end of the frame, got 1 more bytes"),
        (b"\x00\x02\x01a\x00\x02\x01b", "expected the end of the frame, got 4 more bytes"),
        (b"\x01\x01ab", "expected the end of the frame, got 1 more bytes"),
        (b"\x02\x00\x01ab", "expected the end of the frame, got 1 more bytes"),
    ],
)
def test_malformed_frames_are_refused_as_invalid_frame(data: bytes, message: str) -> None:
    with pytest.raises(Refusal) as caught:
        read_frame(data)

    assert caught.value.code == "invalid_frame"
    assert caught.value.message == message


def test_no_size_bound_is_applied_here() -> None:
    # The route bounds frame sizes; the reader takes whatever whole frame it is given.
    update = b"\x01" * 2_000_000

    assert read_frame(write_sync_update(update)) == SyncUpdate(update)
