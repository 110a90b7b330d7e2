"""What the service logs: one event per connect and disconnect, and never a token."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.support.clients import member, open_ws, receive_type
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
