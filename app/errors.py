"""Close codes, and the one refusal every layer raises; the edges turn it into what clients see."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class CloseCode(IntEnum):
    """Every WebSocket close code the service sends (docs/security.md explains each)."""

    NORMAL = 1000
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    TOKEN_EXPIRED = 4001
    ACCESS_REVOKED = 4003
    UNAUTHORIZED = 4401
    DOCUMENT_DELETED = 4410


class Refusal(Exception):
    """A client's request was refused, for a reason the client may read.

    One class for every layer: HTTP edges answer `status` with `{"error": code, "message"}`
    (401 with a Bearer challenge), WebSocket sessions send an `error` message with `code`,
    `message` and `details`. Nothing the client sent is echoed in `message`.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 400,
        details: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details

    def payload(self) -> dict[str, Any]:
        """The payload of the `error` message a WebSocket client gets."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"Refusal({self.code!r}, {self.message!r}, status={self.status})"
