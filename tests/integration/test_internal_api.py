"""The service-to-service API and the /stats role, against a real server."""

from __future__ import annotations

import json

import httpx
import pytest

from app.settings import Settings
from tests.support.clients import close_code, member, raw_http, receive, receive_type, send
from tests.support.server import ServerProcess, running_server

pytestmark = pytest.mark.anyio

MAX_BODY_BYTES = Settings().max_body_bytes
EVENTS = "/internal/projects/demo/events"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def service_token(server: ServerProcess) -> str:
    return server.token("compile-service", username="Compiler", extra={"roles": ["service"]})


@pytest.mark.parametrize("path", ["events", "disconnect"])
async def test_users_and_anonymous_callers_are_refused(
    server: ServerProcess, http: httpx.AsyncClient, path: str
) -> None:
    body = {"type": "compilation_started", "payload": {}} if path == "events" else {"user_id": "x"}
    url = f"/internal/projects/demo/{path}"
    anonymous = await http.post(url, json=body)
    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "unauthorized")
    user = await http.post(url, json=body, headers=bearer(server.token("ann")))
    assert (user.status_code, user.json()["error"]) == (403, "forbidden")
    other_role = await http.post(
        url, json=body, headers=bearer(server.token("ann", extra={"roles": ["admin"]}))
    )
    assert other_role.status_code == 403


async def test_an_anonymous_caller_is_refused_before_its_body_is_sent(
    server: ServerProcess,
) -> None:
    async with raw_http(server.port) as conn:
        await conn.send_head(
            "POST", EVENTS, {"Content-Type": "application/json", "Content-Length": "60"}
        )
        # Not a byte of the body: the answer must not need it.
        response = await conn.response()
        assert (response.status, response.json()["error"]) == (401, "unauthorized")


async def test_an_anonymous_chunked_body_is_refused_after_its_first_chunk(
    server: ServerProcess,
) -> None:
    async with raw_http(server.port) as conn:
        await conn.send_head(
            "POST", EVENTS, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        )
        # The first 64 KiB of what would be 64 MiB.
        await conn.send_chunk(b"[" + b"0," * 32767)
        response = await conn.response()
        assert (response.status, response.json()["error"]) == (401, "unauthorized")


@pytest.mark.parametrize("authenticated", [False, True])
async def test_a_declared_oversized_body_is_refused_unread(
    server: ServerProcess, authenticated: bool
) -> None:
    headers = {"Content-Type": "application/json", "Content-Length": str(64 * 1024 * 1024)}
    if authenticated:
        headers["Authorization"] = f"Bearer {service_token(server)}"
    async with raw_http(server.port) as conn:
        await conn.send_head("POST", EVENTS, headers)
        response = await conn.response()
        assert response.status == 413
        assert response.json() == {
            "error": "payload_too_large",
            "message": f"expected at most {MAX_BODY_BYTES} bytes",
        }
        assert await conn.closed_by_server()


async def test_a_services_chunked_body_is_refused_once_it_passes_the_limit(
    server: ServerProcess,
) -> None:
    headers = {
        "Content-Type": "application/json",
        "Transfer-Encoding": "chunked",
        "Authorization": f"Bearer {service_token(server)}",
    }
    async with raw_http(server.port) as conn:
        await conn.send_head("POST", EVENTS, headers)
        sent = 0
        while sent <= MAX_BODY_BYTES:
            # The last chunk ends one byte past the limit: no final chunk follows, so only a
            # running count can refuse it.
            chunk = b" " * min(64 * 1024, MAX_BODY_BYTES + 1 - sent)
            await conn.send_chunk(chunk)
            sent += len(chunk)
        response = await conn.response()
        assert (response.status, response.json()["error"]) == (413, "payload_too_large")
        assert await conn.closed_by_server()
    assert '"level": "error"' not in server.logs()


async def test_a_services_chunked_body_within_the_limit_is_accepted(
    server: ServerProcess,
) -> None:
    headers = {
        "Content-Type": "application/json",
        "Transfer-Encoding": "chunked",
        "Authorization": f"Bearer {service_token(server)}",
    }
    body = json.dumps({"type": "compilation_started", "payload": {"log": "x" * 100_000}})
    async with raw_http(server.port) as conn:
        await conn.send_head("POST", EVENTS, headers)
        for start in range(0, len(body), 30_000):
            await conn.send_chunk(body[start : start + 30_000].encode())
        await conn.send(b"0\r\n\r\n")
        response = await conn.response()
        assert (response.status, response.json()) == (202, {"local_recipients": 0})


async def test_service_event_reaches_every_connection_of_the_project(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    async with (
        member(server.ws_url("compile", server.token("ann"))) as (ann, _),
        member(server.ws_url("compile", server.token("bob"))) as (bob, _),
        member(server.ws_url("elsewhere", server.token("cat"))) as (cat, _),
    ):
        await receive_type(ann, "user_joined")
        event = {
            "type": "compilation_completed",
            "payload": {"compilation_id": "c9", "pdf_url": "/c9.pdf", "duration_ms": 812},
        }
        response = await http.post(
            "/internal/projects/compile/events", json=event, headers=bearer(service_token(server))
        )
        assert response.status_code == 202
        assert response.json() == {"local_recipients": 2}
        for ws in (ann, bob):
            got = await receive_type(ws, "compilation_completed")
            assert got["payload"] == event["payload"]
            assert (got["user_id"], got["username"], got["client_id"]) == (
                "compile-service",
                "Compiler",
                "service",
            )
        await send(cat, "ping")
        await receive_type(cat, "pong")  # the other project got nothing before its pong


@pytest.mark.parametrize(
    ("project", "body", "status", "code"),
    [
        ("bad id", {"type": "compilation_started"}, 400, "invalid_project_id"),
        ("demo", {"type": "cursor_update", "payload": {}}, 422, "invalid_request"),
        ("demo", {"type": "compilation_started", "payload": [1]}, 422, "invalid_request"),
        ("demo", {"type": "compilation_started", "extra": 1}, 422, "invalid_request"),
    ],
)
async def test_bad_event_requests(
    server: ServerProcess,
    http: httpx.AsyncClient,
    project: str,
    body: dict[str, object],
    status: int,
    code: str,
) -> None:
    response = await http.post(
        f"/internal/projects/{project}/events", json=body, headers=bearer(service_token(server))
    )
    assert (response.status_code, response.json()["error"]) == (status, code)


@pytest.mark.parametrize("number", ["NaN", "-Infinity", "1e999"])
async def test_event_with_a_number_json_cannot_carry_is_refused(
    server: ServerProcess, http: httpx.AsyncClient, number: str
) -> None:
    # Python's parser reads these as floats that would be relayed as null.
    body = '{"type": "compilation_completed", "payload": {"duration_ms": ' + number + "}}"
    response = await http.post(
        "/internal/projects/demo/events",
        content=body,
        headers={**bearer(service_token(server)), "Content-Type": "application/json"},
    )
    assert (response.status_code, response.json()["error"]) == (422, "invalid_request")


async def test_disconnect_closes_the_users_connections_with_4003(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    async with (
        member(server.ws_url("revoke", server.token("ann"))) as (tab1, _),
        member(server.ws_url("revoke", server.token("ann"))) as (tab2, _),
        member(server.ws_url("revoke", server.token("bob"))) as (bob, _),
    ):
        await receive_type(tab1, "user_joined")
        await receive_type(tab2, "user_joined")
        response = await http.post(
            "/internal/projects/revoke/disconnect",
            json={"user_id": "ann"},
            headers=bearer(service_token(server)),
        )
        assert response.json() == {"closed_locally": 2}
        for tab in (tab1, tab2):
            assert (await receive_type(tab, "error"))["payload"]["code"] == "access_revoked"
            assert await close_code(tab) == 4003
        assert (await receive_type(bob, "user_left"))["user_id"] == "ann"
        await send(bob, "ping")
        assert (await receive(bob))["type"] == "pong"


async def test_openapi_documents_the_internal_api_and_its_scheme(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    for path in (
        "/internal/projects/{project_id}/events",
        "/internal/projects/{project_id}/disconnect",
    ):
        operation = spec["paths"][path]["post"]
        assert operation["security"] == [{"serviceAuth": []}]
        assert {"202", "401", "403"} <= operation["responses"].keys()


async def test_stats_can_require_a_role() -> None:
    with running_server({"STATS_REQUIRED_ROLE": "ops"}) as server:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            plain = await http.get("/stats", headers=bearer(server.token("ann")))
            assert (plain.status_code, plain.json()["error"]) == (403, "forbidden")
            ops = server.token("ann", extra={"roles": ["ops"]})
            assert (await http.get("/stats", headers=bearer(ops))).status_code == 200


async def test_an_event_with_text_no_utf8_can_carry_is_refused(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    # Valid JSON that Python's parser takes: a lone surrogate, which cannot be relayed.
    body = '{"type": "document_update", "payload": {"x": "\\ud800"}}'
    response = await http.post(
        "/internal/projects/p/events",
        content=body,
        headers={**bearer(service_token(server)), "Content-Type": "application/json"},
    )

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
