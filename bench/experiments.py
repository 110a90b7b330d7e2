"""Prototypes of the changes docs/performance.md suggests, to measure them before anyone
makes them: `python -m bench --service-patches prepared-frames,direct-ws ...` starts the
service as `python -m bench.experiments prepared-frames,direct-ws`, which applies the patches
in that process and then runs `app.__main__.main()` as `python -m app` would. app/ itself is
not changed; a default `make bench` applies none of this.

prepared-frames and direct-ws were adopted in app/ (commits edb0310 and f1920b9); on a
service that has them they refuse to apply. Their measurements (bench/results/experiment-*.json)
were taken on the app before those commits.

- prepared-frames: frame a broadcast once and write the same bytes to every recipient (what
  gorilla/websocket calls a PreparedMessage), instead of building a websockets Frame per
  recipient in GatewayProtocol.send_text. Only without compression, as the default is.
- direct-ws: hand `/ws/...` upgrades straight to the route's function, outside the FastAPI
  and Starlette middleware stack (exception middlewares, CORS, Prometheus, AsyncExitStack,
  routing, dependency solving), whose coroutine frames live as long as each connection.
- gc-freeze: `gc.freeze()` once the app is built, so collections stop re-scanning the
  objects of start-up, and a larger first-generation threshold.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

PATCHES = ("prepared-frames", "direct-ws", "gc-freeze")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def prepared_frames() -> None:
    from websockets.protocol import State

    from app.transport import GatewayProtocol

    if hasattr(GatewayProtocol, "send_prepared") or hasattr(GatewayProtocol, "offer"):
        raise SystemExit("prepared-frames: the service already frames broadcasts once (edb0310)")
    original = GatewayProtocol.send_text
    last: list[Any] = [None, b""]  # the last payload and its frame: one broadcast's recipients

    def send_text(self: GatewayProtocol, data: bytes) -> None:
        if self.closed:
            return
        if self.conn.extensions or self.conn.state is not State.OPEN:
            original(self, data)
            return
        if last[0] is not data:
            size = len(data)
            if size < 126:
                head = bytes((0x81, size))
            elif size < 65536:
                head = bytes((0x81, 126)) + size.to_bytes(2, "big")
            else:
                head = bytes((0x81, 127)) + size.to_bytes(8, "big")
            last[0], last[1] = data, head + data
        self.transport.write(last[1])

    GatewayProtocol.send_text = send_text  # type: ignore[method-assign]


def direct_ws() -> None:
    from starlette.websockets import WebSocket

    import app.server
    from app.routers.ws import project_socket

    if hasattr(app.server, "WebSocketFastPath"):
        raise SystemExit("direct-ws: the service already serves /ws/ outside FastAPI (f1920b9)")
    serve = app.server.serve

    def direct_serve(application: Any, settings: Any) -> None:
        container = application.state.container

        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "websocket" and scope["path"].startswith("/ws/"):
                websocket = WebSocket(scope, receive, send)
                gatekeeper, sessions = container.gatekeeper(), container.sessions()
                await project_socket(websocket, scope["path"][4:], gatekeeper, sessions)
                return
            await application(scope, receive, send)

        asgi.state = application.state  # type: ignore[attr-defined]
        # serve() only reads `.state` and hands the callable to uvicorn: any ASGI app does.
        serve(asgi, settings)  # type: ignore[arg-type]

    app.server.serve = direct_serve  # type: ignore[assignment]


def gc_freeze() -> None:
    import app.server

    serve = app.server.serve

    def frozen_serve(application: Any, settings: Any) -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        serve(application, settings)

    app.server.serve = frozen_serve  # type: ignore[assignment]


def main() -> int:
    chosen = [name for name in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if name]
    unknown = set(chosen) - set(PATCHES)
    if unknown:
        print(f"unknown patches {sorted(unknown)}; choose from {PATCHES}", file=sys.stderr)
        return 2
    # In the order given; gc-freeze last wraps the others.
    for name in PATCHES:
        if name in chosen:
            {"prepared-frames": prepared_frames, "direct-ws": direct_ws, "gc-freeze": gc_freeze}[
                name
            ]()
    sys.argv = [sys.argv[0]]
    from app.__main__ import main as app_main

    return app_main([])


if __name__ == "__main__":
    sys.exit(main())
