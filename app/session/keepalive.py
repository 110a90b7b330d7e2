"""Periodic keep-alive frames for connections whose clients close quiet connections themselves."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.fanout.connection import Connection

logger = logging.getLogger("texflow.session")


class KeepAlive:
    """Every `interval`, each registered connection gets its codec's keep-alive message.

    The stock y-websocket provider closes a connection on which no message arrived for 30 s;
    WebSocket pings are answered by the browser and never reach its code. The y-websocket
    server keeps a lone provider alive by echoing its awareness renewals (every 15 s), which
    stop when the page clears its awareness state; a frame from the server every `interval`
    does not depend on what the client does. One task for all connections: a timer each would
    cost more than the 3-byte frame.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._connections: set[Connection] = set()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._connections)

    def add(self, connection: Connection) -> None:
        self._connections.add(connection)

    def discard(self, connection: Connection) -> None:
        self._connections.discard(connection)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="keepalive")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def beat(self) -> int:
        """Send one keep-alive to every connection not already backed up; returns how many."""
        sent = 0
        for connection in list(self._connections):
            frame = connection.codec.keepalive
            # A backed-up connection has frames on their way already; and a keep-alive must
            # never be what closes a slow reader.
            if frame is not None and connection.backlog == 0:
                connection.deliver(frame, "keepalive", "server")
                sent += 1
        return sent

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.beat()
            except Exception:
                logger.exception("keep-alive failed", extra={"event": "keepalive_failed"})
