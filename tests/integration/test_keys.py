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
