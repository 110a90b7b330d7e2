"""JsonCodec: the envelope every client gets, assembled from parts but byte for byte the JSON of
the envelope object; binary frames refused."""

from __future__ import annotations

import json
import re

import pytest
from pydantic_core import to_json

from app.errors import Refusal
from app.protocols.json.codec import JsonCodec
from app.protocols.json.messages import epoch_timestamp
from app.rooms.events import Author, RoomEvent

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def event(payload: object, username: str = "Ünïcode Name") -> RoomEvent:
    return RoomEvent(
        "p1", "cursor_update", to_json(payload), Author("u1", username, "c1"), 1_714_979_289.5
    )


def test_encode_returns_json_bytes_with_exactly_the_envelope_keys() -> None:
    data = JsonCodec().encode(event({"line": 1, "column": 2}))

    assert isinstance(data, bytes)
    envelope = json.loads(data)
    assert set(envelope) == {"type", "payload", "timestamp", "user_id", "username", "client_id"}
    assert envelope["type"] == "cursor_update"
    assert envelope["payload"] == {"line": 1, "column": 2}
    assert envelope["user_id"] == "u1"
    assert envelope["username"] == "Ünïcode Name"
    assert envelope["client_id"] == "c1"
    assert TIMESTAMP.match(envelope["timestamp"])


@pytest.mark.parametrize("username", ["Alice", 'quote " and \\ backslash', "line\nbreak", "é😀"])
def test_encode_is_the_json_of_the_envelope_object(username: str) -> None:
    payload = {"text": 'a "b" \u2028', "n": [1, 2.5, None]}
    sent = event(payload, username)

    expected = to_json(
        {
            "type": "cursor_update",
            "payload": payload,
            "timestamp": epoch_timestamp(sent.timestamp),
            "user_id": "u1",
            "username": username,
            "client_id": "c1",
        }
    )
    assert JsonCodec().encode(sent) == expected


def test_a_binary_frame_is_refused_with_unsupported_frame() -> None:
    with pytest.raises(Refusal) as info:
        JsonCodec().decode(None, b"\x00\x01")

    assert info.value.code == "unsupported_frame"


def test_text_is_validated_into_a_client_message() -> None:
    message = JsonCodec().decode(
        '{"type": "cursor_update", "payload": {"line": 1, "column": 2}}', None
    )

    assert message.type == "cursor_update"
