"""WS_COMPRESSION on: one broadcast reaches deflate and plain members, each framed as negotiated."""

from __future__ import annotations

import json
import zlib
from typing import Any

import anyio
import pytest

from tests.support.clients import RawClient, member, receive_type, send
from tests.support.server import running_server

pytestmark = pytest.mark.anyio


class DeflateReader:
    """Reads a RawClient's text frames, inflating compressed ones with one shared context
    (the server keeps its compression context across messages)."""

    def __init__(self, raw: RawClient) -> None:
        self.raw = raw
        self.inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self.compressed: list[bool] = []

    def next_message(self) -> dict[str, Any]:
        opcode, payload = self.raw.read_frame()
        assert opcode == 0x1, f"expected a text frame, got opcode {opcode}"
        self.compressed.append(self.raw.last_rsv1)
        if self.raw.last_rsv1:
            payload = self.inflate.decompress(payload + b"\x00\x00\xff\xff")
        message: dict[str, Any] = json.loads(payload)
        return message

    def next_of_type(self, message_type: str) -> dict[str, Any]:
        while (message := self.next_message())["type"] != message_type:
            pass
        return message


async def test_a_relay_is_compressed_for_deflate_members_and_plain_for_the_others() -> None:
    with running_server({"WS_COMPRESSION": "true"}) as server:
        token = server.token("deflate")
        async with member(server.ws_url("mixed", server.token("plain"))) as (plain, _):
            raw = await anyio.to_thread.run_sync(
                lambda: RawClient(
                    server.port,
                    f"/ws/mixed?token={token}",
                    {"Sec-WebSocket-Extensions": "permessage-deflate"},
                )
            )
            try:
                assert raw.status == 101
                assert "permessage-deflate" in raw.response_head.lower()
                reader = DeflateReader(raw)
                await anyio.to_thread.run_sync(reader.next_of_type, "presence_state")
                await receive_type(plain, "user_joined")
                async with member(server.ws_url("mixed", server.token("sender"))) as (sender, _):
                    await receive_type(plain, "user_joined")
                    await send(sender, "document_update", {"text": "x" * 500})
                    relayed = await receive_type(plain, "document_update")
                    compressed = await anyio.to_thread.run_sync(
                        reader.next_of_type, "document_update"
                    )
                    assert relayed["payload"] == compressed["payload"] == {"text": "x" * 500}
                    assert relayed == compressed
                    assert reader.compressed[-1], "the deflate member got an uncompressed frame"
            finally:
                raw.close()
