"""The one way the service is served: uvicorn configured from Settings on the gateway protocol."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Mapping

import uvicorn
from fastapi import FastAPI
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from app.logs import log_config
from app.routers.ws import SocketEndpoint
from app.settings import Settings
from app.socket.contract import check_uvicorn
from app.socket.transport import protocol_class
from app.upgrade.http import http_protocol_class


class GatewayServer(uvicorn.Server):
    """uvicorn, with a drain before its own shutdown: on SIGTERM the listening socket stays open
    long enough for /ready to answer 503 and for connections to be closed gradually."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._drain()
        await super().shutdown(sockets)


class Gateway:
    """The ASGI app uvicorn runs, and the one entry for WebSockets: an upgrade goes to the
    endpoint of the path prefix it matches (below `root_path`, as FastAPI's routes are),
    everything else to FastAPI.

    A WebSocket's ASGI call lasts as long as the connection, and FastAPI's middleware stack
    and dependency solving keep a chain of coroutine frames alive for all of it: measured at
    about 13 KB of 39 KB per idle connection (docs/performance.md). None of that middleware acts
    on WebSockets (CORS, metrics and HTTP errors are HTTP-only), so upgrades skip it.

    When the call ends, the transport extension leaves the scope: the protocol holds the scope
    and the extension holds the protocol, and that cycle kept every closed connection (17 KiB
    of objects, its socket and buffers) until a full garbage collection, which after a flood
    of 2,000 connections had not run at all (docs/performance.md, "Memory after a connection
    flood").
    """

    def __init__(self, app: FastAPI, sockets: Mapping[str, SocketEndpoint]) -> None:
        self.app = app
        self._sockets = tuple(sockets.items())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            path = get_route_path(scope)
            for prefix, endpoint in self._sockets:
                if path.startswith(prefix):
                    await endpoint(WebSocket(scope, receive, send), path[len(prefix) :])
                    return
        await self.app(scope, receive, send)


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        root_path=settings.root_path,
        port=settings.port,
        http=http_protocol_class(
            handshake_timeout=settings.handshake_timeout,
            max_head_bytes=settings.max_header_bytes,
            body_timeout=settings.body_timeout,
            max_body_bytes=settings.max_body_bytes,
        ),
        ws=protocol_class(settings.ws_write_wait),
        ws_max_size=settings.max_message_size,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_pong_wait,
        ws_per_message_deflate=settings.ws_compression,
        # Client addresses feed the per-IP cap: never take them from headers anyone can set.
        proxy_headers=False,
        server_header=False,
        log_config=log_config(settings.log_level),
        lifespan="on",
        timeout_graceful_shutdown=max(1, int(settings.shutdown_drain * 0.2) + 1),
    )


def serve(app: FastAPI, settings: Settings) -> None:
    """Run until SIGTERM; raises ContractError first when uvicorn is not one we run on."""
    check_uvicorn()
    registry = app.state.container.registry()
    refusals = app.state.container.refusal_hold()
    gateway = Gateway(app, app.state.container.sockets())

    async def drain() -> None:
        # Held refusals first, at once: nobody is served on them, and they are closed with
        # their own code rather than 1012 (which a provider would answer by reconnecting).
        await refusals.release(patience=1.0)
        await registry.drain(settings.shutdown_drain)

    server = GatewayServer(uvicorn_config(gateway, settings), drain=drain)
    server.run()
