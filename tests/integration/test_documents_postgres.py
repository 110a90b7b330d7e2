"""The service with DOCUMENT_STORE=postgresql://: documents written by one instance are read by
another, after the first stopped, and the URL's password never reaches the logs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.postgres_server import PostgresServer, running_postgres
from tests.support.server import ServerProcess, running_server

pytestmark = pytest.mark.anyio

PASSWORD = "pg-password-never-logged"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


def service(server: ServerProcess) -> dict[str, str]:
    token = server.token("project-service", username="Projects", extra={"roles": ["service"]})
    return {"Authorization": f"Bearer {token}"}


async def test_a_document_stored_by_one_instance_is_read_by_the_next(
    postgres: PostgresServer,
) -> None:
    database = postgres.create_database()
    # Trust authentication ignores the password: it is there to be kept out of the logs.
    dsn = postgres.dsn(database).replace("postgres@", f"postgres:{PASSWORD}@", 1)
    env = {"DOCUMENT_STORE": dsn, "DOCUMENT_GRACE": "0s"}
    url = "/internal/projects/shared/documents/main.tex"

    with running_server(env) as first:
        async with httpx.AsyncClient(base_url=first.http_url) as http:
            created = await http.put(url, json={"text": "stored"}, headers=service(first))
            assert created.status_code == 201, created.text
        first.stop()
        output = first.output()
    assert PASSWORD not in output

    with running_server(env) as second:
        async with httpx.AsyncClient(base_url=second.http_url) as http:
            read = await http.get(url, headers=service(second))
            assert read.status_code == 200, read.text
            assert read.json()["text"] == "stored"
            listing = await http.get("/internal/projects/shared/documents", headers=service(second))
            assert [d["document_id"] for d in listing.json()["documents"]] == ["main.tex"]
        second.stop()
        assert PASSWORD not in second.output()
