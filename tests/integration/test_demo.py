"""The /demo page and its development-token endpoint, over plain HTTP against real servers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from jose import jwt
from websockets.exceptions import InvalidStatus

from tests.support.clients import member, open_ws
from tests.support.server import ServerProcess, running_server

pytestmark = pytest.mark.anyio

DEMO_FILES = {
    "/demo": "text/html",
    "/demo/demo.js": "text/javascript",
    "/demo/demo.css": "text/css",
}


async def test_development_serves_the_page_and_its_files(http: httpx.AsyncClient) -> None:
    for path, media_type in DEMO_FILES.items():
        response = await http.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(media_type)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
    page = (await http.get("/demo")).text
    assert 'src="/demo/demo.js"' in page
    assert 'data-testid="text"' in page
    # Nothing from elsewhere: the page must work offline and under its own CSP.
    assert "http://" not in page
    assert "https://" not in page


async def test_the_demo_stays_out_of_the_openapi_document(http: httpx.AsyncClient) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert not [path for path in paths if path.startswith("/demo")]


async def test_a_minted_token_joins_its_project_with_the_bearer_subprotocol(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    response = await http.post("/demo/token", json={"user": "demo.user-1", "project": "p_1"})
    assert response.status_code == 200
    body = response.json()
    claims = jwt.get_unverified_claims(body["token"])
    assert (claims["user_id"], claims["projects"]) == ("demo.user-1", ["p_1"])
    assert body["expires_at"] == claims["exp"]
    token = body["token"]
    async with member(server.ws_url("p_1"), subprotocols=["bearer", token]) as (ws, state):
        assert ws.subprotocol == "bearer"
        assert state["user_id"] == "demo.user-1"
        assert [u["username"] for u in state["payload"]["users"]] == ["demo.user-1"]
    # Scoped to the one project it was asked for.
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(server.ws_url("other"), subprotocols=["bearer", token]):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"user": "", "project": "p"}, "invalid_user"),
        ({"user": "x" * 65, "project": "p"}, "invalid_user"),
        ({"user": "al ice", "project": "p"}, "invalid_user"),
        ({"user": "alice\n", "project": "p"}, "invalid_user"),
        ({"user": 7, "project": "p"}, "invalid_user"),
        ({"project": "p"}, "invalid_user"),
        ({"user": "alice", "project": ""}, "invalid_project_id"),
        ({"user": "alice", "project": "x" * 129}, "invalid_project_id"),
        ({"user": "alice", "project": "a/b"}, "invalid_project_id"),
        ({"user": "alice"}, "invalid_project_id"),
        (["alice", "p"], "invalid_json"),
        ("alice", "invalid_json"),
    ],
)
async def test_the_token_endpoint_validates_its_input(
    http: httpx.AsyncClient, body: Any, code: str
) -> None:
    response = await http.post("/demo/token", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == code
    assert response.json()["message"]


async def test_the_token_endpoint_refuses_what_is_not_json(http: httpx.AsyncClient) -> None:
    response = await http.post("/demo/token", content=b"user=alice&project=p")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_json")
    response = await http.post("/demo/token", content=b'{"user": "' + b"a" * 5000 + b'"}')
    assert (response.status_code, response.json()["error"]) == (413, "payload_too_large")


async def test_production_has_no_demo() -> None:
    with running_server({"ENVIRONMENT": "production"}) as server:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            for path in DEMO_FILES:
                response = await http.get(path)
                assert (response.status_code, response.json()["error"]) == (404, "not_found")
            token = await http.post("/demo/token", json={"user": "alice", "project": "p"})
            assert token.status_code == 404
            # Indistinguishable from a path that never existed.
            assert token.json() == (await http.post("/nope", json={})).json()


async def test_demo_enabled_in_production_serves_the_page_but_never_mints_tokens() -> None:
    with running_server({"ENVIRONMENT": "production", "DEMO_ENABLED": "true"}) as server:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            for path in DEMO_FILES:
                assert (await http.get(path)).status_code == 200, path
            token = await http.post("/demo/token", json={"user": "alice", "project": "p"})
            assert (token.status_code, token.json()["error"]) == (404, "not_found")
