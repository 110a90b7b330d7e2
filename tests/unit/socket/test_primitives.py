"""Inbox and Flag behave like the asyncio.Queue and asyncio.Event they stand in for."""

from __future__ import annotations

import asyncio

import pytest

from app.socket.primitives import Flag, Inbox

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_inbox_is_fifo_and_reports_its_size() -> None:
    inbox: Inbox[int] = Inbox()
    assert inbox.empty()
    for item in (1, 2, 3):
        inbox.put_nowait(item)
    assert (inbox.qsize(), inbox.empty()) == (3, False)
    assert [await inbox.get() for _ in range(3)] == [1, 2, 3]
    assert inbox.empty()


async def test_inbox_keeps_order_through_a_large_backlog_and_refills() -> None:
    inbox: Inbox[int] = Inbox()
    for item in range(50_000):
        inbox.put_nowait(item)
    taken = [await inbox.get() for _ in range(30_000)]
    inbox.put_nowait(50_000)
    assert inbox.qsize() == 20_001
    taken += [await inbox.get() for _ in range(20_001)]
    assert taken == list(range(50_001))
    assert inbox.empty()
    inbox.put_nowait(-1)
    assert (inbox.qsize(), await inbox.get()) == (1, -1)


async def test_inbox_get_waits_for_the_next_put() -> None:
    inbox: Inbox[str] = Inbox()
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not getter.done()
    inbox.put_nowait("hello")
    assert await asyncio.wait_for(getter, 1) == "hello"


async def test_a_cancelled_get_loses_nothing() -> None:
    inbox: Inbox[str] = Inbox()
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    inbox.put_nowait("kept")
    assert await asyncio.wait_for(inbox.get(), 1) == "kept"


async def test_inbox_refuses_a_second_waiting_consumer() -> None:
    inbox: Inbox[int] = Inbox()
    first = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one consumer"):
        await inbox.get()
    inbox.put_nowait(7)
    assert await asyncio.wait_for(first, 1) == 7


async def test_flag_wait_returns_at_once_when_set_and_blocks_when_clear() -> None:
    flag = Flag(True)
    await asyncio.wait_for(flag.wait(), 1)
    flag.clear()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert flag.is_set()


async def test_a_cancelled_flag_waiter_is_forgotten() -> None:
    flag = Flag()
    gone = asyncio.create_task(flag.wait())
    staying = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    flag.set()
    await asyncio.wait_for(staying, 1)
