"""Waiting for state that no message announces (a room's removal, a metric), with a deadline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Re-check `check` until it holds; fail after `within` seconds. Never a fixed sleep."""
    with anyio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - polls server state, not a local event
            await anyio.sleep(0.02)
