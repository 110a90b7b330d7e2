"""The AsyncAPI 3.0 description of the WebSocket protocol, built from the validator's own models.

Every message type needs an entry in `_DOCS`: adding a type to the protocol without describing
it fails at import, and the tests compare the document with the types the server handles.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

from app.protocols.json.messages import (
    DURABLE_TYPES,
    EPHEMERAL_TYPES,
    RELAYED_TYPES,
    SERVER_ONLY_TYPES,
    SYNC_TYPES,
    AuthRefreshedPayload,
    ClientMessage,
    Envelope,
    ErrorPayload,
    PresenceStatePayload,
    UserPresencePayload,
    YjsAckPayload,
    YjsDocumentDeletedPayload,
)

REF = "#/components/schemas/{model}"

_DOCS: dict[str, tuple[str, dict[str, Any]]] = {
    "cursor_update": (
        "A user's cursor moved.",
        {"line": 10, "column": 25, "document_id": "main.tex"},
    ),
    "selection": (
        "A user's text selection changed.",
        {"start": {"line": 3, "column": 0}, "end": {"line": 5, "column": 12}},
    ),
    "user_typing": ("A user started or stopped typing.", {"is_typing": True}),
    "document_update": (
        "An application-defined document change, relayed as sent.",
        {"document_id": "main.tex", "version": 42},
    ),
    "yjs_update": (
        "A Yjs CRDT update, applied to the server's document before it is relayed, and "
        "acknowledged with yjs_ack once stored. Bytes: base64, an array of 0-255, or a "
        "Uint8Array object; relayed as base64.",
        {"document_id": "main.tex", "update": "AQHYo8X2BwAEAQRtYWluAWE=", "origin": "edit"},
    ),
    "yjs_awareness": (
        "A Yjs awareness update (y-protocols); the server keeps each document's states.",
        {"document_id": "main.tex", "update": "AQHYo8X2BwEAAA=="},
    ),
    "yjs_sync_step1": (
        "A state vector. From a client: answered with yjs_sync_step2, the server's own "
        "yjs_sync_step1 and the document's awareness. From the server: answer with "
        "yjs_sync_step2.",
        {"document_id": "main.tex", "state_vector": "AA=="},
    ),
    "yjs_sync_step2": (
        "What the other side lacks, as a Yjs update. A client's is applied, relayed and "
        "acknowledged with yjs_ack like a yjs_update.",
        {"document_id": "main.tex", "update": "AAA="},
    ),
    "yjs_update_part": (
        "One part of an update too large for one message (MAX_MESSAGE_SIZE): parts 0, 1, ... "
        "of one document in order, the last with final true; then handled as one yjs_update.",
        {"document_id": "main.tex", "index": 0, "final": False, "data": "AQHYo8X2Bw=="},
    ),
    "yjs_document_deleted": (
        "A backend service deleted the document: close it; a new sync step starts it again, "
        "empty. Sent to every connection of the project, on every instance.",
        {"document_id": "old-chapter.tex"},
    ),
    "yjs_ack": (
        "One accepted yjs_update or yjs_sync_step2 of this connection is durable; in the "
        "order they were sent.",
        {"document_id": "main.tex"},
    ),
    "compilation_started": ("A compilation began.", {"compilation_id": "c-17"}),
    "compilation_completed": (
        "A compilation finished.",
        {"compilation_id": "c-17", "pdf_url": "/pdf/c-17.pdf", "duration_ms": 812},
    ),
    "compilation_failed": (
        "A compilation failed.",
        {"compilation_id": "c-17", "error": "Undefined control sequence", "log": "l.12 \\foo"},
    ),
    "ping": ("Application-level ping; answered with pong to the sender only.", {"seq": 7}),
    "auth_refresh": (
        "A fresh token for the same user, extending the connection past the old token's exp.",
        {"token": "eyJhbGciOiJIUzI1NiJ9.e30.signature"},
    ),
    "pong": ("The answer to a ping, carrying its payload.", {"seq": 7}),
    "presence_state": (
        "Sent first to a new connection: everyone in the project, including itself.",
        {"users": [{"user_id": "alice", "username": "Alice", "connections": 2}]},
    ),
    "user_joined": ("A user's first connection joined.", {"user_id": "bob", "username": "Bob"}),
    "user_left": ("A user's last connection closed.", {"user_id": "bob", "username": "Bob"}),
    "error": (
        "A message was refused, or the connection is about to change state. Sent to one "
        "connection only.",
        {"code": "invalid_message", "message": "message failed validation"},
    ),
    "auth_refreshed": (
        "An auth_refresh was accepted.",
        {"expires_at": "2026-01-15T11:30:00.000Z"},
    ),
}

_SERVER_PAYLOADS: dict[str, type[BaseModel] | None] = {
    "presence_state": PresenceStatePayload,
    "user_joined": UserPresencePayload,
    "user_left": UserPresencePayload,
    "error": ErrorPayload,
    "auth_refreshed": AuthRefreshedPayload,
    "yjs_ack": YjsAckPayload,
    "yjs_document_deleted": YjsDocumentDeletedPayload,
    "pong": None,
}


def client_models() -> dict[str, type[BaseModel]]:
    """The client message models, by type, read from the discriminated union itself."""
    union = typing.get_args(ClientMessage)[0]
    models: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        (tag,) = typing.get_args(model.model_fields["type"].annotation)
        models[tag] = model
    return models


def _check_documented() -> None:
    known = set(client_models()) | SERVER_ONLY_TYPES | RELAYED_TYPES | SYNC_TYPES
    missing = known - _DOCS.keys()
    if missing:
        raise RuntimeError(f"message types without AsyncAPI docs: {sorted(missing)}")


_check_documented()


def _envelope_schema(message_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    schema = Envelope.model_json_schema(ref_template=REF)
    schema["title"] = f"{message_type} (server)"
    schema["properties"]["type"] = {"const": message_type, "type": "string"}
    schema["properties"]["payload"] = payload
    return schema


def build(version: str, server_host: str = "localhost:8082") -> dict[str, Any]:
    """The AsyncAPI 3.0 document for this protocol version."""
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    def register_defs(schema: dict[str, Any]) -> dict[str, Any]:
        schemas.update(schema.pop("$defs", {}))
        return schema

    models = client_models()
    for message_type, model in sorted(models.items()):
        schema = register_defs(model.model_json_schema(ref_template=REF))
        name = f"client.{message_type}"
        schemas[name] = schema
        summary, example = _DOCS[message_type]
        messages[name] = {
            "name": message_type,
            "title": f"{message_type} (client to server)",
            "summary": summary,
            "payload": {"$ref": REF.format(model=name)},
            "examples": [{"payload": {"type": message_type, "payload": example}}],
        }
        operations[f"receive.{message_type}"] = {
            "action": "receive",
            "channel": {"$ref": "#/channels/project"},
            "messages": [{"$ref": f"#/channels/project/messages/{name}"}],
            "summary": f"A client sends {message_type}.",
        }

    for message_type in sorted(RELAYED_TYPES | SERVER_ONLY_TYPES | SYNC_TYPES):
        if message_type in models and message_type in RELAYED_TYPES | SYNC_TYPES:
            payload = {"$ref": REF.format(model=f"client.{message_type}") + "/properties/payload"}
        else:
            model_or_none = _SERVER_PAYLOADS[message_type]
            payload = (
                register_defs(model_or_none.model_json_schema(ref_template=REF))
                if model_or_none is not None
                else {"type": "object"}
            )
        name = f"server.{message_type}"
        schemas[name] = _envelope_schema(message_type, payload)
        summary, example = _DOCS[message_type]
        delivery = (
            "every other connection of the project"
            if message_type in RELAYED_TYPES or message_type in {"user_joined", "user_left"}
            else "one connection"
        )
        kind = (
            " Ephemeral: may be coalesced for a slow reader."
            if message_type in EPHEMERAL_TYPES
            else " Durable: never dropped."
            if message_type in DURABLE_TYPES
            else ""
        )
        messages[name] = {
            "name": message_type,
            "title": f"{message_type} (server to client)",
            "summary": f"{summary} Delivered to {delivery}.{kind}",
            "payload": {"$ref": REF.format(model=name)},
            "examples": [
                {
                    "payload": {
                        "type": message_type,
                        "payload": example,
                        "timestamp": "2026-01-15T10:30:00.123Z",
                        "user_id": "alice",
                        "username": "Alice",
                        "client_id": "9f2c4e1a7b3d5f60",
                    }
                }
            ],
        }
        operations[f"send.{message_type}"] = {
            "action": "send",
            "channel": {"$ref": "#/channels/project"},
            "messages": [{"$ref": f"#/channels/project/messages/{name}"}],
            "summary": f"The server sends {message_type}.",
        }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "texflow-websocket",
            "version": version,
            "description": (
                "Real-time collaboration for TexFlow projects. One WebSocket per project; every "
                "message is JSON text. Close codes: 1000 normal, 1007 invalid UTF-8, 1008 too "
                "many refused messages, 1009 message too big, 1011 no pong or server fault, "
                "1012 instance restarting, 1013 too slow (reconnect and resync), 4001 token "
                "expired, 4003 access revoked."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "service": {
                "host": server_host,
                "protocol": "ws",
                "description": "Use wss behind TLS in production.",
                "security": [
                    {"$ref": "#/components/securitySchemes/subprotocol"},
                    {"$ref": "#/components/securitySchemes/bearer"},
                    {"$ref": "#/components/securitySchemes/query"},
                ],
            }
        },
        "channels": {
            "project": {
                "address": "/ws/{project_id}",
                "title": "A project's room",
                "parameters": {
                    "project_id": {"description": "1-128 characters of A-Z a-z 0-9 _ . -"}
                },
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
            }
        },
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "subprotocol": {
                    "type": "httpApiKey",
                    "name": "Sec-WebSocket-Protocol",
                    "in": "header",
                    "description": "`bearer, <jwt>`: new WebSocket(url, ['bearer', token]).",
                },
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "query": {
                    "type": "httpApiKey",
                    "name": "token",
                    "in": "query",
                    "description": "?token=<jwt>, as the Go service accepted.",
                },
            },
        },
    }


def message_types(document: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(types a client may send, types the server sends) as a document describes them."""
    received: set[str] = set()
    sent: set[str] = set()
    for operation in document["operations"].values():
        for ref in operation["messages"]:
            name = ref["$ref"].rsplit("/", 1)[1]
            kind = document["components"]["messages"][name]["name"]
            (received if operation["action"] == "receive" else sent).add(kind)
    return received, sent
