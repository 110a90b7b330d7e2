"""YWebsocketCodec: y-protocols frames become the JSON protocol's Yjs messages for the path's
document, and that document's Yjs events become frames; nothing else has a form."""

from __future__ import annotations

import base64
import gc
import json
from collections.abc import Callable
from typing import Any

import pytest
from pycrdt import Doc, Text, create_sync_message, create_update_message
from pydantic_core import to_json

from app.errors import Refusal
from app.protocols.json.messages import (
    MAX_DOCUMENT_ID,
    YjsAwareness,
    YjsQueryAwareness,
    YjsSyncStep1,
    YjsSyncStep2,
    YjsUpdate,
    parse_client_message,
)
from app.protocols.ywebsocket.codec import YWebsocketCodec, YWebsocketRoutes
from app.protocols.ywebsocket.frames import (
    AwarenessUpdate,
    read_frame,
    write_awareness,
    write_permission_denied,
    write_sync_step1,
    write_sync_step2,
    write_sync_update,
)
from app.rooms.events import Author, RoomEvent

DOC = "main.tex"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def event(kind: str, payload: dict[str, Any]) -> RoomEvent:
    return RoomEvent("p1", kind, to_json(payload), Author("u1", "Alice", "c1"), 1_714_979_289.5)


def json_message(kind: str, payload: dict[str, Any]) -> object:
    return parse_client_message(json.dumps({"type": kind, "payload": payload}))


def test_the_codec_is_binary_and_named() -> None:
    codec = YWebsocketCodec(DOC)

    assert codec.binary is True
    assert codec.name == "ywebsocket"


@pytest.mark.parametrize("document_id", ["", "d" * (MAX_DOCUMENT_ID + 1)])
def test_a_document_id_the_json_protocol_would_refuse_is_refused(document_id: str) -> None:
    with pytest.raises(ValueError, match="expected a document id"):
        YWebsocketCodec(document_id)


@pytest.mark.parametrize(
    ("frame", "kind", "key"),
    [
        (write_sync_step1, "yjs_sync_step1", "state_vector"),
        (write_sync_step2, "yjs_sync_step2", "update"),
        (write_sync_update, "yjs_update", "update"),
        (write_awareness, "yjs_awareness", "update"),
    ],
)
def test_decode_gives_the_message_the_json_protocol_would(
    frame: Callable[[bytes], bytes], kind: str, key: str
) -> None:
    data = b"\x01\x02\xff" * 100

    message = YWebsocketCodec(DOC).decode(None, frame(data))

    # Equal to the JSON protocol's message for the same bytes, so sessions cannot tell them apart.
    assert message == json_message(kind, {"document_id": DOC, key: b64(data)})
    assert not isinstance(message, YjsQueryAwareness)
    assert message.type == kind
    assert message.payload.relay() == {"document_id": DOC, key: b64(data)}


def test_decode_of_pycrdt_frames_carries_their_bytes() -> None:
    doc: Doc[Text] = Doc(client_id=3)
    doc["t"] = Text("hello")
    codec = YWebsocketCodec(DOC)

    step1 = codec.decode(None, create_sync_message(doc))
    update = codec.decode(None, create_update_message(doc.get_update()))

    assert isinstance(step1, YjsSyncStep1)
    assert step1.payload.state_vector == doc.get_state()
    assert step1.payload.document_id == DOC
    assert isinstance(update, YjsUpdate)
    assert update.payload.update == doc.get_update()
    assert update.payload.origin is None


def test_query_awareness_decodes_to_the_marker_for_the_document() -> None:
    decoded = YWebsocketCodec(DOC).decode(None, b"\x03")
    assert isinstance(decoded, YjsQueryAwareness)
    assert decoded.payload.document_id == DOC


def test_text_frames_are_refused() -> None:
    with pytest.raises(Refusal) as caught:
        YWebsocketCodec(DOC).decode("hello", None)

    assert caught.value.code == "unsupported_frame"


def test_an_auth_message_from_a_client_is_refused() -> None:
    with pytest.raises(Refusal) as caught:
        YWebsocketCodec(DOC).decode(None, write_permission_denied("no"))

    assert caught.value.code == "invalid_frame"
    assert caught.value.message == "expected a sync or awareness message, got auth"


@pytest.mark.parametrize(
    "frame", [write_sync_step1, write_sync_step2, write_sync_update, write_awareness]
)
def test_an_empty_payload_is_refused_as_the_json_protocol_refuses_it(
    frame: Callable[[bytes], bytes],
) -> None:
    with pytest.raises(Refusal) as caught:
        YWebsocketCodec(DOC).decode(None, frame(b""))

    assert caught.value.code == "invalid_frame"
    assert caught.value.message == "expected at least one byte of payload, got none"


@pytest.mark.parametrize("data", [b"", b"\x07", b"\x00\x00\x05ab", b"\x03\x03"])
def test_malformed_frames_are_refused(data: bytes) -> None:
    with pytest.raises(Refusal) as caught:
        YWebsocketCodec(DOC).decode(None, data)

    assert caught.value.code == "invalid_frame"


@pytest.mark.parametrize(
    ("kind", "key", "write"),
    [
        ("yjs_update", "update", write_sync_update),
        ("yjs_sync_step2", "update", write_sync_step2),
        ("yjs_sync_step1", "state_vector", write_sync_step1),
        ("yjs_awareness", "update", write_awareness),
    ],
)
def test_encode_writes_the_frame_of_each_yjs_event_of_the_document(
    kind: str, key: str, write: Callable[[bytes], bytes]
) -> None:
    data = bytes(range(256)) * 3
    payload: dict[str, Any] = {"document_id": DOC, key: b64(data)}
    if kind == "yjs_update":
        payload["origin"] = "editor"

    assert YWebsocketCodec(DOC).encode(event(kind, payload)) == write(data)


@pytest.mark.parametrize(
    "frame",
    [
        write_sync_step1(b"\x01\x02"),
        write_sync_step2(b"\x00\x00"),
        write_sync_update(b"\x05" * 500),
        write_awareness(b"\x01\x07\x01\x02{}"),
    ],
)
def test_a_decoded_frame_relayed_as_an_event_encodes_back_to_the_same_frame(frame: bytes) -> None:
    codec = YWebsocketCodec(DOC)
    message = codec.decode(None, frame)
    assert not isinstance(message, YjsQueryAwareness)

    # As rooms carry it: the relayed payload as JSON.
    relayed = event(message.type, message.payload.relay())

    assert codec.encode(relayed) == frame


def test_a_decoded_update_encodes_to_pycrdts_update_message() -> None:
    doc: Doc[Text] = Doc(client_id=4)
    doc["t"] = Text("world")
    message = create_update_message(doc.get_update())
    decoded = YWebsocketCodec(DOC).decode(None, message)
    assert isinstance(decoded, YjsUpdate)

    assert YWebsocketCodec(DOC).encode(event("yjs_update", decoded.payload.relay())) == message


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        ("yjs_update", "update"),
        ("yjs_sync_step2", "update"),
        ("yjs_sync_step1", "state_vector"),
        ("yjs_awareness", "update"),
    ],
)
def test_encode_skips_events_of_other_documents(kind: str, key: str) -> None:
    payload = {"document_id": "other.tex", key: b64(b"\x01\x02")}

    assert YWebsocketCodec(DOC).encode(event(kind, payload)) is None


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("cursor_update", {"document_id": DOC, "position": {"line": 1, "column": 2}}),
        ("selection", {"document_id": DOC}),
        ("user_typing", {"document_id": DOC}),
        ("presence_state", {"users": []}),
        ("user_joined", {"user_id": "u2", "username": "Bob"}),
        ("yjs_ack", {"document_id": DOC}),
        ("yjs_document_deleted", {"document_id": DOC}),
        ("yjs_update_part", {"document_id": DOC, "index": 0, "final": True, "data": "AQ=="}),
        ("error", {"code": "x", "message": "y"}),
        ("document_update", {}),
        ("pong", {}),
    ],
)
def test_encode_has_no_form_for_other_event_types(kind: str, payload: dict[str, Any]) -> None:
    assert YWebsocketCodec(DOC).encode(event(kind, payload)) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"update": "AQ=="}',
        b'{"document_id": "main.tex"}',
        b'{"document_id": "main.tex", "update": 5}',
        b'{"document_id": "main.tex", "update": "not base64!"}',
        b'{"document_id": "main.tex", "state_vector": "AQ=="}',
    ],
)
def test_encode_skips_an_unreadable_payload_rather_than_raising(raw: bytes) -> None:
    unreadable = RoomEvent("p1", "yjs_update", raw, Author("u1", "Alice", "c1"), 0.0)

    assert YWebsocketCodec(DOC).encode(unreadable) is None


def test_decoded_messages_match_the_model_classes() -> None:
    codec = YWebsocketCodec(DOC)

    assert isinstance(codec.decode(None, write_sync_step1(b"\x00")), YjsSyncStep1)
    assert isinstance(codec.decode(None, write_sync_step2(b"\x00\x00")), YjsSyncStep2)
    assert isinstance(codec.decode(None, write_sync_update(b"\x00\x00")), YjsUpdate)
    assert isinstance(codec.decode(None, write_awareness(b"\x00")), YjsAwareness)


@pytest.mark.parametrize("code", ["access_revoked", "token_expired", "forbidden", "unauthorized"])
def test_an_error_ending_access_becomes_the_auth_message_with_its_reason(code: str) -> None:
    encoded = YWebsocketCodec(DOC).encode(event("error", {"code": code, "message": "why"}))

    assert encoded == write_permission_denied(f"{code}: why")


@pytest.mark.parametrize(
    ("code", "close"),
    [
        ("invalid_update", 1007),
        ("document_too_large", 1009),
        ("document_deleted", 4410),
        ("store_unavailable", 1013),
        ("document_unavailable", 1013),
        ("internal_error", 1011),
    ],
)
def test_a_refused_update_closes_the_connection_since_no_error_message_exists(
    code: str, close: int
) -> None:
    closes = YWebsocketCodec(DOC).closes_for(Refusal(code, "m"))

    assert closes is not None
    assert closes[0] == close


def test_refusals_of_ephemeral_messages_close_nothing() -> None:
    assert YWebsocketCodec(DOC).closes_for(Refusal("invalid_awareness", "m")) is None


def test_the_keepalive_is_an_awareness_update_without_states() -> None:
    frame = read_frame(YWebsocketCodec.keepalive)

    assert isinstance(frame, AwarenessUpdate)
    assert frame.update == b"\x00"


@pytest.mark.parametrize(
    ("path", "project", "document"),
    [
        ("p1/main.tex", "p1", "main.tex"),
        ("p1/chapters/intro.tex", "p1", "chapters/intro.tex"),
        ("p1/a b/ü.tex", "p1", "a b/ü.tex"),
    ],
)
def test_a_route_splits_the_project_from_the_document_path(
    path: str, project: str, document: str
) -> None:
    route = YWebsocketRoutes()(path)

    assert (route.project_id, route.codec.document_id) == (project, document)


@pytest.mark.parametrize("path", ["p1", "p1/", "p1/" + "d" * (MAX_DOCUMENT_ID + 1)])
def test_a_route_without_a_valid_document_id_is_refused(path: str) -> None:
    with pytest.raises(Refusal) as caught:
        YWebsocketRoutes()(path)

    assert caught.value.code == "invalid_document_id"
    assert caught.value.status == 400


def test_connections_to_one_document_share_its_codec_until_the_last_goes() -> None:
    routes = YWebsocketRoutes()
    first = routes("p1/main.tex").codec
    assert routes("p2/main.tex").codec is first
    assert routes("p1/other.tex").codec is not first
    del first
    gc.collect()
    # The table keeps no codec alive: connections hold them.
    assert len(routes._codecs) == 0


def test_ended_access_closes_in_the_range_where_stock_providers_stop() -> None:
    codec = YWebsocketCodec(DOC)

    assert codec.close_code(4003) == 4403
    assert codec.close_code(4001) == 4401
    assert codec.close_code(1013) == 1013
