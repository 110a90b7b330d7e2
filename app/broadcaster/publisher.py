"""PUBLISH written to a dedicated Redis connection the moment an event is published.

A command queued for a task to send costs a wake-up of that task and redis-py's pipeline
machinery before Redis sees it; on the cross-instance path that was most of the added latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError


class Publisher:
    """Pipelines PUBLISH commands on one connection, in publish order, written synchronously;
    `run` reads the replies and `stalled` tells when they stopped coming. Bounded: past `limit`
    unanswered commands or `byte_limit` unsent bytes, `publish` refuses instead of buffering."""

    def __init__(
        self,
        connection: AbstractConnection,
        *,
        limit: int = 10_000,
        byte_limit: int = 16 * 1024 * 1024,
        reply_timeout: float = 2.0,
    ) -> None:
        # redis-py keeps the connection's StreamWriter private; it is the only way to write
        # without awaiting. Checked here so a redis-py that changes it fails loudly at connect.
        writer = getattr(connection, "_writer", None)
        if not isinstance(writer, asyncio.StreamWriter):
            raise RuntimeError(
                f"expected a connected redis connection with a StreamWriter, got {writer!r}"
            )
        self._connection = connection
        self._writer = writer
        self._limit = limit
        self._byte_limit = byte_limit
        self._timeout = reply_timeout
        self._pending = 0
        # When a reply last came, or the first command after an idle spell was written.
        self._progress = 0.0
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    async def open(
        cls,
        client: Redis,
        name: str,
        *,
        limit: int = 10_000,
        byte_limit: int = 16 * 1024 * 1024,
        reply_timeout: float = 2.0,
    ) -> Publisher:
        """A new connection with the client's settings (address, TLS, credentials), named
        `name` in `CLIENT LIST`."""
        connection = client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.connect()
            await connection.send_command("CLIENT", "SETNAME", name)
            # An ACL may forbid CLIENT; the name is only a courtesy to operators.
            with contextlib.suppress(ResponseError):
                await connection.read_response()
            return cls(connection, limit=limit, byte_limit=byte_limit, reply_timeout=reply_timeout)
        except BaseException:
            await connection.disconnect()
            raise

    @property
    def pending(self) -> int:
        """Commands written whose reply has not arrived yet."""
        return self._pending

    def publish(self, channel: bytes, data: bytes) -> bool:
        """Write PUBLISH now; False (nothing written) if the connection is over its limits."""
        writer = self._writer
        if (
            self._pending >= self._limit
            or writer.is_closing()
            or writer.transport.get_write_buffer_size() > self._byte_limit
        ):
            return False
        writer.write(
            b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
            % (len(channel), channel, len(data), data)
        )
        if not self._pending:
            self._progress = time.monotonic()
            self._idle.clear()
        self._pending += 1
        return True

    async def run(self) -> None:
        """Read replies until the connection fails: raises RedisError or OSError. Reading all
        the time, even with nothing pending, notices a closed connection at once."""
        connection = self._connection
        while True:
            await connection.read_response(timeout=math.inf)
            if not self._pending:
                raise ConnectionError("a reply from Redis that no command asked for")
            self._pending -= 1
            self._progress = time.monotonic()
            if not self._pending:
                self._idle.set()

    def stalled(self, now: float) -> bool:
        """True when commands wait for a reply and none came for `reply_timeout` seconds."""
        return self._pending > 0 and now - self._progress > self._timeout

    @property
    def closed(self) -> bool:
        return self._writer.is_closing()

    async def flush(self) -> None:
        """Wait until every command written so far has its reply (needs `run` running)."""
        await self._idle.wait()

    async def aclose(self) -> int:
        """Close the connection; returns how many commands were written but not answered."""
        lost, self._pending = self._pending, 0
        # abort(), not close(): close() would wait to send what is buffered to a Redis that
        # may never read it.
        self._writer.transport.abort()
        await self._connection.disconnect()
        return lost
