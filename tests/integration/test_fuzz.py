"""Property-based tests against a real server: nothing a client sends breaks anything.

- Any text or bytes on a WebSocket gives its sender at most one `error` (or the relay of a
  valid message to the others), never an exception or a dropped connection; on `/yjs/`, any
  frame is taken or closes the connection with a documented code.
- Every HTTP operation of /openapi.json, fuzzed by schemathesis, never answers 5xx.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from app.main import create_app
from app.protocols.json.messages import RELAYED_TYPES, SERVER_ONLY_TYPES
from app.protocols.ywebsocket.frames import SyncStep2, read_frame, write_sync_step1
from app.settings import Settings
from tests.support.server import ServerProcess, running_server

TIMEOUT = 10.0
TYPES = sorted(RELAYED_TYPES | SERVER_ONLY_TYPES | {"ping", "auth_refresh"})

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
near_valid = st.builds(
    lambda kind, payload: json.dumps({"type": kind, "payload": payload}),
    st.sampled_from(TYPES) | st.text(max_size=12),
    json_values | st.fixed_dictionaries({"line": json_values, "column": json_values}),
)
texts = st.one_of(json_values.map(json.dumps), near_valid, st.text(max_size=120))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # Every refused example is a strike: allow enough of them for the whole run.
    with running_server({"ABUSE_MAX_STRIKES": "1000000"}) as running:
        yield running


@pytest.fixture(scope="module")
def pair(server: ServerProcess) -> Iterator[tuple[ClientConnection, ClientConnection]]:
    url = server.ws_url("fuzz", server.token("sender"))
    with (
        connect(url, compression=None) as sender,
        connect(server.ws_url("fuzz", server.token("receiver")), compression=None) as receiver,
    ):
        assert json.loads(sender.recv(TIMEOUT))["type"] == "presence_state"
        assert json.loads(receiver.recv(TIMEOUT))["type"] == "presence_state"
        assert json.loads(sender.recv(TIMEOUT))["type"] == "user_joined"
        yield sender, receiver


markers = itertools.count()


def exchange(
    pair: tuple[ClientConnection, ClientConnection], frame: str | bytes
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Send `frame`, then markers; what the sender and the receiver got because of it."""
    sender, receiver = pair
    mark = next(markers)
    sender.send(frame)
    sender.send(json.dumps({"type": "ping", "payload": {"mark": mark}}))
    replies: list[dict[str, Any]] = []
    while True:
        reply = json.loads(sender.recv(TIMEOUT))
        if reply["type"] == "pong" and reply["payload"] == {"mark": mark}:
            break
        replies.append(reply)
    sender.send(json.dumps({"type": "cursor_update", "payload": {"line": mark, "column": 0}}))
    relayed: list[dict[str, Any]] = []
    while True:
        message = json.loads(receiver.recv(TIMEOUT))
        if message["type"] == "cursor_update" and message["payload"] == {"line": mark, "column": 0}:
            return replies, relayed
        relayed.append(message)


def sent_type(frame: str) -> str | None:
    try:
        value = json.loads(frame)
    except ValueError:
        return None
    return value.get("type") if isinstance(value, dict) else None


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=texts)
def test_any_text_gets_an_error_or_a_relay(
    pair: tuple[ClientConnection, ClientConnection], frame: str
) -> None:
    replies, relayed = exchange(pair, frame)
    kinds = [reply["type"] for reply in replies]
    assert kinds in ([], ["error"], ["pong"]), kinds
    if kinds == ["error"]:
        assert relayed == [], "a refused message reached someone else"
        assert replies[0]["payload"]["code"]
    elif kinds == ["pong"]:
        assert sent_type(frame) == "ping"
        assert relayed == []
    else:
        assert [m["type"] for m in relayed] == [sent_type(frame)]
        assert relayed[0]["user_id"] == "sender"


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=st.binary(max_size=300))
def test_any_bytes_get_unsupported_frame(
    pair: tuple[ClientConnection, ClientConnection], frame: bytes
) -> None:
    replies, relayed = exchange(pair, frame)
    assert [r["payload"]["code"] for r in replies] == ["unsupported_frame"]
    assert relayed == []


schema = schemathesis.openapi.from_dict(create_app(Settings(jwt_secret="s" * 40)).openapi())


@pytest.fixture(scope="module")
def auth_headers(server: ServerProcess) -> list[dict[str, str]]:
    return [
        {},
        {"Authorization": f"Bearer {server.token('user')}"},
        {"Authorization": f"Bearer {server.token('svc', extra={'roles': ['service']})}"},
    ]


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_http_operation_answers_5xx(
    case: schemathesis.Case,  # type: ignore[type-arg]
    server: ServerProcess,
    auth_headers: list[dict[str, str]],
) -> None:
    for headers in auth_headers:
        response = case.call(base_url=server.http_url, headers=headers)
        assert response.status_code < 500, (case.method, case.path, response.text)


# Frames shaped like y-protocols messages (a known type, maybe a known sync kind) around random
# payloads, and random bytes: what a broken or hostile provider could send on /yjs/.
yjs_frames = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda kind, body: bytes((0, kind)) + body, st.integers(0, 3), st.binary(max_size=200)
    ),
    st.builds(lambda body: b"\x01" + body, st.binary(max_size=200)),
    st.builds(lambda body: b"\x02\x00" + body, st.binary(max_size=50)),
)
# What a refused update may close a /yjs/ connection with (docs/ywebsocket.md).
YJS_CLOSES = {1007, 1008, 1009, 1011, 1013}


def answered_or_closed(provider: ClientConnection) -> int | None:
    """Read up to the step 2 answering a step 1 (None), or to the close (its code; 1006 when
    there was no close frame)."""
    try:
        while True:
            answer = provider.recv(TIMEOUT)
            assert isinstance(answer, bytes), "text on /yjs/"
            if isinstance(read_frame(answer), SyncStep2):
                return None
    except ConnectionClosed as closed:
        return 1006 if closed.rcvd is None else closed.rcvd.code


@pytest.fixture(scope="module")
def yjs_watcher(server: ServerProcess) -> Iterator[ClientConnection]:
    with connect(server.ws_url("yfuzz", server.token("watcher")), compression=None) as watcher:
        assert json.loads(watcher.recv(TIMEOUT))["type"] == "presence_state"
        yield watcher


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=yjs_frames)
def test_any_frame_on_yjs_is_taken_or_closes_with_a_documented_code(
    server: ServerProcess, yjs_watcher: ClientConnection, frame: bytes
) -> None:
    url = f"ws://127.0.0.1:{server.port}/yjs/yfuzz/fuzz.tex?token={server.token('fuzzer')}"
    with connect(url, compression=None, max_size=None) as provider:
        provider.send(frame)
        # A step 1 after it: its step 2 comes once the frame was handled (and, for an update,
        # stored), unless the frame closed the connection.
        provider.send(write_sync_step1(b"\x00"))
        code = answered_or_closed(provider)
        assert code is None or code in YJS_CLOSES, code
    # The JSON client of the project is never told of another's mistakes.
    while True:
        message = json.loads(yjs_watcher.recv(TIMEOUT))
        assert message["type"] != "error"
        if message["type"] == "user_left":
            break
    log = server.logs()
    assert '"level": "error"' not in log
    assert "Traceback" not in server.output()
