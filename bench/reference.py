"""The reference relay: rooms from the URL path, text relayed verbatim to the other members.

About forty lines on the `websockets` library (no compression, uvloop like the service), the
yardstick every figure is compared with. `python -m bench.reference PORT [PING PONG_WAIT]`.
"""

from __future__ import annotations

import sys

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

rooms: dict[str, set[ServerConnection]] = {}


async def relay(websocket: ServerConnection) -> None:
    path = websocket.request.path if websocket.request else "/"
    room_id = path.partition("?")[0].rstrip("/").rpartition("/")[2]
    room = rooms.setdefault(room_id, set())
    room.add(websocket)
    try:
        async for message in websocket:
            if isinstance(message, str):
                broadcast([peer for peer in room if peer is not websocket], message)
    finally:
        room.discard(websocket)
        if not room and rooms.get(room_id) is room:
            del rooms[room_id]


async def main(port: int, ping_interval: float, ping_timeout: float) -> None:
    async with serve(
        relay,
        "127.0.0.1",
        port,
        compression=None,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        backlog=2048,
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    ping, pong_wait = (float(value) for value in (sys.argv[2:4] or ["54", "60"]))
    uvloop.run(main(int(sys.argv[1]), ping, pong_wait))
