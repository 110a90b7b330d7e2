"""Lean stand-ins for asyncio.Queue and asyncio.Event, for state held by every connection.

An asyncio.Queue holds four deques and an asyncio.Event one, about 3.5 KiB per connection
between uvicorn's receive queue and its `writable` event, for one consumer and one waiter.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """A FIFO for one consumer: what uvicorn's protocol uses of its receive queue
    (`put_nowait`, `get`, `empty`, `qsize`), on one list and at most one future."""

    __slots__ = ("_head", "_items", "_waiter")

    def __init__(self) -> None:
        # Items before `_head` were taken: a read can queue tens of thousands of tiny frames
        # before uvicorn pauses reading, and list.pop(0) would make draining them quadratic.
        self._items: list[T | None] = []
        self._head = 0
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> T:
        while self._head >= len(self._items):
            if self._waiter is not None:
                raise RuntimeError("expected one consumer, got a second get() while one waits")
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        items, head = self._items, self._head
        item = items[head]
        items[head] = None  # not kept alive by the list until it empties
        if head + 1 == len(items):
            items.clear()
            self._head = 0
        else:
            self._head = head + 1
        return item  # type: ignore[return-value]

    def empty(self) -> bool:
        return self._head >= len(self._items)

    def qsize(self) -> int:
        return len(self._items) - self._head


class Flag:
    """`is_set`, `set`, `clear` and `wait` of an asyncio.Event; its waiters' list is created
    only when someone waits."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        self._value = True
        waiters, self._waiters = self._waiters, None
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> None:
        if self._value:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
