"""Refused upgrades of a protocol whose clients reconnect at once: told why, then held open."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

from app.admission.limits import ConnectionLimiter
from app.errors import CloseCode, Refusal
from app.metrics import Metrics

FIRST = asyncio.FIRST_COMPLETED

# The refusals of who the client is, which a retry with the same token cannot change. Limits,
# origins and a draining instance keep their HTTP answers: a retry may well succeed, or (the
# origin) the page must not get a socket at all.
_HELD = {
    "unauthorized": CloseCode.UNAUTHORIZED,
    "forbidden": CloseCode.FORBIDDEN,
    "access_revoked": CloseCode.FORBIDDEN,
}
# Held connections in all, beyond each address's own cap: past it, refusals are HTTP again.
MAX_HELD = 1000


class RefusalHold:
    """Accepts a refused upgrade, sends the protocol's refusal message, reads and drops what the
    client sends, and closes after `hold` seconds unless the client left first.

    The stock y-websocket provider reconnects 100 ms after any connection that had opened and
    with a backoff capped at 2.5 s after one refused at the handshake, forever; a browser is
    not told why a handshake was refused. Held open, a refused provider logs the reason and
    retries once per `hold` (its own 30 s silence timeout closes it first at the default).
    Each held connection takes a slot of its address's cap, as an admitted one does.
    """

    def __init__(
        self,
        ip_limiter: ConnectionLimiter,
        metrics: Metrics,
        *,
        hold: float,
        message: Callable[[Refusal], bytes],
    ) -> None:
        self._ip_limiter = ip_limiter
        self._metrics = metrics
        self._hold = hold
        self._message = message
        self._held = 0
        # Set when the instance drains: held connections are closed with the rest.
        self._released = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    async def release(self, patience: float) -> None:
        """Close every held connection now, and hold no more (SIGTERM's drain); returns once
        they are closed, or after `patience` seconds."""
        self._released.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), patience)

    def holds(self, refusal: Refusal) -> bool:
        return refusal.code in _HELD

    async def serve(
        self, websocket: WebSocket, refusal: Refusal, ip: str, subprotocol: str | None
    ) -> bool:
        """Hold the refused connection; False when no slot is free (answer it with HTTP)."""
        if self._released.is_set() or self._held >= MAX_HELD or not self._ip_limiter.acquire(ip):
            return False
        self._held += 1
        self._empty.clear()
        self._metrics.held_refusals.inc()
        try:
            await websocket.accept(subprotocol=subprotocol)
            await websocket.send_bytes(self._message(refusal))
            gone = asyncio.ensure_future(self._until_gone(websocket))
            released = asyncio.ensure_future(self._released.wait())
            try:
                done, _ = await asyncio.wait(
                    (gone, released), timeout=self._hold, return_when=FIRST
                )
            finally:
                released.cancel()
                if not gone.done():
                    gone.cancel()
            if gone in done:
                gone.result()
                return True
            with contextlib.suppress(asyncio.CancelledError):
                await gone
            await websocket.close(_HELD[refusal.code], refusal.code)
            return True
        except (OSError, WebSocketDisconnect):
            # Gone while being told: nothing more to say.
            return True
        finally:
            self._held -= 1
            if not self._held:
                self._empty.set()
            self._metrics.held_refusals.dec()
            self._ip_limiter.release(ip)

    @staticmethod
    async def _until_gone(websocket: WebSocket) -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
