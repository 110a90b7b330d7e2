"""`create_app(settings)`: the one entry that assembles the service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from app.container import Container
from app.errors import Refusal
from app.routers import asyncapi, demo, documents, health, internal, stats
from app.routers.errors import error_response, refusal_response
from app.settings import Settings

DESCRIPTION = """\
Real-time collaboration gateway of TexFlow. Browsers open `WS /ws/{project_id}` with a JWT
(`?token=` or `Authorization: Bearer`); messages are relayed to every other connection of the
project. The HTTP endpoints here are for operators and probes.
"""


def create_app(settings: Settings, container: Container | None = None) -> FastAPI:
    """Build the app; pass a container to override its providers (tests)."""
    container = container or Container()
    container.settings.override(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = container.registry()
        reclaimer = container.reclaimer()
        keepalive = container.keepalive()
        store = container.document_store()
        library = container.library()
        await store.start()
        library.start()
        await registry.start()
        await reclaimer.start()
        await keepalive.start()
        try:
            yield
        finally:
            try:
                await keepalive.stop()
                await reclaimer.stop()
                await registry.stop()
            finally:
                # After the sessions: their last updates are stored, then the store closes,
                # whatever happened before.
                try:
                    await library.stop(patience=settings.shutdown_drain)
                finally:
                    await store.stop()

    app = FastAPI(
        title="texflow-websocket",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.container = container
    app.include_router(health.router)
    app.include_router(stats.router)
    app.include_router(internal.router)
    app.include_router(documents.router)
    app.include_router(asyncapi.router)
    app.include_router(demo.router)

    cors_origins = container.origins().cors_origins
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization"],
        )

    @app.exception_handler(Refusal)
    async def refused(request: Request, exc: Refusal) -> JSONResponse:
        return refusal_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", "the request failed validation")

    Instrumentator(registry=container.metrics().registry).instrument(app).expose(
        app, include_in_schema=True, tags=["metrics"]
    )
    return app
