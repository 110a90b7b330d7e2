"""The /demo page and its development-token endpoint, over plain HTTP against real servers.

/demo is the collaborative editor when its bundle (DEMO_BUNDLE) exists, the classic page
otherwise: each server here says which bundle it has, so a bundle `make run` left in the
checkout changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
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
    "/demo/classic": "text/html",
    "/demo/demo.js": "text/javascript",
    "/demo/demo.css": "text/css",
}
# Stands in for esbuild's output: what matters here is which page and script are served.
FAKE_BUNDLE = b"/* the editor bundle */ document.body.dataset.loaded = 'yes';\n"


@pytest.fixture(scope="module")
def missing_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("no-bundle") / "editor.js"


@pytest.fixture(scope="module")
def server(missing_bundle: Path) -> Iterator[ServerProcess]:
    # No bundle: the machine without Node.js.
    with running_server({"DEMO_BUNDLE": str(missing_bundle)}) as running:
        yield running


@pytest.fixture(scope="module")
def bundled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    bundle = tmp_path_factory.mktemp("bundle") / "editor.js"
    bundle.write_bytes(FAKE_BUNDLE)
    with running_server({"DEMO_BUNDLE": str(bundle)}) as running:
        yield running


def assert_demo_headers(response: httpx.Response, media_type: str) -> None:
    assert response.status_code == 200, response.request.url
    assert response.headers["content-type"].startswith(media_type)
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "connect-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_development_serves_the_page_and_its_files(http: httpx.AsyncClient) -> None:
    for path, media_type in DEMO_FILES.items():
        assert_demo_headers(await http.get(path), media_type)
    page = (await http.get("/demo")).text
    assert 'src="/demo/demo.js"' in page
    assert 'data-testid="text"' in page
    # Nothing from elsewhere: the page must work offline and under its own CSP.
    assert "http://" not in page
    assert "https://" not in page


async def test_without_the_bundle_the_demo_is_the_classic_page(http: httpx.AsyncClient) -> None:
    classic = await http.get("/demo/classic")
    assert (await http.get("/demo")).content == classic.content
    assert 'src="/demo/demo.js"' in classic.text
    editor = await http.get("/demo/editor.js")
    assert (editor.status_code, editor.json()["error"]) == (404, "not_found")


async def test_with_the_bundle_the_demo_is_the_yjs_editor(bundled_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=bundled_server.http_url) as http:
        page = await http.get("/demo")
        assert_demo_headers(page, "text/html")
        assert 'src="/demo/editor.js"' in page.text
        assert 'src="/demo/demo.js"' not in page.text
        for testid in ("project", "document", "user", "status", "synced", "presence", "text"):
            assert f'data-testid="{testid}"' in page.text, testid
        assert "http://" not in page.text
        assert "https://" not in page.text
        script = await http.get("/demo/editor.js")
        assert_demo_headers(script, "text/javascript")
        assert script.content == FAKE_BUNDLE
        # The classic page stays one link away, with its own script.
        classic = await http.get("/demo/classic")
        assert 'src="/demo/demo.js"' in classic.text
        assert 'href="/demo/classic"' in page.text


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


async def test_production_has_no_demo(tmp_path: Path) -> None:
    bundle = tmp_path / "editor.js"
    bundle.write_bytes(FAKE_BUNDLE)
    env = {"ENVIRONMENT": "production", "DEMO_BUNDLE": str(bundle)}
    with running_server(env) as server:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            for path in [*DEMO_FILES, "/demo/editor.js"]:
                response = await http.get(path)
                assert (response.status_code, response.json()["error"]) == (404, "not_found")
            token = await http.post("/demo/token", json={"user": "alice", "project": "p"})
            assert token.status_code == 404
            # Indistinguishable from a path that never existed.
            assert token.json() == (await http.post("/nope", json={})).json()


async def test_demo_enabled_in_production_serves_the_page_but_never_mints_tokens(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "editor.js"
    bundle.write_bytes(FAKE_BUNDLE)
    env = {"ENVIRONMENT": "production", "DEMO_ENABLED": "true", "DEMO_BUNDLE": str(bundle)}
    with running_server(env) as server:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            for path in [*DEMO_FILES, "/demo/editor.js"]:
                assert (await http.get(path)).status_code == 200, path
            token = await http.post("/demo/token", json={"user": "alice", "project": "p"})
            assert (token.status_code, token.json()["error"]) == (404, "not_found")
