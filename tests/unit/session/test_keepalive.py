"""KeepAlive: each registered connection gets its codec's keep-alive, unless it is backed up."""

from __future__ import annotations

import pytest

from app.fanout.connection import BacklogLimits, Connection
from app.protocols.json.codec import JsonCodec
from app.protocols.ywebsocket.codec import KEEPALIVE, YWebsocketCodec
from app.session.keepalive import KeepAlive
from tests.unit.fakes import FakeTransport, RecordingObserver

pytestmark = pytest.mark.anyio


def connection(transport: FakeTransport, codec: YWebsocketCodec | JsonCodec) -> Connection:
    return Connection(
        client_id="c1",
        user_id="u1",
        username="u1",
        project_id="p1",
        ip="10.0.0.1",
        transport=transport,
        codec=codec,
        limits=BacklogLimits(messages=10, bytes=10_000),
        observer=RecordingObserver(),
    )


def test_a_beat_sends_the_keepalive_to_each_registered_connection() -> None:
    keepalive = KeepAlive(10.0)
    first, second, gone = FakeTransport(), FakeTransport(), FakeTransport()
    codec = YWebsocketCodec("main.tex")
    keepalive.add(connection(first, codec))
    keepalive.add(connection(second, codec))
    left = connection(gone, codec)
    keepalive.add(left)
    keepalive.discard(left)

    assert keepalive.beat() == 2
    assert first.sent == [KEEPALIVE]
    assert second.sent == [KEEPALIVE]
    assert gone.sent == []


def test_a_backed_up_connection_gets_no_keepalive_and_is_never_closed_by_one() -> None:
    keepalive = KeepAlive(10.0)
    transport = FakeTransport(can_write=False)
    slow = connection(transport, YWebsocketCodec("main.tex"))
    slow.deliver(b"queued", "yjs_update", "other")
    keepalive.add(slow)

    assert keepalive.beat() == 0
    assert slow.backlog == 1
    assert transport.closes == []


def test_a_codec_without_keepalive_gets_nothing() -> None:
    keepalive = KeepAlive(10.0)
    transport = FakeTransport()
    keepalive.add(connection(transport, JsonCodec()))

    assert keepalive.beat() == 0
    assert transport.sent == []


async def test_start_and_stop_own_the_task() -> None:
    keepalive = KeepAlive(3600.0)
    await keepalive.start()
    assert keepalive._task is not None
    await keepalive.stop()
    assert keepalive._task is None
