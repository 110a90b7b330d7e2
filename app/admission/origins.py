"""The Origin check on WebSocket upgrades, which CORS middleware does not cover."""

from __future__ import annotations

from urllib.parse import urlsplit


class OriginPolicy:
    """Decides whether a browser page at `Origin` may open a WebSocket here.

    `allowed` is a tuple of origins (`https://app.example.com`), `("*",)` for any, or `()` for
    same-origin only (the Origin's host must equal the Host header, as gorilla/websocket does).
    Requests without an Origin header come from non-browser clients and are allowed: the token
    is their credential, and Origin only defends browsers against cross-site pages.
    """

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self._any = "*" in allowed
        self._allowed = frozenset(origin.lower().rstrip("/") for origin in allowed)

    @property
    def cors_origins(self) -> list[str]:
        """Origins for the HTTP endpoints' CORS headers."""
        return ["*"] if self._any else sorted(self._allowed)

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self._any:
            return True
        normalized = origin.strip().lower().rstrip("/")
        if self._allowed:
            return normalized in self._allowed
        return bool(host) and urlsplit(normalized).netloc == (host or "").strip().lower()
