"""The one way the service is served: uvicorn configured from Settings on the gateway protocol."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from app.logs import log_config
from app.settings import Settings
from app.transport import protocol_class


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
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
    )


def serve(app: FastAPI, settings: Settings) -> None:
    uvicorn.Server(uvicorn_config(app, settings)).run()
