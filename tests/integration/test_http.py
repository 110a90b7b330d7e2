"""The HTTP endpoints: probes, /stats behind a token, /metrics, and the OpenAPI document;
and the limits on every request body."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from tests.support.clients import RawHttp, member, raw_http, receive, receive_type, send
from tests.support.server import ServerProcess, running_server

pytestmark = pytest.mark.anyio

MAX_BODY_BYTES = Settings().max_body_bytes
BODY_TIMEOUT = 1.0
# How often a trickling client sends its next byte: far more often than BODY_TIMEOUT, so only
# a deadline on the whole body can end the request, never one on silence.
TRICKLE_INTERVAL = 0.1

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def test_health(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "healthy", "service": "websocket-service"}


async def test_ready(http: httpx.AsyncClient) -> None:
    response = await http.get("/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "reason": None,
        "broadcaster": "in-memory",
        "broadcaster_connected": True,
        "document_store": "up",
        "document_pending_bytes": 0,
    }


async def test_stats_has_no_cluster_part_without_redis(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    headers = {"Authorization": f"Bearer {server.token('ops')}"}
    body = (await http.get("/stats", headers=headers)).json()
    assert body["cluster"] is None
    assert body["instance_id"] is None


@pytest.mark.parametrize(
    "authorization", [None, "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer"]
)
async def test_stats_requires_a_valid_token(
    http: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await http.get("/stats", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_stats_lists_rooms_and_clients(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    headers = {"Authorization": f"Bearer {server.token('ops')}"}
    async with (
        member(server.ws_url("stats-a", server.token("ann"))) as (ann, _),
        member(server.ws_url("stats-a", server.token("bob"))),
        member(server.ws_url("stats-b", server.token("cat"))),
    ):
        await receive_type(ann, "user_joined")
        body = (await http.get("/stats", headers=headers)).json()
        rooms = {room["room_id"]: room for room in body["rooms"]}
        assert rooms.keys() == {"stats-a", "stats-b"}
        assert (body["total_rooms"], body["total_clients"]) == (2, 3)
        assert rooms["stats-a"]["client_count"] == 2
        for room in rooms.values():
            assert RFC3339_Z.match(room["created_at"])
            assert RFC3339_Z.match(room["last_activity"])
            assert room["last_activity"] >= room["created_at"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_count_connections_rooms_and_messages(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    before = samples((await http.get("/metrics")).text)

    def grew(name: str, message_type: str) -> float:
        key = (name, (("type", message_type),))
        return values.get(key, 0.0) - before.get(key, 0.0)

    async with (
        member(server.ws_url("metrics", server.token("ann"))) as (ann, _),
        member(server.ws_url("metrics", server.token("bob"))) as (bob, _),
    ):
        await receive_type(ann, "user_joined")
        await send(ann, "cursor_update", {"line": 1, "column": 1})
        await receive_type(bob, "cursor_update")
        await ann.send("not json")
        await receive_type(ann, "error")
        text = (await http.get("/metrics")).text
        values = samples(text)
        assert values[("websocket_active_connections", (("protocol", "json"),))] == 2
        assert values[("websocket_active_connections", (("protocol", "ywebsocket"),))] == 0
        assert values[("websocket_total_rooms", ())] == 1
        assert grew("websocket_messages_received_total", "cursor_update") == 1
        assert grew("websocket_messages_received_total", "invalid") == 1
        assert grew("websocket_messages_sent_total", "cursor_update") == 1
        assert grew("websocket_messages_sent_total", "presence_state") == 2
        assert grew("websocket_messages_sent_total", "user_joined") == 1
    await send_and_wait_closed(server)
    text = (await http.get("/metrics")).text
    after = samples(text)
    assert after[("websocket_broadcaster_info", (("backend", "memory"),))] == 1
    accepted = ("websocket_connections_total", (("protocol", "json"),))
    assert after[accepted] - before.get(accepted, 0.0) == 3  # ann, bob and the probe
    normal = ("websocket_disconnections_total", (("code", "1000"), ("protocol", "json")))
    assert after[normal] - before.get(normal, 0.0) >= 2
    assert "websocket_connection_duration_seconds_bucket" in text
    assert "http_requests_total" in text
    assert "http_request_duration_seconds" in text


async def send_and_wait_closed(server: ServerProcess) -> None:
    """A fresh member sees nobody else: the earlier connections are fully gone."""
    async with member(server.ws_url("metrics", server.token("probe"))) as (probe, state):
        assert [u["user_id"] for u in state["payload"]["users"]] == ["probe"]
        await send(probe, "ping")
        assert (await receive(probe))["type"] == "pong"


async def test_openapi_documents_every_endpoint_and_the_bearer_scheme(
    http: httpx.AsyncClient,
) -> None:
    spec = (await http.get("/openapi.json")).json()
    assert {"/health", "/ready", "/stats", "/metrics"} <= spec["paths"].keys()
    stats = spec["paths"]["/stats"]["get"]
    assert stats["security"] == [{"bearerAuth": []}]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    schema = stats["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/StatsResponse"}
    assert set(spec["components"]["schemas"]["StatsResponse"]["properties"]) == {
        "total_rooms",
        "total_clients",
        "rooms",
        "instance_id",
        "cluster",
    }
    assert "401" in stats["responses"]
    assert (await http.get("/docs")).status_code == 200


async def test_unknown_path_uses_the_error_shape(http: httpx.AsyncClient) -> None:
    response = await http.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize("path", ["/stats", "/health", "/nope"])
async def test_every_route_refuses_a_declared_oversized_body_unread(
    server: ServerProcess, path: str
) -> None:
    async with raw_http(server.port) as conn:
        await conn.send_head("POST", path, {"Content-Length": str(MAX_BODY_BYTES + 1)})
        response = await conn.response()
        assert response.status == 413
        assert response.json() == {
            "error": "payload_too_large",
            "message": f"expected at most {MAX_BODY_BYTES} bytes",
        }
        assert await conn.closed_by_server()


async def test_a_chunked_body_nobody_reads_still_ends_at_the_limit(server: ServerProcess) -> None:
    async with raw_http(server.port) as conn:
        await conn.send_head("POST", "/health", {"Transfer-Encoding": "chunked"})
        await conn.send_chunk(b"x")
        response = await conn.response()  # answered without the body: the route takes none
        assert response.status == 405
        sent = 1
        while sent <= MAX_BODY_BYTES:
            chunk = b"x" * min(64 * 1024, MAX_BODY_BYTES + 1 - sent)
            await conn.send_chunk(chunk)
            sent += len(chunk)
        # Past the limit the connection ends instead of reading on to discard.
        assert await conn.closed_by_server()


@pytest.fixture(scope="module")
def impatient() -> Iterator[ServerProcess]:
    with running_server({"BODY_TIMEOUT": f"{BODY_TIMEOUT}s"}) as running:
        yield running


async def trickle(conn: RawHttp) -> None:
    """Send a byte every TRICKLE_INTERVAL until the server stops reading."""
    try:
        while True:
            await conn.send(b" ")
            await anyio.sleep(TRICKLE_INTERVAL)  # the pace of the attack, not a wait for anything
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        return


async def test_a_trickled_body_is_answered_408_within_the_body_timeout(
    impatient: ServerProcess,
) -> None:
    token = impatient.token("svc", extra={"roles": ["service"]})
    headers = {
        "Content-Type": "application/json",
        "Content-Length": "1000",
        "Authorization": f"Bearer {token}",
    }
    async with raw_http(impatient.port) as conn, anyio.create_task_group() as tasks:
        await conn.send_head("POST", "/internal/projects/demo/events", headers)
        # The trickle never ends: an answer at all is the deadline at work.
        tasks.start_soon(trickle, conn)
        response = await conn.response()
        assert response.status == 408
        body = response.json()
        assert body["error"] == "request_timeout"
        assert await conn.closed_by_server()
        tasks.cancel_scope.cancel()
    # Bytes kept coming until the end: the deadline is on the body, not on a silence.
    received = re.fullmatch(
        rf"expected the whole body within {BODY_TIMEOUT:g} s, got (\d+) bytes of it",
        body["message"],
    )
    assert received is not None, body
    assert int(received[1]) >= 2
    refusals = [
        (entry["level"], entry["status"])
        for entry in map(json.loads, impatient.logs().splitlines())
        if entry.get("event") == "http_body_refused"
    ]
    assert ("info", 408) in refusals
    assert '"level": "error"' not in impatient.logs()


async def test_a_trickled_body_after_an_early_answer_is_dropped_within_the_body_timeout(
    impatient: ServerProcess,
) -> None:
    headers = {"Content-Type": "application/json", "Content-Length": "1000"}
    async with raw_http(impatient.port) as conn, anyio.create_task_group() as tasks:
        await conn.send_head("POST", "/internal/projects/demo/events", headers)
        tasks.start_soon(trickle, conn)
        response = await conn.response()
        assert response.status == 401  # at once, without the body
        # The rest of the body would only be read to be discarded, and the trickle never ends:
        # the server closing at all is the deadline at work.
        assert await conn.closed_by_server()
        tasks.cancel_scope.cancel()
