"""Gateway: the one entry for WebSockets, below root_path, without FastAPI's stack."""

from __future__ import annotations

from typing import Any, cast

import pytest
from fastapi import FastAPI
from starlette.websockets import WebSocket

from app.routers.ws import SocketEndpoint
from app.upgrade.server import Gateway

pytestmark = pytest.mark.anyio


class Endpoint:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, websocket: WebSocket, project_id: str) -> None:
        self.calls.append((websocket.scope["path"], project_id))


class App:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])


async def nothing() -> Any:
    raise AssertionError("not read")


async def discard(message: Any) -> None:
    raise AssertionError("not sent")


def gateway(app: App, endpoint: Endpoint) -> Gateway:
    return Gateway(cast(FastAPI, app), {"/ws/": cast(SocketEndpoint, endpoint)})


@pytest.mark.parametrize(
    ("root_path", "path", "project_id"),
    [("", "/ws/demo", "demo"), ("/realtime", "/realtime/ws/a.b-c", "a.b-c"), ("", "/ws/", "")],
)
async def test_an_upgrade_goes_to_its_protocols_endpoint_and_never_to_fastapi(
    root_path: str, path: str, project_id: str
) -> None:
    app, endpoint = App(), Endpoint()
    scope = {"type": "websocket", "path": path, "root_path": root_path, "headers": []}

    await gateway(app, endpoint)(scope, nothing, discard)

    assert endpoint.calls == [(path, project_id)]
    assert app.paths == []


@pytest.mark.parametrize(
    ("kind", "path"),
    [("http", "/ws/demo"), ("websocket", "/elsewhere"), ("websocket", "/realtime/ws/x")],
)
async def test_everything_else_goes_to_fastapi(kind: str, path: str) -> None:
    app, endpoint = App(), Endpoint()
    scope = {"type": kind, "path": path, "root_path": "", "headers": []}

    await gateway(app, endpoint)(scope, nothing, discard)

    assert endpoint.calls == []
    assert app.paths == [path]
