"""Both key kinds at once: RS256 with the PEM and HS256 with the secret, each only with its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt
from websockets.exceptions import InvalidStatus

from tests.support.clients import member, open_ws
from tests.support.server import ServerProcess, running_server

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def private_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def public_pem(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, public_pem: bytes) -> Iterator[ServerProcess]:
    path: Path = tmp_path_factory.mktemp("keys") / "jwt-public.pem"
    path.write_bytes(public_pem)
    with running_server({"JWT_PUBLIC_KEY_PATH": str(path)}) as running:
        yield running


async def test_rs256_and_hs256_tokens_are_both_accepted(
    server: ServerProcess, private_pem: bytes
) -> None:
    rs256 = jwt.encode(
        {"sub": "rsa-user", "exp": int(time.time()) + 60}, private_pem.decode(), "RS256"
    )
    async with member(server.ws_url("keys", rs256)) as (_, state):
        assert state["user_id"] == "rsa-user"
    async with member(server.ws_url("keys", server.token("hs-user"))) as (_, state):
        assert state["user_id"] == "hs-user"


async def test_hs256_signed_with_the_public_key_is_refused(
    server: ServerProcess, public_pem: bytes
) -> None:
    # The classic algorithm confusion: the public key used as an HMAC secret.
    import hashlib
    import hmac

    from jose.utils import base64url_encode

    header = base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    body = base64url_encode(f'{{"sub":"x","exp":{int(time.time()) + 60}}}'.encode())
    signature = base64url_encode(
        hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest()
    )
    forged = (header + b"." + body + b"." + signature).decode()
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(server.ws_url("keys", forged)):
            pass
    assert refused.value.response.status_code == 401


def _forge_hs256(secret: bytes, claims: str, header: bytes = b'{"alg":"HS256","typ":"JWT"}') -> str:
    import hashlib
    import hmac

    from jose.utils import base64url_encode

    head = base64url_encode(header)
    body = base64url_encode(claims.encode())
    signature = base64url_encode(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + signature).decode()


async def test_hs256_signed_with_the_der_public_key_is_refused(
    server: ServerProcess, public_pem: bytes
) -> None:
    key = serialization.load_pem_public_key(public_pem)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = _forge_hs256(der, f'{{"sub":"x","exp":{int(time.time()) + 60}}}')
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(server.ws_url("keys", forged)):
            pass
    assert refused.value.response.status_code == 401


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg":"HS256","typ":"JWT","kid":"../../../../etc/passwd"}',
        b'{"alg":"HS256","typ":"JWT","kid":{"$ne":1}}',
        b'{"alg":"HS256","typ":"JWT","jwk":{"kty":"oct","k":"AAAA"}}',
    ],
    ids=["path-kid", "object-kid", "embedded-jwk"],
)
async def test_junk_key_headers_change_nothing(server: ServerProcess, header: bytes) -> None:
    claims = f'{{"sub":"kid-user","exp":{int(time.time()) + 60}}}'
    # Signed with the real secret, the junk header is ignored: the token is good...
    good = _forge_hs256(server.env["JWT_SECRET"].encode(), claims, header)
    async with member(server.ws_url("keys", good)) as (_, state):
        assert state["user_id"] == "kid-user"
    # ...and with any other key it is refused, whatever the header points at.
    bad = _forge_hs256(b"AAAA", claims, header)
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(server.ws_url("keys", bad)):
            pass
    assert refused.value.response.status_code == 401


async def test_tampered_payload_is_refused(server: ServerProcess) -> None:
    from jose.utils import base64url_encode

    head, _, signature = server.token("ann").split(".")
    claims = f'{{"sub":"admin","user_id":"admin","exp":{int(time.time()) + 60}}}'
    tampered = f"{head}.{base64url_encode(claims.encode()).decode()}.{signature}"
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(server.ws_url("keys", tampered)):
            pass
    assert refused.value.response.status_code == 401
