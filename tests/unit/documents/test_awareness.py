"""AwarenessStates: y-protocols' rules for clocks and removals, the cap, removal on close."""

from __future__ import annotations

import pytest
from pycrdt import Awareness, Doc

from app.documents.awareness import (
    MAX_STATE_BYTES,
    MAX_STATES,
    MAX_STATES_BYTES,
    AwarenessRefused,
    AwarenessStates,
    _encode,
)


def states_of(data: bytes) -> dict[int, object]:
    awareness = Awareness(Doc())
    awareness.apply_awareness_update(data, "remote")
    return {c: s for c, s in awareness.states.items() if c != awareness.client_id}


def test_the_latest_state_of_each_client_is_kept_and_encoded() -> None:
    states = AwarenessStates()
    assert states.apply(_encode([(1, 0, '{"name":"ann"}')]), "conn-a")
    assert states.apply(_encode([(1, 1, '{"name":"ann","cursor":3}')]), "conn-a")
    assert not states.apply(_encode([(1, 0, '{"name":"stale"}')]), "conn-a")
    assert states.apply(_encode([(2, 5, '{"name":"bob"}')]), "conn-b")
    # A client never seen is taken at any clock (y-protocols itself skips clock 0 then).
    assert states.apply(_encode([(3, 0, '{"name":"cat"}')]), "conn-c")

    encoded = states.encode()
    assert encoded is not None
    assert states_of(encoded) == {1: {"name": "ann", "cursor": 3}, 2: {"name": "bob"}}
    assert len(states) == 3


def test_closing_a_connection_removes_its_states_at_their_clock() -> None:
    states = AwarenessStates()
    states.apply(_encode([(1, 4, '{"name":"ann"}')]), "conn-a")
    states.apply(_encode([(2, 1, '{"name":"bob"}')]), "conn-b")

    removal = states.remove_owner("conn-a")

    assert removal == _encode([(1, 4, "null")])
    # What y-protocols does with it: the state it held at clock 4 is gone.
    peer = Awareness(Doc())
    peer.apply_awareness_update(_encode([(1, 4, '{"name":"ann"}')]), "remote")
    peer.apply_awareness_update(removal, "remote")
    assert 1 not in peer.states
    assert states.remove_owner("conn-a") is None
    encoded = states.encode()
    assert encoded is not None
    assert states_of(encoded) == {2: {"name": "bob"}}
    # Back after a reconnect, at its next clock: taken at once.
    assert states.apply(_encode([(1, 5, '{"name":"ann"}')]), "conn-a2")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x01\x01\x00\x05ab",
        b"\x01\x01\x00\x02{x",
        b"\x01\x01\x00\x02{}\x00",
        b"\x80",
    ],
    ids=["empty", "truncated", "short-string", "not-json", "trailing", "bad-varint"],
)
def test_bytes_that_are_not_an_awareness_update_are_refused(data: bytes) -> None:
    states = AwarenessStates()
    with pytest.raises(AwarenessRefused):
        states.apply(data, "conn-a")
    assert states.encode() is None


def test_more_live_states_than_the_cap_are_refused_whole() -> None:
    states = AwarenessStates()
    states.apply(_encode([(c, 0, "{}") for c in range(MAX_STATES)]), "conn-a")

    with pytest.raises(AwarenessRefused):
        states.apply(_encode([(MAX_STATES + 1, 0, "{}")]), "conn-b")
    assert len(states) == MAX_STATES


def test_states_are_bounded_in_bytes() -> None:
    states = AwarenessStates()
    big = '{"x":"' + "a" * (MAX_STATE_BYTES - 8) + '"}'
    with pytest.raises(AwarenessRefused):
        states.apply(_encode([(1, 0, '{"x":"' + "a" * MAX_STATE_BYTES + '"}')]), "conn-a")
    count = MAX_STATES_BYTES // len(big)
    states.apply(_encode([(c, 0, big) for c in range(count)]), "conn-a")

    with pytest.raises(AwarenessRefused):
        states.apply(_encode([(count, 0, big)]), "conn-b")
    # A removal makes room again.
    states.remove_owner("conn-a")
    assert states.apply(_encode([(count, 0, big)]), "conn-b")
