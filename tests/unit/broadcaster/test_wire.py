"""The format between instances: round trips, unknown fields ignored, newer versions skipped."""

from __future__ import annotations

import json

import pytest

from app.broadcaster import wire
from app.rooms.events import Author, AwarenessQuery, Resync, Revoke, RoomEvent

EVENT = RoomEvent(
    "p1",
    "cursor_update",
    b'{"line":1,"column":2}',
    Author("alice", "Alice \u00e9\n", "a1"),
    1_700_000_000.25,
    exclude="a1",
)


@pytest.mark.parametrize(
    "event", [EVENT, Revoke("p1", "bob"), Resync("p1"), AwarenessQuery("p1", "a/b.tex")]
)
def test_every_event_round_trips(event: RoomEvent | Revoke | Resync | AwarenessQuery) -> None:
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


def test_every_version_1_event_starts_with_its_origins_prefix() -> None:
    for event in (EVENT, Revoke("p1", "bob"), Resync("p1"), AwarenessQuery("p1", "a/b.tex")):
        assert wire.encode("instance-é", event).startswith(wire.origin_prefix("instance-é"))
    assert not wire.encode("instance-a", EVENT).startswith(wire.origin_prefix("instance"))


@pytest.mark.parametrize("ts", ["1e300", "NaN", "-1", "Infinity"])
def test_a_timestamp_no_client_envelope_can_carry_is_malformed(ts: str) -> None:
    head, payload = wire.encode("b", EVENT).split(b"\n", 1)
    header = head.replace(json.dumps(EVENT.timestamp).encode(), ts.encode())

    with pytest.raises(wire.Unreadable) as info:
        wire.Decoder().decode("p1", header + b"\n" + payload)

    assert info.value.reason == "malformed"


@pytest.mark.parametrize("payload", [b"", b"not json", b"[1]"])
def test_a_payload_that_is_not_a_json_object_is_malformed(payload: bytes) -> None:
    head = wire.encode("b", EVENT).split(b"\n", 1)[0]

    with pytest.raises(wire.Unreadable) as info:
        wire.Decoder().decode("p1", head + b"\n" + payload)

    assert info.value.reason == "malformed"


@pytest.mark.parametrize(
    "event", [EVENT, Revoke("p1", "bob"), Resync("p1"), AwarenessQuery("p1", "a/b.tex")]
)
def test_version_0_is_written_and_read_for_a_rolling_deploy_from_older_releases(
    event: RoomEvent | Revoke | Resync | AwarenessQuery,
) -> None:
    data = wire.encode("instance-a", event, wire.LEGACY)

    origin, decoded = wire.Decoder().decode("p1", data)

    assert origin == "instance-a"
    if isinstance(event, RoomEvent):
        assert isinstance(decoded, RoomEvent)
        assert json.loads(decoded.payload) == json.loads(event.payload)
        assert (decoded.type, decoded.author, decoded.exclude) == (
            event.type,
            event.author,
            event.exclude,
        )
        # Version 0 carried milliseconds.
        assert decoded.timestamp == pytest.approx(event.timestamp, abs=0.001)
    else:
        assert decoded == event


def test_a_version_0_event_as_older_releases_wrote_it_is_read() -> None:
    envelope = {
        "type": "cursor_update",
        "payload": {"line": 3, "column": 4},
        "timestamp": "2026-11-29T10:00:00.250Z",
        "user_id": "bob",
        "username": "Bob",
        "client_id": "b1",
    }
    data = b"\n".join((b"old", b"cursor_update", b"b1", b"b1", json.dumps(envelope).encode()))

    origin, event = wire.Decoder().decode("p1", data)

    assert origin == "old"
    assert event == RoomEvent(
        "p1",
        "cursor_update",
        b'{"line":3,"column":4}',
        Author("bob", "Bob", "b1"),
        1_795_946_400.25,  # 2026-11-29T10:00:00.250Z
        exclude="b1",
    )
