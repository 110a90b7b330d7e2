"""Connection's backlog: direct sends, queueing until drain, coalescing, limits and 1013 closes."""

from __future__ import annotations

import asyncio

import pytest

from app.errors import CloseCode
from app.fanout.connection import BacklogLimits, Connection
from app.protocols.json.codec import JsonCodec
from tests.unit.fakes import FakeTransport, RecordingObserver

ROOMY = BacklogLimits(messages=100, bytes=1_000_000)


def make_connection(
    transport: FakeTransport, observer: RecordingObserver, limits: BacklogLimits = ROOMY
) -> Connection:
    return Connection(
        client_id="c1",
        user_id="u1",
        username="User One",
        project_id="p1",
        ip="10.0.0.1",
        transport=transport,
        codec=JsonCodec(),
        limits=limits,
        observer=observer,
    )


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture
def full() -> FakeTransport:
    """A transport whose socket buffer is full."""
    return FakeTransport(can_write=False)


def test_connection_keeps_its_identity(observer: RecordingObserver) -> None:
    connection = make_connection(FakeTransport(), observer)

    assert (connection.client_id, connection.user_id, connection.username) == (
        "c1",
        "u1",
        "User One",
    )
    assert (connection.project_id, connection.ip) == ("p1", "10.0.0.1")


# Writable


def test_sends_directly_when_writable(observer: RecordingObserver) -> None:
    transport = FakeTransport()
    connection = make_connection(transport, observer)

    connection.deliver(b"one", "document_update", "a")
    connection.deliver(b"two", "cursor_update", "a")
    connection.deliver(b"three", "cursor_update", "a")

    assert transport.sent == [b"one", b"two", b"three"]
    assert connection.backlog == 0
    assert transport.drain_registrations == []
    assert observer.coalesced_types == []


# Queueing


def test_queues_while_full_and_flushes_in_order_on_drain(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)

    for index in range(3):
        connection.deliver(f"d{index}".encode(), "document_update", "a")

    assert full.sent == []
    assert connection.backlog == 3
    full.drain()
    assert full.sent == [b"d0", b"d1", b"d2"]
    assert connection.backlog == 0


def test_drain_callback_is_registered_once_and_cleared_when_empty(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)

    connection.deliver(b"d0", "document_update", "a")
    connection.deliver(b"d1", "document_update", "a")
    assert full.drain_registrations == [connection.flush]

    full.drain()
    assert full.drain_registrations == [connection.flush, None]


def test_new_messages_wait_behind_the_backlog_even_when_writable(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)
    connection.deliver(b"d0", "document_update", "a")

    full.can_write = True  # writable again, but the drain callback has not run yet
    connection.deliver(b"d1", "document_update", "a")

    assert full.sent == []
    full.drain()
    assert full.sent == [b"d0", b"d1"]


def test_flush_stops_when_the_buffer_fills_and_resumes_on_the_next_drain(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)
    for index in range(4):
        connection.deliver(f"d{index}".encode(), "document_update", "a")

    full.drain(room=1)
    assert full.sent == [b"d0"]
    assert connection.backlog == 3

    full.drain(room=2)
    assert full.sent == [b"d0", b"d1", b"d2"]

    full.drain()
    assert full.sent == [b"d0", b"d1", b"d2", b"d3"]
    assert connection.backlog == 0


# Coalescing


def test_ephemeral_messages_from_one_sender_are_coalesced(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)

    for index in range(3):
        connection.deliver(f"cursor-{index}".encode(), "cursor_update", "a")

    assert connection.backlog == 1
    assert observer.coalesced_types == ["cursor_update", "cursor_update"]
    full.drain()
    assert full.sent == [b"cursor-2"]


def test_coalesced_cursor_goes_after_durable_messages_queued_before_it(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)

    connection.deliver(b"cursor-1", "cursor_update", "a")
    connection.deliver(b"doc-1", "document_update", "a")
    connection.deliver(b"cursor-2", "cursor_update", "a")

    full.drain()
    assert full.sent == [b"doc-1", b"cursor-2"]


def test_different_senders_cursors_are_kept_separately(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)

    connection.deliver(b"a-1", "cursor_update", "a")
    connection.deliver(b"b-1", "cursor_update", "b")
    connection.deliver(b"a-2", "cursor_update", "a")

    assert connection.backlog == 2
    full.drain()
    assert full.sent == [b"b-1", b"a-2"]
    assert observer.coalesced_types == ["cursor_update"]


def test_different_ephemeral_types_from_one_sender_are_kept_separately(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)

    connection.deliver(b"cursor", "cursor_update", "a")
    connection.deliver(b"typing", "user_typing", "a")

    full.drain()
    assert full.sent == [b"cursor", b"typing"]
    assert observer.coalesced_types == []


def test_durable_messages_are_never_coalesced(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)

    for message_type in ("document_update", "yjs_update", "document_update"):
        connection.deliver(message_type.encode(), message_type, "a")

    full.drain()
    assert full.sent == [b"document_update", b"yjs_update", b"document_update"]
    assert observer.coalesced_types == []


def test_coalescing_starts_afresh_after_a_full_drain(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)
    connection.deliver(b"a-1", "cursor_update", "a")
    full.drain()

    full.can_write = False
    connection.deliver(b"a-2", "cursor_update", "a")
    full.drain()

    assert full.sent == [b"a-1", b"a-2"]
    assert observer.coalesced_types == []


def cursor_written_by_a_partial_flush(
    full: FakeTransport, observer: RecordingObserver, limits: BacklogLimits = ROOMY
) -> Connection:
    """Queue a-1 then doc-1, let one frame out (a-1), then queue a-2 behind doc-1."""
    connection = make_connection(full, observer, limits)
    connection.deliver(b"a-1", "cursor_update", "a")
    connection.deliver(b"doc-1", "document_update", "a")
    full.drain(room=1)
    assert full.sent == [b"a-1"]
    connection.deliver(b"a-2", "cursor_update", "a")
    return connection


def test_cursor_after_a_partial_flush_is_delivered_after_the_waiting_durable(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    cursor_written_by_a_partial_flush(full, observer)

    full.drain()
    assert full.sent == [b"a-1", b"doc-1", b"a-2"]


def test_cursor_written_by_a_partial_flush_is_not_coalesced_again(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = cursor_written_by_a_partial_flush(full, observer)

    assert observer.coalesced_types == []
    assert connection.backlog == 2  # doc-1 and a-2 wait


def test_backlog_count_returns_to_zero_after_a_partial_flush(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = cursor_written_by_a_partial_flush(full, observer)

    full.drain()
    assert connection.backlog == 0


def test_message_limit_holds_after_a_partial_flush(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = cursor_written_by_a_partial_flush(
        full, observer, BacklogLimits(messages=2, bytes=1_000_000)
    )

    connection.deliver(b"doc-2", "document_update", "a")  # doc-1 and a-2 already wait

    assert full.closes == [(CloseCode.TRY_AGAIN_LATER, "slow consumer")]


# Limits


def test_durable_message_past_the_message_limit_closes_with_1013(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer, BacklogLimits(messages=2, bytes=1_000_000))
    connection.deliver(b"d0", "document_update", "a")
    connection.deliver(b"d1", "document_update", "a")
    assert full.closes == []

    connection.deliver(b"d2", "yjs_update", "a")

    assert full.closes == [(CloseCode.TRY_AGAIN_LATER, "slow consumer")]
    assert observer.slow_closes == 1
    assert observer.dropped_types == []
    assert connection.backlog == 0


def test_durable_message_past_the_byte_limit_closes_with_1013(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer, BacklogLimits(messages=100, bytes=10))
    connection.deliver(b"12345", "document_update", "a")
    connection.deliver(b"67890", "document_update", "a")  # exactly at the limit
    assert full.closes == []

    connection.deliver(b"x", "document_update", "a")

    assert full.closes == [(CloseCode.TRY_AGAIN_LATER, "slow consumer")]
    assert observer.slow_closes == 1


def test_ephemeral_message_over_the_limit_is_dropped_not_a_close(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer, BacklogLimits(messages=1, bytes=1_000_000))
    connection.deliver(b"doc", "document_update", "a")

    connection.deliver(b"cursor", "cursor_update", "b")

    assert full.closes == []
    assert observer.slow_closes == 0
    assert observer.dropped_types == ["cursor_update"]
    full.drain()
    assert full.sent == [b"doc"]


def test_ephemeral_message_over_the_byte_limit_is_dropped(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer, BacklogLimits(messages=100, bytes=8))
    connection.deliver(b"doc-1", "document_update", "a")

    connection.deliver(b"selection", "selection", "b")

    assert observer.dropped_types == ["selection"]
    assert full.closes == []


def test_coalescing_frees_room_under_the_message_limit(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer, BacklogLimits(messages=2, bytes=1_000_000))
    connection.deliver(b"doc", "document_update", "a")
    connection.deliver(b"a-1", "cursor_update", "a")

    connection.deliver(b"a-2", "cursor_update", "a")

    assert observer.dropped_types == []
    full.drain()
    assert full.sent == [b"doc", b"a-2"]


def test_a_drained_backlog_makes_room_again(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer, BacklogLimits(messages=2, bytes=1_000_000))
    connection.deliver(b"d0", "document_update", "a")
    connection.deliver(b"d1", "document_update", "a")
    full.drain()
    full.can_write = False

    connection.deliver(b"d2", "document_update", "a")
    connection.deliver(b"d3", "document_update", "a")

    assert full.closes == []
    assert connection.backlog == 2


# Closed transport


def test_nothing_is_sent_after_a_slow_consumer_close(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer, BacklogLimits(messages=1, bytes=1_000_000))
    connection.deliver(b"d0", "document_update", "a")
    connection.deliver(b"d1", "document_update", "a")
    assert full.closed

    connection.deliver(b"d2", "document_update", "a")
    full.drain()

    assert full.sent == []
    assert full.closes == [(CloseCode.TRY_AGAIN_LATER, "slow consumer")]
    assert observer.slow_closes == 1


def test_nothing_is_sent_on_a_closed_transport(observer: RecordingObserver) -> None:
    transport = FakeTransport()
    connection = make_connection(transport, observer)
    transport.closed = True

    connection.deliver(b"doc", "document_update", "a")
    connection.flush()

    assert transport.sent == []
    assert connection.backlog == 0


def test_backlog_is_not_flushed_once_the_transport_closes(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)
    connection.deliver(b"doc", "document_update", "a")
    full.closed = True

    full.drain()

    assert full.sent == []


def test_close_discards_the_backlog_and_closes_the_transport(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)
    connection.deliver(b"doc", "document_update", "a")

    connection.close(1012, "service restart")

    assert connection.backlog == 0
    assert full.closes == [(1012, "service restart")]
    assert observer.slow_closes == 0


# Replies: what the connection asked for (a document's state)


def test_a_reply_past_the_byte_limit_is_queued_not_a_close(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer, BacklogLimits(messages=1, bytes=10))
    connection.deliver(b"12345", "document_update", "a")

    connection.deliver(b"a whole large document", "yjs_sync_step2", "c1", reply=True)

    assert full.closes == []
    assert connection.backlog == 2
    # The limits still hold for everything else.
    connection.deliver(b"x", "document_update", "a")
    assert full.closes == [(CloseCode.TRY_AGAIN_LATER, "slow consumer")]


@pytest.mark.anyio
async def test_drained_waits_for_the_backlog_to_empty(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)
    await connection.drained()  # nothing waits: returns at once
    connection.deliver(b"big", "yjs_sync_step2", "c1", reply=True)
    waiting = asyncio.ensure_future(connection.drained())
    await asyncio.sleep(0)
    assert not waiting.done()

    full.can_write = True
    connection.flush()

    await waiting
    assert full.sent == [b"big"]


@pytest.mark.anyio
async def test_drained_returns_when_the_connection_closes(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)
    connection.deliver(b"big", "yjs_sync_step2", "c1", reply=True)
    waiting = asyncio.ensure_future(connection.drained())
    await asyncio.sleep(0)

    connection.close(CloseCode.NORMAL, "bye")

    await waiting


@pytest.mark.anyio
async def test_drained_returns_when_the_peer_is_lost(
    full: FakeTransport, observer: RecordingObserver
) -> None:
    connection = make_connection(full, observer)
    connection.deliver(b"big", "yjs_sync_step2", "c1", reply=True)
    waiting = asyncio.ensure_future(connection.drained())
    await asyncio.sleep(0)

    # What the transport does when the connection is lost: the drain callback, once.
    full.closed = True
    connection.flush()

    await waiting
