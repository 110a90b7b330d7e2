"""Admission of an upgrade request: every check that can refuse it, before the handshake."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.admission.auth import AuthService, Identity
from app.admission.limits import ConnectionLimiter
from app.admission.origins import OriginPolicy
from app.admission.proxies import ClientAddressResolver
from app.admission.revocations import Revocations
from app.errors import Refusal
from app.metrics import Metrics
from app.rooms.registry import RoomRegistry

PROJECT_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
BEARER_SUBPROTOCOL = "bearer"


@dataclass(slots=True)
class Ticket:
    """An admitted upgrade; holds a per-IP and a per-user slot until `release`."""

    project_id: str
    identity: Identity
    ip: str
    subprotocol: str | None
    _ip_limiter: ConnectionLimiter
    _user_limiter: ConnectionLimiter
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._ip_limiter.release(self.ip)
            self._user_limiter.release(self.identity.user_id)


@dataclass(frozen=True, slots=True)
class Credentials:
    token: str | None
    subprotocol: str | None


def credentials(
    headers: Mapping[str, str], query: Mapping[str, str], subprotocols: Sequence[str]
) -> Credentials:
    """The token, from the first of: `Sec-WebSocket-Protocol: bearer, <jwt>` (what browsers can
    send without leaking it into URLs), `Authorization: Bearer <jwt>`, `?token=<jwt>`."""
    if BEARER_SUBPROTOCOL in subprotocols:
        index = list(subprotocols).index(BEARER_SUBPROTOCOL)
        token = subprotocols[index + 1] if index + 1 < len(subprotocols) else None
        return Credentials(token or None, BEARER_SUBPROTOCOL)
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return Credentials(value.strip(), None)
    return Credentials(query.get("token") or None, None)


class Gatekeeper:
    """Runs the checks in order: draining, project id, origin, token and scope, then the
    per-IP and per-user caps. The caps come last so that only an admitted upgrade takes a slot.
    """

    def __init__(
        self,
        auth: AuthService,
        origins: OriginPolicy,
        ip_limiter: ConnectionLimiter,
        user_limiter: ConnectionLimiter,
        addresses: ClientAddressResolver,
        metrics: Metrics,
        registry: RoomRegistry,
        revocations: Revocations,
    ) -> None:
        self._auth = auth
        self._revocations = revocations
        self._origins = origins
        self._ip_limiter = ip_limiter
        self._user_limiter = user_limiter
        self._addresses = addresses
        self._metrics = metrics
        self._registry = registry

    def admit(
        self,
        *,
        project_id: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        peer: str,
        subprotocols: Sequence[str] = (),
        protocol: str = "json",
    ) -> Ticket:
        try:
            return self._check(project_id, headers, query, peer, subprotocols)
        except Refusal as rejection:
            self.count_refusal(rejection, protocol)
            raise

    def count_refusal(self, rejection: Refusal, protocol: str) -> None:
        self._metrics.rejected_upgrades.labels(rejection.code, protocol).inc()

    def client_address(self, peer: str, headers: Mapping[str, str]) -> str:
        return self._addresses.resolve(peer, headers)

    def _check(
        self,
        project_id: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        peer: str,
        subprotocols: Sequence[str],
    ) -> Ticket:
        if not self._registry.accepting:
            raise Refusal("shutting_down", "this instance is not accepting connections", status=503)
        if PROJECT_ID.fullmatch(project_id) is None:
            raise Refusal(
                "invalid_project_id",
                "expected a project id of 1-128 characters from A-Z a-z 0-9 _ . -",
            )
        if not self._origins.allows(headers.get("origin"), headers.get("host")):
            raise Refusal(
                "origin_not_allowed", "this Origin may not open WebSockets here", status=403
            )
        found = credentials(headers, query, subprotocols)
        identity = self._auth.authenticate(found.token, project_id)
        if self._revocations.refuses(project_id, identity.user_id, identity.issued_at):
            raise Refusal(
                "access_revoked",
                "access to this project was revoked: a new token from the web app is needed",
                status=403,
            )
        ip = self._addresses.resolve(peer, headers)
        if not self._ip_limiter.acquire(ip):
            raise Refusal(
                "too_many_connections", "too many open connections from this address", status=429
            )
        if not self._user_limiter.acquire(identity.user_id):
            self._ip_limiter.release(ip)
            raise Refusal(
                "too_many_connections", "too many open connections for this user", status=429
            )
        return Ticket(
            project_id=project_id,
            identity=identity,
            ip=ip,
            subprotocol=found.subprotocol,
            _ip_limiter=self._ip_limiter,
            _user_limiter=self._user_limiter,
        )
