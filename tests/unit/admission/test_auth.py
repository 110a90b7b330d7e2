"""AuthService: pinned algorithms per key, required exp, leeway, identity and project scope."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from app.admission.auth import MAX_TOKEN_BYTES, AuthService, Identity, issue_token
from app.errors import Refusal

SECRET = "unit-test-secret-" + "k" * 32
OTHER_SECRET = "another-secret-" + "q" * 32


class RsaKeys:
    """One RSA key pair as PEM text."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )


@pytest.fixture(scope="module")
def rsa_keys() -> RsaKeys:
    return RsaKeys()


@pytest.fixture(scope="module")
def other_rsa_keys() -> RsaKeys:
    return RsaKeys()


@pytest.fixture
def auth(rsa_keys: RsaKeys) -> AuthService:
    """Both kinds of key configured."""
    return AuthService(hs256_secret=SECRET, rs256_public_key=rsa_keys.public_pem, leeway=10)


@pytest.fixture
def hs_only() -> AuthService:
    return AuthService(hs256_secret=SECRET, rs256_public_key=None, leeway=10)


@pytest.fixture
def rs_only(rsa_keys: RsaKeys) -> AuthService:
    return AuthService(hs256_secret=None, rs256_public_key=rsa_keys.public_pem, leeway=10)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 3600, **extra}


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def rs256(payload: dict[str, Any], keys: RsaKeys) -> str:
    return jwt.encode(payload, keys.private_pem, algorithm="RS256")


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token built by hand, for what python-jose refuses to produce."""
    encoded_header = _segment(json.dumps(header).encode())
    encoded_payload = _segment(json.dumps(payload).encode())
    signing_input = f"{encoded_header}.{encoded_payload}"
    if hmac_key is None:
        return signing_input + "."
    digest = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_segment(digest)}"


def refusal(service: AuthService, token: str | None) -> Refusal:
    with pytest.raises(Refusal) as info:
        service.verify(token)
    return info.value


# Algorithms and keys


def test_hs256_token_is_accepted_when_both_keys_are_configured(auth: AuthService) -> None:
    assert auth.verify(issue_token(SECRET, user_id="alice")).user_id == "alice"


def test_rs256_token_is_accepted_when_both_keys_are_configured(
    auth: AuthService, rsa_keys: RsaKeys
) -> None:
    assert auth.verify(rs256(claims(), rsa_keys)).user_id == "alice"


def test_algorithms_lists_the_configured_keys(auth: AuthService, hs_only: AuthService) -> None:
    assert auth.algorithms == ("HS256", "RS256")
    assert hs_only.algorithms == ("HS256",)


def test_hs256_token_signed_with_another_secret_is_refused(auth: AuthService) -> None:
    error = refusal(auth, issue_token(OTHER_SECRET, user_id="alice"))

    assert (error.status, error.code) == (401, "unauthorized")


def test_rs256_token_signed_with_another_key_is_refused(
    auth: AuthService, other_rsa_keys: RsaKeys
) -> None:
    assert refusal(auth, rs256(claims(), other_rsa_keys)).status == 401


def test_rs256_token_is_refused_without_a_public_key(
    hs_only: AuthService, rsa_keys: RsaKeys
) -> None:
    error = refusal(hs_only, rs256(claims(), rsa_keys))

    assert error.status == 401
    assert "algorithm not accepted" in error.message


def test_hs256_token_is_refused_without_a_secret(rs_only: AuthService) -> None:
    assert refusal(rs_only, issue_token(SECRET, user_id="alice")).status == 401


@pytest.mark.parametrize("configured", ["rs_only", "auth"])
def test_hs256_token_using_the_public_key_as_hmac_secret_is_refused(
    request: pytest.FixtureRequest, configured: str, rsa_keys: RsaKeys
) -> None:
    service: AuthService = request.getfixturevalue(configured)
    forged = hand_signed(
        {"alg": "HS256", "typ": "JWT"}, claims(), hmac_key=rsa_keys.public_pem.encode()
    )

    assert refusal(service, forged).status == 401


@pytest.mark.parametrize("algorithm", ["none", "None", "NONE"])
def test_unsigned_token_is_refused(auth: AuthService, algorithm: str) -> None:
    unsigned = hand_signed({"alg": algorithm, "typ": "JWT"}, claims(), hmac_key=None)

    assert refusal(auth, unsigned).status == 401


def test_token_without_alg_header_is_refused(auth: AuthService) -> None:
    token = hand_signed({"typ": "JWT"}, claims(), hmac_key=SECRET.encode())

    assert refusal(auth, token).status == 401


def test_hand_signed_hs256_token_with_the_right_secret_is_accepted(auth: AuthService) -> None:
    # The control for the forgeries above: the hand-made token format itself is sound.
    token = hand_signed({"alg": "HS256", "typ": "JWT"}, claims(), hmac_key=SECRET.encode())

    assert auth.verify(token).user_id == "alice"


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_unauthorized(auth: AuthService, token: str | None) -> None:
    error = refusal(auth, token)

    assert (error.status, error.code) == (401, "unauthorized")
    assert "token is required" in error.message


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJ.eyJ.x"])
def test_malformed_token_is_unauthorized(auth: AuthService, token: str) -> None:
    error = refusal(auth, token)

    assert (error.status, error.code) == (401, "unauthorized")


# Expiry and validity window


def test_token_without_exp_is_refused(auth: AuthService) -> None:
    assert refusal(auth, hs256({"sub": "alice"})).status == 401


def test_expired_token_is_refused(hs_only: AuthService) -> None:
    error = refusal(hs_only, hs256(claims(exp=int(time.time()) - 60)))

    assert error.status == 401
    assert error.message == "token expired"


def test_token_expired_within_the_leeway_is_accepted(hs_only: AuthService) -> None:
    identity = hs_only.verify(hs256(claims(exp=int(time.time()) - 3)))

    assert identity.user_id == "alice"


def test_token_expired_a_moment_ago_is_refused_without_leeway() -> None:
    strict = AuthService(hs256_secret=SECRET, rs256_public_key=None, leeway=0)

    assert refusal(strict, hs256(claims(exp=int(time.time()) - 3))).status == 401


def test_token_not_yet_valid_is_refused(hs_only: AuthService) -> None:
    error = refusal(hs_only, hs256(claims(nbf=int(time.time()) + 120)))

    assert error.status == 401
    assert "nbf" in error.message


def test_token_valid_within_the_leeway_is_accepted(hs_only: AuthService) -> None:
    assert hs_only.verify(hs256(claims(nbf=int(time.time()) + 3))).user_id == "alice"


def test_expires_at_comes_from_exp(hs_only: AuthService) -> None:
    exp = int(time.time()) + 600

    assert hs_only.verify(hs256(claims(exp=exp))).expires_at == float(exp)


@pytest.mark.parametrize(
    "bad_claim",
    [{"exp": None}, {"exp": [1]}, {"nbf": None}, {"iat": {}}],
    ids=["exp-null", "exp-array", "nbf-null", "iat-object"],
)
def test_non_numeric_time_claims_are_unauthorized(
    hs_only: AuthService, bad_claim: dict[str, Any]
) -> None:
    error = refusal(hs_only, hs256(claims(**bad_claim)))

    assert error.status == 401


def test_string_exp_that_is_not_a_number_is_refused(hs_only: AuthService) -> None:
    assert refusal(hs_only, hs256(claims(exp="soon"))).status == 401


# Identity


def test_user_id_claim_is_preferred_over_sub(hs_only: AuthService) -> None:
    identity = hs_only.verify(hs256(claims(sub="subject", user_id="u-1")))

    assert identity.user_id == "u-1"


def test_sub_is_the_user_id_without_a_user_id_claim(hs_only: AuthService) -> None:
    assert hs_only.verify(hs256(claims(sub="subject"))).user_id == "subject"


@pytest.mark.parametrize("blank", ["", "   ", None])
def test_blank_user_id_falls_back_to_sub(hs_only: AuthService, blank: str | None) -> None:
    assert hs_only.verify(hs256(claims(sub="subject", user_id=blank))).user_id == "subject"


def test_integer_user_id_becomes_a_string(hs_only: AuthService) -> None:
    token = hs256({"user_id": 42, "exp": int(time.time()) + 60})

    assert hs_only.verify(token).user_id == "42"


@pytest.mark.parametrize(
    "payload",
    [{}, {"sub": "   "}, {"user_id": True}, {"user_id": ""}],
    ids=["no-claims", "blank-sub", "bool-user-id", "empty-user-id"],
)
def test_token_without_a_user_is_refused(hs_only: AuthService, payload: dict[str, Any]) -> None:
    token = hs256({"exp": int(time.time()) + 60, **payload})

    error = refusal(hs_only, token)
    assert error.status == 401
    assert "no user" in error.message


@pytest.mark.parametrize(
    ("extra", "username"),
    [
        ({"username": "Alice A.", "name": "Alice Name"}, "Alice A."),
        ({"name": "Alice Name"}, "Alice Name"),
        ({}, "alice"),
        ({"username": "", "name": "Alice Name"}, "Alice Name"),
    ],
)
def test_username_comes_from_username_else_name_else_user_id(
    hs_only: AuthService, extra: dict[str, Any], username: str
) -> None:
    assert hs_only.verify(hs256(claims(**extra))).username == username


def test_long_username_is_truncated(hs_only: AuthService) -> None:
    assert hs_only.verify(hs256(claims(username="x" * 500))).username == "x" * 128


def test_issue_token_round_trips(hs_only: AuthService) -> None:
    token = issue_token(SECRET, user_id="bob", username="Bob", projects=["p1", "p2"])

    identity = hs_only.verify(token)
    assert identity.user_id == "bob"
    assert identity.username == "Bob"
    assert identity.projects == frozenset({"p1", "p2"})
    assert identity.expires_at > time.time()


def test_roles_accept_a_string_or_a_list(hs_only: AuthService) -> None:
    assert hs_only.verify(hs256(claims(roles="admin"))).roles == frozenset({"admin"})
    assert hs_only.verify(hs256(claims(roles=["a", "b"]))).roles == frozenset({"a", "b"})
    assert hs_only.verify(hs256(claims())).roles == frozenset()


@pytest.mark.parametrize(
    "bad_claim",
    [
        {"username": 5},
        {"username": ["alice"]},
        {"project_id": 5},
        {"project_id": ["p1"]},
        {"projects": "p1"},
        {"projects": ["p1", 2]},
        {"projects": {"p1": True}},
        {"roles": [1]},
        {"roles": None},
        {"roles": {"admin": True}},
    ],
    ids=lambda claim: "-".join(f"{k}={type(v).__name__}" for k, v in claim.items()),
)
def test_malformed_claim_types_are_refused(hs_only: AuthService, bad_claim: dict[str, Any]) -> None:
    error = refusal(hs_only, hs256(claims(**bad_claim)))

    assert (error.status, error.code) == (401, "unauthorized")


# Project scope


def test_unscoped_token_may_join_any_project(hs_only: AuthService) -> None:
    identity = hs_only.authenticate(hs256(claims()), "any-project")

    assert identity.projects is None


def test_project_id_claim_limits_the_token_to_that_project(hs_only: AuthService) -> None:
    token = hs256(claims(project_id="p1"))

    assert hs_only.authenticate(token, "p1").projects == frozenset({"p1"})
    with pytest.raises(Refusal) as info:
        hs_only.authenticate(token, "p2")
    assert (info.value.status, info.value.code) == (403, "forbidden")


def test_projects_claim_lists_the_allowed_projects(hs_only: AuthService) -> None:
    token = hs256(claims(projects=["p1", "p2"]))

    assert hs_only.authenticate(token, "p2").user_id == "alice"
    with pytest.raises(Refusal) as info:
        hs_only.authenticate(token, "p3")
    assert info.value.status == 403


def test_project_id_and_projects_claims_are_combined(hs_only: AuthService) -> None:
    identity = hs_only.verify(hs256(claims(project_id="p1", projects=["p2"])))

    assert identity.projects == frozenset({"p1", "p2"})


def test_empty_projects_claim_grants_no_project(hs_only: AuthService) -> None:
    with pytest.raises(Refusal) as info:
        hs_only.authenticate(hs256(claims(projects=[])), "p1")

    assert info.value.code == "forbidden"


def test_authenticate_reports_a_bad_token_as_401_not_403(hs_only: AuthService) -> None:
    with pytest.raises(Refusal) as info:
        hs_only.authenticate(issue_token(OTHER_SECRET, user_id="alice", projects=["p1"]), "p2")

    assert (info.value.status, info.value.code) == (401, "unauthorized")


def test_identity_may_join() -> None:
    scoped = Identity(user_id="u", username="u", expires_at=0.0, projects=frozenset({"p"}))
    unscoped = Identity(user_id="u", username="u", expires_at=0.0)

    assert scoped.may_join("p")
    assert not scoped.may_join("q")
    assert unscoped.may_join("q")


# Size


def test_token_over_the_size_limit_is_refused(hs_only: AuthService) -> None:
    token = issue_token(SECRET, user_id="alice", extra={"pad": "x" * MAX_TOKEN_BYTES})
    assert len(token.encode()) > MAX_TOKEN_BYTES

    error = refusal(hs_only, token)
    assert (error.status, error.code) == (401, "unauthorized")
    assert "too large" in error.message


def test_token_at_the_size_limit_is_accepted(hs_only: AuthService) -> None:
    pad = MAX_TOKEN_BYTES * 3 // 4 - 300
    token = issue_token(SECRET, user_id="alice", extra={"pad": "x" * pad})
    assert len(token) <= MAX_TOKEN_BYTES
    while True:
        longer = issue_token(SECRET, user_id="alice", extra={"pad": "x" * (pad + 1)})
        if len(longer) > MAX_TOKEN_BYTES:
            break
        pad, token = pad + 1, longer
    assert MAX_TOKEN_BYTES - 4 <= len(token) <= MAX_TOKEN_BYTES

    assert hs_only.verify(token).user_id == "alice"


def test_oversized_token_is_refused_before_parsing(hs_only: AuthService) -> None:
    error = refusal(hs_only, "x" * (MAX_TOKEN_BYTES + 1))

    assert "too large" in error.message


def test_auth_error_carries_status_code_and_message() -> None:
    error = Refusal("unauthorized", "token expired", status=401)

    assert (error.status, error.code, error.message) == (401, "unauthorized", "token expired")
    assert str(error) == "token expired"
