"""The AsyncAPI document at /asyncapi.json and docs/protocol.md describe the whole protocol."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest

from app.errors import Refusal
from app.protocols.json.asyncapi import client_models, message_types
from app.protocols.json.messages import (
    RELAYED_TYPES,
    SERVER_ONLY_TYPES,
    SYNC_TYPES,
    parse_client_message,
)
from tests.support.server import ROOT, ServerProcess

pytestmark = pytest.mark.anyio


@pytest.fixture
async def document(server: ServerProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get("/asyncapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def accepted_types() -> set[str]:
    """What the validator accepts: probe it with every name it could know."""
    candidates = set(client_models()) | RELAYED_TYPES | SERVER_ONLY_TYPES | {"ping"}
    accepted = set()
    for name in candidates:
        try:
            parse_client_message(f'{{"type": "{name}", "payload": {{}}}}')
            accepted.add(name)
        except Refusal as error:
            if error.code == "invalid_message":  # known type, empty payload not enough
                accepted.add(name)
    return accepted


async def test_every_message_type_is_described_in_its_direction(document: dict[str, Any]) -> None:
    received, sent = message_types(document)
    assert received == accepted_types()
    assert sent == RELAYED_TYPES | SERVER_ONLY_TYPES | SYNC_TYPES
    assert document["asyncapi"] == "3.0.0"
    assert document["channels"]["project"]["address"] == "/ws/{project_id}"


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


async def test_every_reference_resolves(document: dict[str, Any]) -> None:
    for ref in set(refs(document)):
        assert resolve(document, ref) is not None, ref


async def test_examples_are_what_the_server_accepts_and_sends(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]
    schemas = {"components": document["components"]}
    for name, message in messages.items():
        example = message["examples"][0]["payload"]
        schema = {**resolve(document, message["payload"]["$ref"]), **schemas}
        jsonschema.validate(example, schema)
        if name.startswith("client."):
            assert parse_client_message(json.dumps(example)).type == example["type"]


def test_protocol_doc_has_a_section_for_every_type() -> None:
    text = Path(ROOT, "docs", "protocol.md").read_text()
    for message_type in accepted_types() | RELAYED_TYPES | SERVER_ONLY_TYPES:
        assert f"### `{message_type}`" in text, f"docs/protocol.md lacks {message_type}"
    for code in (1000, 1007, 1008, 1009, 1011, 1012, 1013, 4001, 4003):
        assert f"| {code} |" in text
