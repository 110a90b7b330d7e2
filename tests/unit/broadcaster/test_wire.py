"""The format between instances: round trips, unknown fields ignored, newer versions skipped."""

from __future__ import annotations

import json

import pytest

from app.broadcaster import wire
from app.rooms.events import Author, Resync, Revoke, RoomEvent

EVENT = RoomEvent(
    "p1",
    "cursor_update",
    b'{"line":1,"column":2}',
    Author("alice", "Alice \u00e9\n", "a1"),
    1_700_000_000.25,
    exclude="a1",
)


@pytest.mark.parametrize("event", [EVENT, Revoke("p1", "bob"), Resync("p1")])
def test_every_event_round_trips(event: RoomEvent | Revoke | Resync) -> None:
    assert wire.Decoder().decode("p1", wire.encode("instance-a", event)) == ("instance-a", event)


def test_the_payload_crosses_as_it_is_after_one_header_line() -> None:
    data = wire.encode("instance-a", EVENT)
    head, payload = data.split(b"\n", 1)

    assert payload == EVENT.payload
    assert json.loads(head)["v"] == wire.VERSION


def test_a_field_this_release_does_not_know_is_ignored() -> None:
    head, payload = wire.encode("instance-b", EVENT).split(b"\n", 1)
    header = json.loads(head) | {"priority": "high", "trace": {"id": 7}}

    origin, event = wire.Decoder().decode("p1", json.dumps(header).encode() + b"\n" + payload)

    assert (origin, event) == ("instance-b", EVENT)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"v": 2, "origin": "b", "kind": "event"}, "unknown_version"),
        ({"v": "1", "origin": "b", "kind": "resync"}, "unknown_version"),
        ({"v": True, "origin": "b", "kind": "resync"}, "unknown_version"),
        ({"origin": "b", "kind": "resync"}, "unknown_version"),
        ({"v": 1, "origin": "b", "kind": "flush"}, "unknown_kind"),
        ({"v": 1, "origin": "b", "kind": "revoke"}, "malformed"),
        ({"v": 1, "origin": "b", "kind": "event", "type": "x"}, "malformed"),
        ([1, 2], "malformed"),
    ],
)
def test_what_cannot_be_read_is_refused_with_a_reason(header: object, reason: str) -> None:
    with pytest.raises(wire.Unreadable) as info:
        wire.Decoder().decode("p1", json.dumps(header).encode() + b"\n{}")

    assert info.value.reason == reason


@pytest.mark.parametrize("data", [b"", b"not json\n{}", b"a1\ncursor_update\nc1\n\n{}"])
def test_junk_and_the_old_unversioned_format_are_malformed(data: bytes) -> None:
    with pytest.raises(wire.Unreadable) as info:
        wire.Decoder().decode("p1", data)

    assert info.value.reason == "malformed"
