"""Admission of an upgrade request: every check that can refuse it, before the handshake."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from app.auth import AuthError, AuthService, Identity
from app.limits import ConnectionLimiter
from app.metrics import Metrics
from app.origins import OriginPolicy
from app.registry import RoomRegistry

PROJECT_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


class Rejection(Exception):
    """An upgrade refused with an HTTP status and a JSON `{"error", "message"}` body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(slots=True)
class Ticket:
    """An admitted upgrade; holds a per-IP slot until `release`."""

    project_id: str
    identity: Identity
    ip: str
    _limiter: ConnectionLimiter
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter.release(self.ip)


def bearer_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token from `Authorization: Bearer`, else from `?token=`."""
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return query.get("token") or None


class Gatekeeper:
    """Runs the checks in order: project id, origin, token and scope, then the per-IP cap.

    The cap comes last so that only an admitted upgrade takes a slot.
    """

    def __init__(
        self,
        auth: AuthService,
        origins: OriginPolicy,
        limiter: ConnectionLimiter,
        metrics: Metrics,
        registry: RoomRegistry,
    ) -> None:
        self._registry = registry
        self._auth = auth
        self._origins = origins
        self._limiter = limiter
        self._metrics = metrics

    def admit(
        self,
        *,
        project_id: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        ip: str,
    ) -> Ticket:
        try:
            return self._check(project_id=project_id, headers=headers, query=query, ip=ip)
        except Rejection as rejection:
            self._metrics.rejected_upgrades.labels(rejection.code).inc()
            raise

    def _check(
        self,
        *,
        project_id: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        ip: str,
    ) -> Ticket:
        if not self._registry.accepting:
            raise Rejection(503, "shutting_down", "this instance is not accepting connections")
        if PROJECT_ID.fullmatch(project_id) is None:
            raise Rejection(
                400,
                "invalid_project_id",
                "expected a project id of 1-128 characters from A-Z a-z 0-9 _ . -",
            )
        if not self._origins.allows(headers.get("origin"), headers.get("host")):
            raise Rejection(403, "origin_not_allowed", "this Origin may not open WebSockets here")
        try:
            identity = self._auth.authenticate(bearer_token(headers, query), project_id)
        except AuthError as exc:
            raise Rejection(exc.status, exc.code, exc.message) from None
        if not self._limiter.acquire(ip):
            raise Rejection(
                429, "too_many_connections", "too many open connections from this address"
            )
        return Ticket(project_id=project_id, identity=identity, ip=ip, _limiter=self._limiter)
