"""JWT verification: pinned algorithms, required `exp`, identity and project scope from claims."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jose import jwt
from jose.exceptions import ExpiredSignatureError, JWTClaimsError, JWTError

from app.errors import Refusal

# Tokens larger than this are refused before any parsing: no identity needs more.
MAX_TOKEN_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for, and where it may go."""

    user_id: str
    username: str
    expires_at: float
    # The `iat` claim: a revocation refuses the tokens issued before it (None: unknown).
    issued_at: float | None = None
    # None means the token is not limited to particular projects.
    projects: frozenset[str] | None = None
    roles: frozenset[str] = frozenset()

    def may_join(self, project_id: str) -> bool:
        return self.projects is None or project_id in self.projects


def _unauthorized(message: str) -> Refusal:
    return Refusal("unauthorized", message, status=401)


class AuthService:
    """Verifies tokens with the configured keys, each only with its own algorithm."""

    def __init__(
        self,
        *,
        hs256_secret: str | None,
        rs256_public_key: str | None,
        leeway: float,
    ) -> None:
        self._keys: dict[str, str] = {}
        if hs256_secret:
            self._keys["HS256"] = hs256_secret
        if rs256_public_key:
            self._keys["RS256"] = rs256_public_key
        self._leeway = leeway

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def verify(self, token: str | None) -> Identity:
        """Return the identity in `token`, or raise a 401 Refusal."""
        if not token:
            raise _unauthorized("a token is required: ?token=, or Authorization: Bearer")
        if len(token) > MAX_TOKEN_BYTES:
            raise _unauthorized(f"token too large: expected at most {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except JWTError:
            raise _unauthorized("malformed token") from None
        algorithm = header.get("alg")
        key = self._keys.get(algorithm) if isinstance(algorithm, str) else None
        if key is None:
            accepted = ", ".join(self._keys) or "none configured"
            raise _unauthorized(f"token algorithm not accepted: expected {accepted}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(algorithm)],
                options={
                    "require_exp": True,
                    "verify_aud": False,
                    "leeway": self._leeway,
                },
            )
        except ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except JWTClaimsError as exc:
            raise _unauthorized(f"token claims rejected: {_claims_reason(exc)}") from None
        except (JWTError, TypeError, ValueError, OverflowError):
            # python-jose lets TypeError/OverflowError out for claims like "exp": null or 1e400.
            raise _unauthorized("token signature or format invalid") from None
        return _identity(claims)

    def authenticate(self, token: str | None, project_id: str) -> Identity:
        """Verify `token` and check that it may join `project_id` (a Refusal, 401 or 403)."""
        identity = self.verify(token)
        if not identity.may_join(project_id):
            raise Refusal(
                "forbidden", "the token does not grant access to this project", status=403
            )
        return identity


def _claims_reason(exc: JWTClaimsError) -> str:
    # python-jose's claim messages are fixed sentences ("The token is not yet valid (nbf)"),
    # never the token's content, so they are safe to return.
    return str(exc)[:120] or "invalid claims"


def _claim_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int):
        return str(value)
    return None


def _identity(claims: Mapping[str, Any]) -> Identity:
    user_id = _claim_id(claims.get("user_id")) or _claim_id(claims.get("sub"))
    if user_id is None:
        raise _unauthorized("token has no user: expected a user_id or sub claim")
    username = claims.get("username") or claims.get("name") or user_id
    if not isinstance(username, str):
        raise _unauthorized("token claim username must be a string")
    projects: set[str] | None = None
    if "project_id" in claims:
        project = claims["project_id"]
        if not isinstance(project, str):
            raise _unauthorized("token claim project_id must be a string")
        projects = {project}
    if "projects" in claims:
        listed = claims["projects"]
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise _unauthorized("token claim projects must be a list of strings")
        projects = (projects or set()) | set(listed)
    roles_claim = claims.get("roles", [])
    roles: Iterable[Any] = [roles_claim] if isinstance(roles_claim, str) else roles_claim
    if not isinstance(roles, list | tuple) or not all(isinstance(r, str) for r in roles):
        raise _unauthorized("token claim roles must be a list of strings")
    issued = claims.get("iat")
    return Identity(
        user_id=user_id,
        username=username[:128],
        expires_at=float(claims["exp"]),
        # python-jose checks that `iat`, when present, is a number.
        issued_at=float(issued) if isinstance(issued, int | float) else None,
        projects=frozenset(projects) if projects is not None else None,
        roles=frozenset(roles),
    )


def issue_token(
    secret: str,
    *,
    user_id: str,
    username: str | None = None,
    projects: Iterable[str] | None = None,
    ttl: float = 3600.0,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Mint an HS256 token, for development and tests; production tokens come from the web app."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "user_id": user_id, "iat": now, "exp": int(now + ttl)}
    if username is not None:
        claims["username"] = username
    if projects is not None:
        claims["projects"] = list(projects)
    if extra:
        claims.update(extra)
    return jwt.encode(claims, secret, algorithm="HS256")
