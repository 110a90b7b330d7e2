"""What the service logs: one event per connect, disconnect and refusal, never a token, and
nothing at error level for a client's mistakes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.support.clients import (
    HeaderList,
    RawClient,
    exchange,
    member,
    open_ws,
    receive_type,
    upgrade_headers,
)
from tests.support.server import running_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


async def test_connection_events_are_logged_and_no_token_appears_anywhere() -> None:
    with running_server({"LOG_LEVEL": "debug"}) as server:
        query_token = server.token("ann", username="Ann")
        header_token = server.token("bob")
        stats_token = server.token("ops")
        expired = server.token("old", ttl=-3600)
        headers = {"Authorization": f"Bearer {header_token}"}
        async with (
            member(server.ws_url("logged", query_token)) as (ann, state),
            member(server.ws_url("logged"), additional_headers=headers),
        ):
            await receive_type(ann, "user_joined")
        with pytest.raises(InvalidStatus):
            async with open_ws(server.ws_url("logged", expired)):
                pass
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            await http.get("/stats", headers={"Authorization": f"Bearer {stats_token}"})
            await http.get(f"/health?token={query_token}")

        def events() -> list[dict[str, Any]]:
            return [json.loads(line) for line in server.logs().splitlines()]

        async def both_disconnects_logged() -> bool:
            return [e.get("event") for e in events()].count("ws_disconnected") == 2

        await eventually(both_disconnects_logged)
        # The log is stdout; stderr holds only the development banner with its own sample
        # token. Neither may hold any token the clients used (claims or signature).
        logs, everything = server.logs(), server.output()
        assert "eyJ" not in logs
        for token in (query_token, header_token, stats_token, expired):
            _, claims, signature = token.split(".")
            assert claims not in everything
            assert signature not in everything
        assert "[redacted]" in logs

        connected = [e for e in events() if e.get("event") == "ws_connected"]
        assert {e["user_id"] for e in connected} == {"ann", "bob"}
        [ann_out] = [
            e for e in events() if e.get("event") == "ws_disconnected" and e["user_id"] == "ann"
        ]
        assert ann_out["project_id"] == "logged"
        assert ann_out["client_id"] == state["client_id"]
        assert ann_out["close_code"] == 1000
        assert ann_out["duration_s"] >= 0
        rejected = [e for e in events() if e.get("event") == "ws_rejected"]
        assert [(e["status"], e["code"]) for e in rejected] == [(401, "unauthorized")]


async def test_client_mistakes_are_logged_once_at_info_and_never_as_errors() -> None:
    # Alerts key on error level: it is for the service's own faults. A hostile client making
    # refused upgrades and sending invalid UTF-8 must add one info line per mistake.
    with running_server({"MAX_CONNECTIONS_PER_USER": "1"}) as server:

        def events() -> list[dict[str, Any]]:
            return [json.loads(line) for line in server.logs().splitlines()]

        def raw_refusal(changes: dict[str, str | None], extra: HeaderList) -> Callable[[], Any]:
            headers = upgrade_headers(server.port, changes) + extra
            path = f"/ws/faults?token={server.token('raw')}"
            return lambda: exchange(server.port, path, headers)

        async with member(server.ws_url("faults", server.token("held"))):

            async def held_is_logged() -> bool:
                return any(e.get("event") == "ws_connected" for e in events())

            await eventually(held_is_logged)
            start = len(events())
            app_refusals = [
                server.ws_url("bad%20id", server.token("ann")),
                server.ws_url("faults"),
                server.ws_url("faults", server.token("ann", extra={"projects": ["other"]})),
                server.ws_url("faults", server.token("held")),
            ]
            for url in app_refusals:
                with pytest.raises(InvalidStatus):
                    async with open_ws(url):
                        pass
            protocol_refusals = [
                raw_refusal({"Sec-WebSocket-Version": "8"}, []),
                raw_refusal({"Sec-WebSocket-Key": None}, []),
                raw_refusal({}, [(f"X-Filler-{i}", "x") for i in range(130)]),
            ]
            for refuse in protocol_refusals:
                await anyio.to_thread.run_sync(refuse)
            expected = [
                (400, "invalid_project_id"),
                (401, "unauthorized"),
                (403, "forbidden"),
                (429, "too_many_connections"),
                (400, "unsupported_websocket_version"),
                (400, "invalid_handshake"),
                (431, "headers_too_large"),
            ]

            async def refusals_logged() -> bool:
                rejected = [e for e in events()[start:] if e.get("event") == "ws_rejected"]
                return len(rejected) >= len(expected)

            await eventually(refusals_logged)
            # One line per refusal, and nothing else: no uvicorn or websockets echo of it.
            during = events()[start:]
            assert [(e["status"], e["code"]) for e in during] == expected
            assert {e["level"] for e in during} == {"info"}

            token = server.token("raw")
            raw = await anyio.to_thread.run_sync(
                lambda: RawClient(server.port, f"/ws/faults?token={token}")
            )
            raw.read_frame()  # presence_state
            raw.send_frame(0x1, b"\xff\xfe not utf-8")
            assert await anyio.to_thread.run_sync(raw.read_until_close) == 1007
            raw.close()

            async def raw_left() -> bool:
                return any(
                    e.get("event") == "ws_disconnected" and e["user_id"] == "raw" for e in events()
                )

            await eventually(raw_left)

        everything = events()
        assert [e for e in everything if e["level"] in {"error", "critical"}] == []
        assert [e for e in everything if "exception" in e] == []
        assert "Traceback" not in server.output()
        [utf8] = [e for e in everything if "utf-8" in json.dumps(e).lower()]
        assert (utf8["event"], utf8["level"]) == ("ws_disconnected", "info")
        assert (utf8["close_code"], utf8["close_reason"]) == (1007, "invalid UTF-8")
