"""A y-websocket client in Python: what the stock provider does on `/yjs/`, frame by frame.

One `YProvider` is one provider on one document: a pycrdt `Doc` whose `Text` is the document,
an `Awareness`, and the WebSocket it talks through. It sends its step 1 and awareness on open,
answers the server's step 1 with step 2, sends each local change as a sync update, and applies
whatever arrives. Nothing sleeps: each wait reads frames until a condition holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from pycrdt import Awareness, Doc, Text
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from app.protocols.ywebsocket.frames import (
    AwarenessUpdate,
    Frame,
    PermissionDenied,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    read_frame,
    write_awareness,
    write_sync_step1,
    write_sync_step2,
    write_sync_update,
)
from tests.support.clients import RECEIVE_TIMEOUT, open_ws
from tests.support.yjs import TEXT_NAME, LocalEdits

KEEPALIVE = write_awareness(b"\x00")


def yjs_url(port: int, project_id: str, document_id: str, token: str | None = None) -> str:
    url = f"ws://127.0.0.1:{port}/yjs/{project_id}/{document_id}"
    return f"{url}?token={token}" if token is not None else url


class YProvider:
    def __init__(self, ws: ClientConnection, doc: Doc[Text] | None = None) -> None:
        self.ws = ws
        self.doc: Doc[Text] = doc if doc is not None else Doc()
        self.text = self.doc.get(TEXT_NAME, type=Text)
        self.awareness = Awareness(self.doc)
        self.frames: list[Frame] = []
        self.keepalives = 0
        self.denied: list[str] = []
        self.synced = False
        self._edits = LocalEdits(self.doc)

    async def open(self) -> None:
        """What the provider sends as its socket opens: step 1 and its awareness."""
        await self.ws.send(write_sync_step1(self.doc.get_state()))
        await self.send_awareness()

    async def send_awareness(self) -> None:
        own = self.awareness.encode_awareness_update([self.awareness.client_id])
        await self.ws.send(write_awareness(own))

    async def edit(self, at: int, insert: str) -> None:
        self.text.insert(at, insert)
        await self.flush()

    async def flush(self) -> None:
        while (update := self._edits.take()) is not None:
            await self.ws.send(write_sync_update(update))

    async def sync(self) -> None:
        """A step 1 now: its step 2 comes once the server stored every update sent before."""
        self.synced = False
        await self.ws.send(write_sync_step1(self.doc.get_state()))

    async def receive_frame(self) -> Frame:
        with anyio.fail_after(RECEIVE_TIMEOUT):
            raw = await self.ws.recv()
        assert isinstance(raw, bytes), f"expected a binary frame, got {raw!r}"
        if raw == KEEPALIVE:
            self.keepalives += 1
        frame = read_frame(raw)
        self.frames.append(frame)
        await self.handle(frame)
        return frame

    async def handle(self, frame: Frame) -> None:
        if isinstance(frame, SyncStep1):
            await self.ws.send(write_sync_step2(self.doc.get_update(frame.state_vector)))
        elif isinstance(frame, SyncStep2):
            self._edits.apply_remote(frame.update)
            self.synced = True
        elif isinstance(frame, SyncUpdate):
            self._edits.apply_remote(frame.update)
        elif isinstance(frame, AwarenessUpdate):
            self.awareness.apply_awareness_update(frame.update, "remote")
        elif isinstance(frame, PermissionDenied):
            self.denied.append(frame.reason)
        else:
            assert isinstance(frame, QueryAwareness)

    async def read_until(self, condition: Callable[[], bool]) -> None:
        # On the whole wait: keep-alives arrive forever, so each read alone would not end it.
        with anyio.fail_after(RECEIVE_TIMEOUT):
            while not condition():
                await self.receive_frame()

    async def close_code(self) -> int | None:
        """Read (and handle) frames until the server closes; the code it sent."""
        with anyio.fail_after(RECEIVE_TIMEOUT * 4):
            try:
                while True:
                    await self.receive_frame()
            except ConnectionClosed as closed:
                return None if closed.rcvd is None else closed.rcvd.code

    @property
    def content(self) -> str:
        return str(self.text)

    def states(self) -> dict[int, dict[str, Any]]:
        return dict(self.awareness.states)


@asynccontextmanager
async def provider(
    url: str, *, doc: Doc[Text] | None = None, synced: bool = True, **kwargs: Any
) -> AsyncIterator[YProvider]:
    """A provider on `url`; `synced`: opened as the stock one opens, and synced both ways."""
    kwargs.setdefault("max_size", 64 * 1024 * 1024)
    async with open_ws(url, **kwargs) as ws:
        client = YProvider(ws, doc)
        if synced:
            await client.open()
            await client.read_until(lambda: client.synced)
        yield client
