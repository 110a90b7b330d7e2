"""The one error shape of every HTTP response and refused upgrade: `{"error", "message"}`."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel
from starlette.responses import JSONResponse

from app.errors import Refusal

BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class ErrorResponse(BaseModel):
    error: str
    message: str


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def refusal_response(refusal: Refusal) -> JSONResponse:
    """A refusal as HTTP: its status, its body, and the challenge every 401 carries."""
    challenge = BEARER_CHALLENGE if refusal.status == 401 else None
    return error_response(refusal.status, refusal.code, refusal.message, challenge)
