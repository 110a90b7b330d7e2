"""The backend API of server-side documents, against a real server with a SQLite store."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pycrdt import Doc, Text, TransactionEvent
from websockets.asyncio.client import ClientConnection

from tests.support.clients import member, receive, send
from tests.support.server import ServerProcess, running_server

pytestmark = pytest.mark.anyio

TEXT_NAME = "content"
# The smallest MAX_DOCUMENT_BYTES allowed, with bodies large enough to pass it in one request.
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = Path(tmp_path_factory.mktemp("documents")) / "d.sqlite3"
    env = {
        "DOCUMENT_STORE": f"sqlite:///{store}",
        "MAX_DOCUMENT_BYTES": str(MAX_DOCUMENT_BYTES),
        "MAX_BODY_BYTES": str(MAX_DOCUMENT_BYTES + 1024 * 1024),
    }
    with running_server(env) as running:
        yield running


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def service(server: ServerProcess) -> dict[str, str]:
    return bearer(
        server.token("project-service", username="Projects", extra={"roles": ["service"]})
    )


def url(project: str, document_id: str | None = None) -> str:
    base = f"/internal/projects/{project}/documents"
    return base if document_id is None else f"{base}/{document_id}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def text_of(*updates: bytes) -> str:
    doc: Doc[Text] = Doc()
    for update in updates:
        doc.apply_update(update)
    return str(doc.get(TEXT_NAME, type=Text))


def edit(state: bytes, change: Callable[[Text], object]) -> bytes:
    """The update a client holding `state` makes with `change(text)`."""
    doc: Doc[Text] = Doc()
    doc.apply_update(state)
    made: list[bytes] = []

    def capture(event: TransactionEvent) -> None:
        made.append(event.update)

    doc.observe(capture)
    change(doc.get(TEXT_NAME, type=Text))
    assert len(made) == 1
    return made[0]


async def seed(
    http: httpx.AsyncClient, server: ServerProcess, project: str, doc: str, text: str
) -> None:
    response = await http.put(url(project, doc), json={"text": text}, headers=service(server))
    assert (response.status_code, response.json()) == (201, {"document_id": doc})


async def read(
    http: httpx.AsyncClient, server: ServerProcess, project: str, doc: str
) -> dict[str, Any]:
    response = await http.get(url(project, doc), headers=service(server))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def next_of(ws: ClientConnection, message_type: str) -> dict[str, Any]:
    """The next message of this type, skipping presence (a second tab's user_joined)."""
    while True:
        message = await receive(ws)
        if message["type"] == message_type:
            return message
        assert message["type"] in ("user_joined", "user_left"), message


async def open_document(ws: ClientConnection, document_id: str) -> bytes:
    """Run a client's sync step from nothing; the state the server sent (its step 2)."""
    payload = {"document_id": document_id, "state_vector": b64(b"\x00")}
    await send(ws, "yjs_sync_step1", payload)
    step2 = await next_of(ws, "yjs_sync_step2")
    step1 = await next_of(ws, "yjs_sync_step1")
    assert step2["payload"]["document_id"] == step1["payload"]["document_id"] == document_id
    return base64.b64decode(step2["payload"]["update"])


ENDPOINTS = [
    ("GET", url("auth"), None),
    ("GET", url("auth", "main.tex"), None),
    ("POST", url("auth", "main.tex") + "/updates", {"update": b64(b"\x00\x00")}),
    ("PUT", url("auth", "main.tex"), {"text": "x"}),
    ("DELETE", url("auth", "main.tex"), None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_users_and_anonymous_callers_are_refused(
    server: ServerProcess, http: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    anonymous = await http.request(method, path, json=body)
    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "unauthorized")
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    user = await http.request(method, path, json=body, headers=bearer(server.token("ann")))
    assert (user.status_code, user.json()["error"]) == (403, "forbidden")
    # Nothing happened on their behalf.
    listing = await http.get(url("auth"), headers=service(server))
    assert listing.json() == {"documents": []}


async def test_a_seeded_document_reads_back_as_text_and_as_an_update(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    text = "\\documentclass{article}\n% é, 数学, 🙂\n\\begin{document}\n"
    await seed(http, server, "seed", "main.tex", text)
    body = await read(http, server, "seed", "main.tex")
    assert body["document_id"] == "main.tex"
    assert body["text"] == text
    assert text_of(base64.b64decode(body["update"])) == text

    again = await http.put(url("seed", "main.tex"), json={"text": "other"}, headers=service(server))
    assert (again.status_code, again.json()["error"]) == (409, "document_exists")
    assert (await read(http, server, "seed", "main.tex"))["text"] == text


async def test_an_empty_document_can_be_created_once(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    await seed(http, server, "empty", "blank.tex", "")
    assert (await read(http, server, "empty", "blank.tex"))["text"] == ""
    again = await http.put(url("empty", "blank.tex"), json={"text": "x"}, headers=service(server))
    assert (again.status_code, again.json()["error"]) == (409, "document_exists")


async def test_text_that_is_not_unicode_is_refused(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    # Valid JSON that Python's parser turns into a lone surrogate, which yrs cannot hold.
    response = await http.put(
        url("surrogate", "main.tex"),
        content='{"text": "a\\ud800b"}',
        headers={**service(server), "Content-Type": "application/json"},
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_text")
    missing = await http.get(url("surrogate", "main.tex"), headers=service(server))
    assert missing.status_code == 404


async def test_concurrent_creations_of_one_document_create_it_once(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    statuses: list[int] = []

    async def create(text: str) -> None:
        response = await http.put(
            url("race", "main.tex"), json={"text": text}, headers=service(server)
        )
        statuses.append(response.status_code)

    async with anyio.create_task_group() as tasks:
        for index in range(5):
            tasks.start_soon(create, f"version {index}")
    assert sorted(statuses) == [201, 409, 409, 409, 409]
    assert (await read(http, server, "race", "main.tex"))["text"].startswith("version ")


async def test_the_list_shows_every_stored_document(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    assert (await http.get(url("listing"), headers=service(server))).json() == {"documents": []}
    before = time.time()
    await seed(http, server, "listing", "b.tex", "bee")
    await seed(http, server, "listing", "a.tex", "a")
    await seed(http, server, "other-project", "c.tex", "c")
    response = await http.get(url("listing"), headers=service(server))
    assert response.status_code == 200
    documents = response.json()["documents"]
    assert [d["document_id"] for d in documents] == ["a.tex", "b.tex"]
    for document in documents:
        assert set(document) == {"document_id", "stored_bytes", "updated_at", "resident"}
        assert document["stored_bytes"] > 0
        # RFC 3339 with an explicit offset.
        updated = datetime.fromisoformat(document["updated_at"])
        assert updated.tzinfo is not None
        assert before - 1 <= updated.timestamp() <= time.time() + 1
        assert isinstance(document["resident"], bool)


async def test_an_applied_update_reaches_a_connected_client_live(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    await seed(http, server, "live", "main.tex", "Hello")
    async with member(server.ws_url("live", server.token("ann"))) as (ws, _):
        state = await open_document(ws, "main.tex")
        assert text_of(state) == "Hello"
        update = edit(state, lambda text: text.insert(5, ", world"))
        response = await http.post(
            url("live", "main.tex") + "/updates",
            json={"update": b64(update)},
            headers=service(server),
        )
        assert (response.status_code, response.json()) == (200, {"document_id": "main.tex"})
        relayed = await next_of(ws, "yjs_update")
        assert relayed["payload"] == {
            "document_id": "main.tex",
            "update": b64(update),
            "origin": "api",
        }
        assert (relayed["user_id"], relayed["client_id"]) == ("project-service", "service")
        assert text_of(state, base64.b64decode(relayed["payload"]["update"])) == "Hello, world"
    assert (await read(http, server, "live", "main.tex"))["text"] == "Hello, world"


async def test_seeding_a_document_a_client_has_open_reaches_it(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    async with member(server.ws_url("opened", server.token("ann"))) as (ws, _):
        # Opened, so loaded on the server, but never written: it does not exist yet.
        assert text_of(await open_document(ws, "new.tex")) == ""
        missing = await http.get(url("opened", "new.tex"), headers=service(server))
        assert (missing.status_code, missing.json()["error"]) == (404, "document_not_found")
        assert (await http.get(url("opened"), headers=service(server))).json()["documents"] == []

        await seed(http, server, "opened", "new.tex", "seeded")
        relayed = await next_of(ws, "yjs_update")
        assert relayed["payload"]["origin"] == "api"
        assert text_of(base64.b64decode(relayed["payload"]["update"])) == "seeded"
        listing = (await http.get(url("opened"), headers=service(server))).json()["documents"]
        assert [(d["document_id"], d["resident"]) for d in listing] == [("new.tex", True)]


async def test_a_clients_edit_is_visible_in_the_next_read(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    await seed(http, server, "typing", "main.tex", "abc")
    async with member(server.ws_url("typing", server.token("ann"))) as (ws, _):
        state = await open_document(ws, "main.tex")
        update = edit(state, lambda text: text.insert(3, "def"))
        await send(ws, "yjs_update", {"document_id": "main.tex", "update": b64(update)})
        ack = await next_of(ws, "yjs_ack")
        assert ack["payload"] == {"document_id": "main.tex"}
        assert (await read(http, server, "typing", "main.tex"))["text"] == "abcdef"


@pytest.mark.parametrize(
    ("case", "body", "status", "code"),
    [
        ("not-base64", {"update": "not base64!"}, 400, "invalid_update"),
        ("empty", {"update": ""}, 400, "invalid_update"),
        # Decodes as a header, then runs out of bytes: refused by applying it.
        ("truncated", {"update": b64(b"\x01\x01\x02")}, 400, "invalid_update"),
        # Claims more clients than it has bytes: refused before yrs sees it.
        ("implausible", {"update": b64(b"\xff\xff\xff\xff\x0f")}, 400, "invalid_update"),
        ("extra-key", {"update": b64(b"\x00\x00"), "extra": 1}, 422, "invalid_request"),
        ("no-update", {}, 422, "invalid_request"),
    ],
)
async def test_an_invalid_update_is_refused_and_changes_nothing(
    server: ServerProcess,
    http: httpx.AsyncClient,
    case: str,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    project = f"invalid-{case}"
    await seed(http, server, project, "main.tex", "kept")
    before = await read(http, server, project, "main.tex")
    response = await http.post(
        url(project, "main.tex") + "/updates", json=body, headers=service(server)
    )
    assert (response.status_code, response.json()["error"]) == (status, code)
    assert await read(http, server, project, "main.tex") == before


async def test_an_empty_update_changes_nothing(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    await seed(http, server, "noop", "main.tex", "same")
    before = await read(http, server, "noop", "main.tex")
    response = await http.post(
        url("noop", "main.tex") + "/updates",
        json={"update": b64(b"\x00\x00")},
        headers=service(server),
    )
    assert response.status_code == 200
    assert await read(http, server, "noop", "main.tex") == before


async def test_an_update_creates_a_missing_document(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    update = edit(b"\x00\x00", lambda text: text.insert(0, "from nothing"))
    response = await http.post(
        url("created", "fresh.tex") + "/updates",
        json={"update": b64(update)},
        headers=service(server),
    )
    assert response.status_code == 200
    assert (await read(http, server, "created", "fresh.tex"))["text"] == "from nothing"


async def test_a_deleted_document_is_gone(server: ServerProcess, http: httpx.AsyncClient) -> None:
    await seed(http, server, "deleting", "main.tex", "doomed")
    await seed(http, server, "deleting", "kept.tex", "kept")
    deleted = await http.delete(url("deleting", "main.tex"), headers=service(server))
    assert (deleted.status_code, deleted.content) == (204, b"")
    gone = await http.get(url("deleting", "main.tex"), headers=service(server))
    assert (gone.status_code, gone.json()["error"]) == (404, "document_not_found")
    again = await http.delete(url("deleting", "main.tex"), headers=service(server))
    assert (again.status_code, again.json()["error"]) == (404, "document_not_found")
    listing = (await http.get(url("deleting"), headers=service(server))).json()["documents"]
    assert [d["document_id"] for d in listing] == ["kept.tex"]
    # Its id is free again.
    await seed(http, server, "deleting", "main.tex", "reborn")
    assert (await read(http, server, "deleting", "main.tex"))["text"] == "reborn"


async def test_a_document_a_client_has_open_can_be_deleted(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    await seed(http, server, "deleting-open", "main.tex", "open")
    async with member(server.ws_url("deleting-open", server.token("ann"))) as (ws, _):
        await open_document(ws, "main.tex")
        deleted = await http.delete(url("deleting-open", "main.tex"), headers=service(server))
        assert deleted.status_code == 204
        gone = await http.get(url("deleting-open", "main.tex"), headers=service(server))
        assert gone.status_code == 404
        told = await next_of(ws, "yjs_document_deleted")
        assert told["payload"] == {"document_id": "main.tex"}

        # An edit made against the deleted document is refused, not stored into a new one.
        change = edit(b"\x00\x00", lambda text: text.insert(0, " world"))
        await send(ws, "yjs_update", {"document_id": "main.tex", "update": b64(change)})
        refused = await next_of(ws, "error")
        assert refused["payload"]["code"] == "document_deleted"
        still_gone = await http.get(url("deleting-open", "main.tex"), headers=service(server))
        assert still_gone.status_code == 404

        # A new sync step starts it again, empty.
        assert text_of(await open_document(ws, "main.tex")) == ""


@pytest.mark.parametrize(
    "document_id", ["chapters/intro.tex", "a/b/c/d.tex", "figures/updates", "updates"]
)
async def test_document_ids_may_be_paths(
    server: ServerProcess, http: httpx.AsyncClient, document_id: str
) -> None:
    project = "paths-" + document_id.replace("/", "-")
    await seed(http, server, project, document_id, "v1")
    state = base64.b64decode((await read(http, server, project, document_id))["update"])
    update = edit(state, lambda text: text.insert(2, "+"))
    # Ends in /updates whatever the id ends in: the last segment is the action.
    response = await http.post(
        url(project, document_id) + "/updates",
        json={"update": b64(update)},
        headers=service(server),
    )
    assert (response.status_code, response.json()) == (200, {"document_id": document_id})
    body = await read(http, server, project, document_id)
    assert (body["document_id"], body["text"]) == (document_id, "v1+")
    listing = (await http.get(url(project), headers=service(server))).json()["documents"]
    assert [d["document_id"] for d in listing] == [document_id]
    assert (
        await http.delete(url(project, document_id), headers=service(server))
    ).status_code == 204


@pytest.mark.parametrize(
    ("path", "code"),
    [
        (url("paths", "x" * 257), "invalid_document_id"),
        (url("paths", ""), "invalid_document_id"),
        (url("bad!project", "main.tex"), "invalid_project_id"),
        (url("bad!project"), "invalid_project_id"),
    ],
)
async def test_invalid_ids_are_refused(
    server: ServerProcess, http: httpx.AsyncClient, path: str, code: str
) -> None:
    response = await http.get(path, headers=service(server))
    assert (response.status_code, response.json()["error"]) == (400, code)


async def test_a_document_id_of_256_characters_is_accepted(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    document_id = "d/" + "x" * 254
    await seed(http, server, "long", document_id, "long")
    assert (await read(http, server, "long", document_id))["text"] == "long"


async def test_the_state_is_served_as_bytes_on_request(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    await seed(http, server, "binary", "main.tex", "bytes")
    state = base64.b64decode((await read(http, server, "binary", "main.tex"))["update"])
    headers = service(server)
    for response in (
        await http.get(url("binary", "main.tex"), params={"format": "binary"}, headers=headers),
        await http.get(
            url("binary", "main.tex"), headers={**headers, "Accept": "application/octet-stream"}
        ),
        await http.get(
            url("binary", "main.tex"),
            headers={**headers, "Accept": "application/json;q=0.5, application/octet-stream"},
        ),
    ):
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert "Accept" in response.headers["Vary"].split(", ")
        assert response.content == state
        assert text_of(response.content) == "bytes"
    for response in (
        await http.get(url("binary", "main.tex"), headers={**headers, "Accept": "*/*"}),
        await http.get(
            url("binary", "main.tex"),
            params={"format": "json"},
            headers={**headers, "Accept": "application/octet-stream"},
        ),
    ):
        assert response.headers["Content-Type"] == "application/json"
        assert "Accept" in response.headers["Vary"].split(", ")
        assert response.json()["text"] == "bytes"
    bad = await http.get(url("binary", "main.tex"), params={"format": "xml"}, headers=headers)
    assert (bad.status_code, bad.json()["error"]) == (422, "invalid_request")
    missing = await http.get(
        url("binary", "nope.tex"), params={"format": "binary"}, headers=headers
    )
    assert (missing.status_code, missing.json()["error"]) == (404, "document_not_found")


async def test_a_document_past_max_document_bytes_is_refused(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    response = await http.put(
        url("huge", "main.tex"),
        json={"text": "x" * (MAX_DOCUMENT_BYTES + 1)},
        headers=service(server),
    )
    assert (response.status_code, response.json()["error"]) == (413, "document_too_large")
    missing = await http.get(url("huge", "main.tex"), headers=service(server))
    assert missing.status_code == 404


async def test_openapi_documents_every_endpoint_and_status(http: httpx.AsyncClient) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    documents = "/internal/projects/{project_id}/documents"
    document = documents + "/{document_id}"
    # Every status the route can answer; 422 is FastAPI's own, given the service's error shape.
    expected = {
        (documents, "get"): "200 400 401 403 422 503",
        (document, "get"): "200 400 401 403 404 422 503",
        (document + "/updates", "post"): "200 400 401 403 404 408 413 422 503",
        (document, "put"): "201 400 401 403 408 409 413 422 503",
        (document, "delete"): "204 400 401 403 404 422 503",
    }
    for (path, method), statuses in expected.items():
        operation = paths[path][method]
        assert operation["security"] == [{"serviceAuth": []}]
        assert set(operation["responses"]) == set(statuses.split()), (path, method)
        for status, response in operation["responses"].items():
            if status >= "400":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
    assert set(paths[document]["get"]["responses"]["200"]["content"]) == {
        "application/json",
        "application/octet-stream",
    }
