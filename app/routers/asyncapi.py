"""The WebSocket protocol's machine-readable description."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Request

from app.protocols.json import asyncapi

router = APIRouter(tags=["protocol"])


@lru_cache(maxsize=8)
def _document(version: str, host: str) -> dict[str, Any]:
    return asyncapi.build(version, host)


@router.get(
    "/asyncapi.json",
    summary="AsyncAPI 3.0 description of the WebSocket protocol",
    response_description="Every message type, its direction, payload schema and an example",
)
async def asyncapi_document(request: Request) -> dict[str, Any]:
    host = request.headers.get("host", "localhost:8082")[:255]
    return _document(request.app.version, host)
