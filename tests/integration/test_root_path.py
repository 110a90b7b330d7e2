"""Behind a proxy that serves the service under a path prefix (ROOT_PATH): WebSockets and HTTP
both answer below it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.clients import member
from tests.support.server import ServerProcess, running_server

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server({"ROOT_PATH": "/realtime"}) as running:
        yield running


async def test_a_websocket_is_served_below_the_root_path(server: ServerProcess) -> None:
    async with member(server.ws_url("demo", server.token("alice"))) as (_, presence):
        assert presence["payload"]["users"][0]["user_id"] == "alice"


async def test_http_routes_and_their_documents_know_the_root_path(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/health")).status_code == 200
        openapi = (await http.get("/openapi.json")).json()

    assert openapi["servers"] == [{"url": "/realtime"}]
