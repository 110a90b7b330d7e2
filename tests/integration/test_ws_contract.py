"""The WebSocket contract against a real server: admission, relay, errors, presence, ping."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

import anyio
import httpx
import pytest
from jose import jwt
from websockets.exceptions import InvalidStatus

from tests.support.clients import (
    RawClient,
    member,
    open_ws,
    pong_after_acks,
    receive,
    receive_type,
    send,
)
from tests.support.server import ServerProcess
from tests.support.waiting import eventually
from tests.support.yjs import b64, typed_update

pytestmark = pytest.mark.anyio

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def rejection(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(url, **kwargs):
            pass
    response = info.value.response
    return response.status_code, json.loads(response.body or b"{}")


def unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


# Admission


@pytest.mark.parametrize("project", ["a%20b", "a" * 129, "a/b", "", "caf%C3%A9", "x;y"])
async def test_invalid_project_id_is_refused_with_400(server: ServerProcess, project: str) -> None:
    status, body = await rejection(server.ws_url(project, server.token("alice")))
    assert status == 400
    assert body["error"] == "invalid_project_id"
    assert body["message"]


async def test_longest_valid_project_id_is_accepted(server: ServerProcess) -> None:
    project = "A-z_0." + "a" * 122
    async with member(server.ws_url(project, server.token("alice"))) as (_, state):
        assert state["payload"]["users"][0]["user_id"] == "alice"


def _bad_tokens(server: ServerProcess) -> dict[str, str]:
    now = int(time.time())
    secret = server.env["JWT_SECRET"]
    return {
        "malformed": "not-a-jwt",
        "bad signature": server.token("alice")[:-4] + "AAAA",
        "other secret": jwt.encode({"sub": "a", "exp": now + 60}, "another-secret" * 3, "HS256"),
        "alg none": unsigned({"sub": "alice", "exp": now + 60}),
        "alg HS512": jwt.encode({"sub": "alice", "exp": now + 60}, secret, algorithm="HS512"),
        "expired beyond leeway": jwt.encode({"sub": "alice", "exp": now - 60}, secret, "HS256"),
        "not yet valid": jwt.encode(
            {"sub": "alice", "exp": now + 600, "nbf": now + 300}, secret, "HS256"
        ),
        "missing exp": jwt.encode({"sub": "alice"}, secret, "HS256"),
        "no user": jwt.encode({"exp": now + 60}, secret, "HS256"),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "malformed",
        "bad signature",
        "other secret",
        "alg none",
        "alg HS512",
        "expired beyond leeway",
        "not yet valid",
        "missing exp",
        "no user",
    ],
)
async def test_bad_token_is_refused_with_401(server: ServerProcess, kind: str) -> None:
    token = _bad_tokens(server)[kind]
    status, body = await rejection(server.ws_url("demo", token))
    assert (status, body["error"]) == (401, "unauthorized")


async def test_missing_token_is_refused_with_401(server: ServerProcess) -> None:
    status, body = await rejection(server.ws_url("demo"))
    assert (status, body["error"]) == (401, "unauthorized")


async def test_expired_token_within_leeway_is_accepted(server: ServerProcess) -> None:
    token = jwt.encode(
        {"sub": "late", "exp": int(time.time()) - 3}, server.env["JWT_SECRET"], "HS256"
    )
    async with member(server.ws_url("leeway", token)) as (_, state):
        assert state["user_id"] == "late"


async def test_token_in_authorization_header_is_accepted(server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {server.token('hdr')}"}
    async with member(server.ws_url("header"), additional_headers=headers) as (_, state):
        assert state["user_id"] == "hdr"


@pytest.mark.parametrize(
    "claims",
    [{"projects": ["other", "more"]}, {"project_id": "other"}],
    ids=["projects", "project_id"],
)
async def test_project_outside_token_scope_is_refused_with_403(
    server: ServerProcess, claims: dict[str, Any]
) -> None:
    token = server.token("alice", extra=claims)
    status, body = await rejection(server.ws_url("demo", token))
    assert (status, body["error"]) == (403, "forbidden")
    async with member(server.ws_url("other", token)) as (_, state):
        assert state["type"] == "presence_state"


async def test_identity_comes_from_username_name_or_user_id(server: ServerProcess) -> None:
    secret, exp = server.env["JWT_SECRET"], int(time.time()) + 60
    cases = [
        ({"user_id": "u1", "sub": "s1", "username": "Una", "exp": exp}, ("u1", "Una")),
        ({"sub": "s2", "name": "Sam", "exp": exp}, ("s2", "Sam")),
        ({"sub": "s3", "exp": exp}, ("s3", "s3")),
    ]
    for claims, (user_id, username) in cases:
        token = jwt.encode(claims, secret, "HS256")
        async with member(server.ws_url("identity-" + user_id, token)) as (_, state):
            assert (state["user_id"], state["username"]) == (user_id, username)


# Relay

# Yjs bytes are applied by the server before they are relayed: they must be real ones.
UPDATE = typed_update("x")
# One awareness entry: client 1, clock 0, state {}.
AWARENESS = bytes([1, 1, 0, 2]) + b"{}"

RELAYS: list[tuple[str, dict[str, Any] | None, dict[str, Any]]] = [
    ("cursor_update", {"line": 3, "column": 7, "document_id": "main.tex"}, {}),
    (
        "selection",
        {"start": {"line": 1, "column": 0}, "end": {"line": 2, "column": 4}},
        {},
    ),
    ("user_typing", None, {"is_typing": True}),
    ("user_typing", {"is_typing": False, "document_id": "ch1.tex"}, {}),
    (
        "document_update",
        {"document_id": "main.tex", "ops": [{"insert": "x", "at": 4}], "version": 3, "z": None},
        {},
    ),
    ("yjs_update", {"update": b64(UPDATE), "origin": "user-a", "document_id": "d"}, {}),
    ("yjs_update", {"update": list(UPDATE), "document_id": "d"}, {"update": b64(UPDATE)}),
    (
        "yjs_update",
        {"update": dict(enumerate(UPDATE)), "document_id": "d"},
        {"update": b64(UPDATE)},
    ),
    ("yjs_awareness", {"update": list(AWARENESS), "document_id": "d"}, {"update": b64(AWARENESS)}),
    ("compilation_started", {"compilation_id": "c1"}, {}),
    (
        "compilation_completed",
        {"compilation_id": "c1", "pdf_url": "/p.pdf", "duration_ms": 812},
        {},
    ),
    (
        "compilation_failed",
        {"compilation_id": "c1", "error": "Undefined control", "log": "l.3"},
        {},
    ),
]


@pytest.mark.parametrize(
    ("message_type", "payload", "changed"),
    RELAYS,
    ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(RELAYS)],
)
async def test_every_client_type_is_relayed_with_the_stamped_envelope(
    server: ServerProcess,
    message_type: str,
    payload: dict[str, Any] | None,
    changed: dict[str, Any],
) -> None:
    project = f"relay-{message_type}"
    async with (
        member(server.ws_url(project, server.token("ann", username="Ann"))) as (ann, ann_state),
        member(server.ws_url(project, server.token("bob"))) as (bob, _),
    ):
        await receive_type(ann, "user_joined")
        # Identity fields a client writes are ignored; the token decides.
        body: dict[str, Any] = {"type": message_type, "user_id": "mallory", "username": "M"}
        if payload is not None:
            body["payload"] = payload
        await ann.send(json.dumps(body))
        relayed = await receive(bob)
        assert relayed["type"] == message_type
        assert relayed["payload"] == {**(payload or {}), **changed}
        assert relayed["user_id"] == "ann"
        assert relayed["username"] == "Ann"
        assert relayed["client_id"] == ann_state["client_id"]
        assert TIMESTAMP.match(relayed["timestamp"])
        # No echo to the sender: its next message is the answer to its own ping.
        await send(ann, "ping")
        await pong_after_acks(ann)


async def test_relay_reaches_the_same_users_other_tab_but_not_the_sender(
    server: ServerProcess,
) -> None:
    url = server.ws_url("tabs", server.token("ann"))
    async with member(url) as (tab1, _), member(url) as (tab2, _):
        await send(tab1, "cursor_update", {"line": 1, "column": 1})
        assert (await receive(tab2))["payload"] == {"line": 1, "column": 1}
        await send(tab1, "ping", {"n": 1})
        assert (await receive(tab1))["type"] == "pong"


async def test_messages_keep_each_senders_order(server: ServerProcess) -> None:
    async with (
        member(server.ws_url("order", server.token("ann"))) as (ann, _),
        member(server.ws_url("order", server.token("bob"))) as (bob, _),
    ):
        await receive_type(ann, "user_joined")
        for line in range(300):
            await send(ann, "cursor_update", {"line": line, "column": 0})
        lines = [(await receive(bob))["payload"]["line"] for _ in range(300)]
        assert lines == list(range(300))


async def test_rooms_are_isolated(server: ServerProcess) -> None:
    async with (
        member(server.ws_url("room-a", server.token("ann"))) as (ann, _),
        member(server.ws_url("room-b", server.token("bob"))) as (bob, _),
        member(server.ws_url("room-b", server.token("cat"))) as (cat, _),
    ):
        await receive_type(bob, "user_joined")
        await send(ann, "cursor_update", {"line": 1, "column": 1})
        await send(cat, "cursor_update", {"line": 2, "column": 2})
        # bob's next message is cat's: ann's never crossed rooms.
        assert (await receive(bob))["user_id"] == "cat"


async def test_ping_is_answered_to_the_sender_only_with_the_same_payload(
    server: ServerProcess,
) -> None:
    async with (
        member(server.ws_url("ping", server.token("ann"))) as (ann, state),
        member(server.ws_url("ping", server.token("bob"))) as (bob, _),
    ):
        await receive_type(ann, "user_joined")
        await send(ann, "ping", {"seq": 42, "sent_at": "x"})
        pong = await receive_type(ann, "pong")
        assert pong["payload"] == {"seq": 42, "sent_at": "x"}
        assert pong["client_id"] == state["client_id"]
        await send(ann, "cursor_update", {"line": 9, "column": 9})
        assert (await receive(bob))["type"] == "cursor_update"


# Bad input

BAD_INPUTS = [
    ("not json at all {", "invalid_json"),
    ("[1, 2, 3]", "invalid_message"),
    ('"secret-string-input"', "invalid_message"),
    ('{"payload": {}}', "invalid_message"),
    ('{"type": "user_joined", "payload": {"user_id": "x"}}', "server_only_type"),
    ('{"type": "presence_state"}', "server_only_type"),
    ('{"type": "error", "payload": {}}', "server_only_type"),
    ('{"type": "pong"}', "server_only_type"),
    ('{"type": "secret-unknown-type-input"}', "unknown_type"),
    ('{"type": "cursor_update", "payload": {"line": -1, "column": 0}}', "invalid_message"),
    (
        '{"type": "cursor_update", "payload": {"line": "secret-input", "column": 0}}',
        "invalid_message",
    ),
    ('{"type": "cursor_update"}', "invalid_message"),
    ('{"type": "selection", "payload": {"start": {"line": 1}}}', "invalid_message"),
    ('{"type": "user_typing", "payload": {"is_typing": "secret-input"}}', "invalid_message"),
    ('{"type": "yjs_update", "payload": {"update": "secret-input!!"}}', "invalid_message"),
    ('{"type": "yjs_update", "payload": {"update": [1, 256]}}', "invalid_message"),
    ('{"type": "yjs_update", "payload": {"update": {"1": 5}}}', "invalid_message"),
    ('{"type": "yjs_awareness", "payload": {"update": []}}', "invalid_message"),
    ('{"type": "document_update", "payload": "secret-input"}', "invalid_message"),
    ('{"type": "compilation_failed", "payload": [1]}', "invalid_message"),
    # Not JSON, or past a double's range: a relay would have turned them into null.
    ('{"type": "document_update", "payload": {"version": NaN}}', "invalid_json"),
    ('{"type": "document_update", "payload": {"ops": [1, Infinity]}}', "invalid_json"),
    ('{"type": "compilation_completed", "payload": {"duration_ms": -Infinity}}', "invalid_json"),
    ('{"type": "compilation_failed", "payload": {"log": {"n": 1e999}}}', "invalid_json"),
    ('{"type": "ping", "payload": {"sent_at": NaN}}', "invalid_json"),
    ('{"type": "cursor_update", "payload": {"line": 1e999, "column": 0}}', "invalid_json"),
    ('{"type": "cursor_update", "payload": {"line": 1, "column": 0}, "at": NaN}', "invalid_json"),
]


@pytest.mark.parametrize(("raw", "code"), BAD_INPUTS)
async def test_bad_input_gets_an_error_and_nobody_else_notices(
    server: ServerProcess, raw: str, code: str
) -> None:
    async with (
        member(server.ws_url("bad-input", server.token("ann"))) as (ann, state),
        member(server.ws_url("bad-input", server.token("bob"))) as (bob, _),
    ):
        await receive_type(ann, "user_joined")
        await ann.send(raw)
        error = await receive_type(ann, "error")
        assert error["payload"]["code"] == code
        assert error["payload"]["message"]
        assert error["client_id"] == state["client_id"]
        assert "secret" not in json.dumps(error), "the offending input was echoed"
        # Still usable, and bob's next message is the valid one: he saw nothing before it.
        await send(ann, "cursor_update", {"line": 5, "column": 5})
        assert (await receive(bob))["payload"] == {"line": 5, "column": 5}
        await send(ann, "ping")
        await receive_type(ann, "pong")


async def test_validation_error_names_the_field(server: ServerProcess) -> None:
    async with member(server.ws_url("details", server.token("ann"))) as (ann, _):
        await send(ann, "cursor_update", {"line": -1, "column": "x"})
        error = await receive_type(ann, "error")
        locations = {detail["loc"] for detail in error["payload"]["details"]}
        assert locations == {"payload.line", "payload.column"}


async def test_binary_frame_gets_unsupported_frame(server: ServerProcess) -> None:
    async with (
        member(server.ws_url("binary", server.token("ann"))) as (ann, _),
        member(server.ws_url("binary", server.token("bob"))) as (bob, _),
    ):
        await receive_type(ann, "user_joined")
        await ann.send(b"\x00\x01binary")
        assert (await receive_type(ann, "error"))["payload"]["code"] == "unsupported_frame"
        await send(ann, "cursor_update", {"line": 1, "column": 2})
        assert (await receive(bob))["type"] == "cursor_update"


# Presence


async def test_presence_on_join_second_tab_and_leave(server: ServerProcess) -> None:
    project = "presence"
    ann_url = server.ws_url(project, server.token("ann", username="Ann"))
    bob_url = server.ws_url(project, server.token("bob", username="Bob"))
    async with member(ann_url) as (ann, ann_state):
        assert ann_state["payload"]["users"] == [
            {"user_id": "ann", "username": "Ann", "connections": 1}
        ]
        async with member(bob_url) as (bob, bob_state):
            users = {u["user_id"]: u["connections"] for u in bob_state["payload"]["users"]}
            assert users == {"ann": 1, "bob": 1}
            joined = await receive_type(ann, "user_joined")
            assert joined["payload"] == {"user_id": "bob", "username": "Bob"}
            assert (joined["user_id"], joined["client_id"]) == ("bob", bob_state["client_id"])

            async with member(bob_url) as (_, bob2_state):
                users = {u["user_id"]: u["connections"] for u in bob2_state["payload"]["users"]}
                assert users == {"ann": 1, "bob": 2}
            # bob's second tab came and went without a user_joined or user_left for ann.
            await send(bob, "cursor_update", {"line": 1, "column": 1})
            assert (await receive(ann))["type"] == "cursor_update"
        left = await receive_type(ann, "user_left")
        assert left["payload"] == {"user_id": "bob", "username": "Bob"}
        assert left["user_id"] == "bob"


async def test_abrupt_disconnect_leaves_presence(server: ServerProcess) -> None:
    async with member(server.ws_url("abrupt", server.token("ann"))) as (ann, _):
        token = server.token("carol")
        raw = await anyio.to_thread.run_sync(
            lambda: RawClient(server.port, f"/ws/abrupt?token={token}")
        )
        assert raw.status == 101
        assert (await receive_type(ann, "user_joined"))["user_id"] == "carol"
        raw.close()  # no close frame: the TCP connection just ends
        assert (await receive_type(ann, "user_left"))["user_id"] == "carol"


async def test_room_is_removed_when_the_last_connection_leaves(server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {server.token('ops')}"}
    async with httpx.AsyncClient(base_url=server.http_url, headers=headers) as http:

        async def room_ids() -> set[str]:
            return {room["room_id"] for room in (await http.get("/stats")).json()["rooms"]}

        async with member(server.ws_url("ephemeral-room", server.token("ann"))):
            assert "ephemeral-room" in await room_ids()

        async def removed() -> bool:
            return "ephemeral-room" not in await room_ids()

        await eventually(removed)
